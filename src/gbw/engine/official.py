"""The official Cityscapes evaluation next to gbw's own (``gbw eval --official``).

gbw's evaluator counts a confusion matrix over trainIds on the GPU. The benchmark's numbers
come from cityscapesscripts' ``evalPixelLevelSemanticLabeling``, which reads labelId PNGs, one
per ground-truth file, matched by ``<city>_<seq>_<frame>*.png`` anywhere under a results
folder. ``gbw eval --official`` writes exactly those files (``<id>_labelIds.png``, the names
``gbw predict --format cityscapes`` uses), runs the official evaluator on them and prints both
per-class IoUs side by side; they must agree (the test suite checks it on a generated tree).

cityscapesscripts is optional: ``pip install "gbw[cityscapes]"``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gbw.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX

PREDICTION_SUFFIX = "_labelIds.png"


class OfficialEvalError(RuntimeError):
    """cityscapesscripts is missing, or it refused the files."""


def label_ids_file(sample_name: str) -> str:
    """``leftImg8bit/val/<city>/<id>_leftImg8bit.png`` -> ``<city>/<id>_labelIds.png``."""
    parts = sample_name.split("/")
    name = parts[-1]
    if not name.endswith(IMAGE_SUFFIX):
        raise OfficialEvalError(
            f"{sample_name}: not a Cityscapes image name (<city>_<seq>_<frame>{IMAGE_SUFFIX})"
        )
    city = parts[-2] if len(parts) > 1 else ""
    stem = name[: -len(IMAGE_SUFFIX)]
    return f"{city}/{stem}{PREDICTION_SUFFIX}" if city else f"{stem}{PREDICTION_SUFFIX}"


def _evaluator() -> Any:
    try:
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    except ImportError:
        raise OfficialEvalError(
            "--official needs cityscapesscripts: pip install 'gbw[cityscapes]' "
            "(or pip install cityscapesscripts)"
        ) from None
    return ev


def official_scores(predictions: str | Path, ground_truth: Sequence[str | Path]) -> dict[str, Any]:
    """Run cityscapesscripts' pixel-level evaluation of the labelId PNGs under
    ``predictions`` against the ``*_gtFine_labelIds.png`` files ``ground_truth``.

    Each ground-truth file is matched to its prediction by the official ``getPrediction``.
    Returns the evaluator's result dict (``classScores``: class name -> IoU, NaN where a class
    is absent from both; ``averageScoreClasses``). Instance-level scores are not computed.
    """
    ev = _evaluator()
    args = copy.copy(ev.args)
    args.predictionPath = str(predictions)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = args.nocol = ""
    gts = [str(g) for g in ground_truth]
    try:
        preds = [ev.getPrediction(args, gt) for gt in gts]
        return ev.evaluateImgLists(preds, gts, args)
    except SystemExit:  # the official script reports problems with printError + sys.exit
        raise OfficialEvalError(
            "cityscapesscripts stopped (its message is printed above); check that every "
            f"ground-truth file has a prediction under {predictions}"
        ) from None


def ground_truth_files(dataset: Any) -> list[Path]:
    """The ``*_gtFine_labelIds.png`` of every sample of a Cityscapes dataset, in order."""
    out = []
    for pair in dataset.pairs:
        if not pair.raw_label.name.endswith(LABEL_SUFFIX) or not pair.has_raw:
            raise OfficialEvalError(
                f"{pair.raw_label}: the official evaluator needs the raw labelIds files"
            )
        out.append(pair.raw_label)
    return out


def side_by_side(
    gbw_iou: dict[str, float], official: dict[str, Any], names: Sequence[str]
) -> tuple[str, float]:
    """A table of both per-class IoUs (in %) and the largest absolute difference (in %)."""
    scores = official["classScores"]
    lines = [f"{'class':<16}{'gbw':>8}{'official':>10}"]
    worst = 0.0
    for name in names:
        a, b = gbw_iou.get(name, math.nan), scores.get(name, math.nan)
        lines.append(f"{name:<16}{_pct(a):>8}{_pct(b):>10}")
        if math.isnan(a) != math.isnan(b):
            worst = math.inf
        elif not math.isnan(a):
            worst = max(worst, abs(a - b) * 100)
    lines.append(f"{'mean':<16}{_pct(_nanmean(gbw_iou, names)):>8}")
    lines[-1] += f"{_pct(official['averageScoreClasses']):>10}"
    return "\n".join(lines), worst


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.2f}"


def _nanmean(values: dict[str, float], names: Sequence[str]) -> float:
    vals = [values[n] for n in names if n in values and not math.isnan(values[n])]
    return float(np.mean(vals)) if vals else math.nan
