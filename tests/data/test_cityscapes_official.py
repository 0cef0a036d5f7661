"""Cityscapes labelIds export and ``gbw eval --official`` against cityscapesscripts' evaluator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gbw.cli import main
from weight_files import tiny_weights

pytest.importorskip("cityscapesscripts")


def _overrides(root: Path) -> list[str]:
    return [
        "data.val.name=cityscapes",
        f"data.val.root={root}",
        "data.val.split=val",
        "eval.classes=19",
    ]


def test_labelids_export_agrees_with_the_official_evaluator(fake, tmp_path, capsys):
    from gbw.engine.official import official_scores

    root = tmp_path / "cityscapes"
    fake.cityscapes(root, counts={"val": 4}, size=(64, 32))
    weights = tiny_weights(tmp_path / "tiny.pt")
    # gbw's own metrics
    assert (
        main(["eval", str(weights), *_overrides(root), "--cpu", "--json", str(tmp_path / "m.json")])
        == 0
    )
    ours = json.loads((tmp_path / "m.json").read_text())
    # gbw predict --format cityscapes, then the official script on those files
    preds = tmp_path / "preds"
    images = root / "leftImg8bit" / "val"
    assert (
        main(
            [
                "predict",
                str(weights),
                str(images),
                "--out",
                str(preds),
                "--format",
                "cityscapes",
                "--cpu",
            ]
        )
        == 0
    )
    written = sorted(p.relative_to(preds).as_posix() for p in preds.rglob("*.png"))
    assert written == [
        "aachen/aachen_000000_000019_labelIds.png",
        "aachen/aachen_000002_000019_labelIds.png",
        "bochum/bochum_000001_000019_labelIds.png",
        "bochum/bochum_000003_000019_labelIds.png",
    ]
    ids = np.asarray(Image.open(preds / written[0]))
    assert ids.dtype == np.uint8 and set(np.unique(ids)) <= set(fake.CITYSCAPES_TABLE)
    gts = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    official = official_scores(preds, gts)
    compared = 0
    for name, iou in official["classScores"].items():
        if f"IoU/{name}" not in ours:  # the labels Cityscapes ignores in evaluation
            assert math.isnan(iou), name
            continue
        mine = ours[f"IoU/{name}"]
        if math.isnan(iou):
            assert math.isnan(mine), name
        else:
            assert mine == pytest.approx(iou, abs=1e-12), name
            compared += 1
    assert compared >= 5
    assert ours["mIoU"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)


def test_eval_official_prints_both_and_they_agree(fake, tmp_path, capsys):
    root = tmp_path / "cityscapes"
    fake.cityscapes(root, counts={"val": 3}, size=(48, 24), seed=3)
    weights = tiny_weights(tmp_path / "tiny.pt")
    keep = tmp_path / "official"
    out = tmp_path / "m.json"
    args = [
        "eval",
        str(weights),
        *_overrides(root),
        "--cpu",
        "--official",
        "--official-dir",
        str(keep),
    ]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gbw vs cityscapesscripts" in text and "largest difference: 0.0000 IoU points" in text
    result = json.loads(out.read_text())
    assert result["official"]["mIoU"] == pytest.approx(result["mIoU"], abs=1e-12)
    assert len(list(keep.rglob("*_labelIds.png"))) == 3
