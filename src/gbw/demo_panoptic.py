"""``gbw demo --task panoptic``: the panoptic story on MiniCity v2, on a CPU in minutes.

The semantic demo's design (:mod:`gbw.demo`) with EDAPS's network on the CPU
(``edaps_tiny``): four runs per seed - source-only (``edaps_source_only``: semantic + instance
losses on the labelled source) and EDAPS self-training (``edaps``), each without and with GBW
on the semantic terms - sharing the seed, the initial weights and the data order. Each run is
evaluated on MiniCity's labelled target validation split with the EDAPS fusion (score 0.95,
stuff area scaled to the image) and cityscapesscripts' PQ rules; the demo prints and writes
per-class PQ/SQ/RQ with the paired differences, the means over all classes, things and stuff,
and one verdict line per setting with the same rule as the semantic demo. Finished runs are
reused, so a killed demo resumes.

Needs MiniCity v2's instance maps (``MiniCity(..., with_panoptic=True)``).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from gbw.config import ExperimentConfig, load_config
from gbw.data.classes import CITYSCAPES_CLASSES, THING_CLASSES
from gbw.demo import (
    _fmt,
    _markdown,
    _mean_std,
    _start,
    _train_all,
    _verdict,
    budget_overrides,
    run_name,
    weighting_overrides,
)

SETTINGS = {"source_only": "edaps_source_only", "self_training": "edaps"}
WEIGHTINGS = ("none", "gbw")
# The runs come from configs/edaps/minicity[_gbw].yaml (edaps_tiny on MiniCity v2's instance
# maps; the network, optimiser and per-run budget are defined there, not here); source-only
# is the same config with method edaps_source_only. --quick (tests) shortens every run.
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "edaps"
QUICK_ITERS = {"source_only": 4, "self_training": 3}


def panoptic_config(weighting: str = "none") -> Path:
    """The repository's EDAPS MiniCity config without (``none``) or with (``gbw``) GBW."""
    path = CONFIGS / f"minicity{'_gbw' if weighting == 'gbw' else ''}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: EDAPS MiniCity config not found; gbw demo reads configs/ from a clone of "
            "the repository (pip install -e .)"
        )
    return path


def panoptic_demo_config(
    setting: str, weighting: str, seed: int, args: argparse.Namespace
) -> ExperimentConfig:
    """The experiment of one panoptic demo run: ``configs/edaps/minicity[_gbw].yaml`` with the
    run's method, name, seed and data root (written to its run folder)."""
    iters = args.iters or (QUICK_ITERS[setting] if args.quick else 0)
    overrides = [
        f"name={run_name(setting, weighting, seed, args)}",
        f"seed={seed}",
        f"method={SETTINGS[setting]}",
        f"data.minicity_size={'quick' if args.quick else 'default'}",
        "train.progress=false",
        *budget_overrides(iters, 20, 3),
        *weighting_overrides(weighting, args),
    ]
    return load_config(panoptic_config(weighting), overrides)


def run_panoptic_demo(args: argparse.Namespace) -> int:
    from gbw.data.minicity import EVAL_CLASSES

    t_start = time.perf_counter()
    out = Path(args.out) / "panoptic"
    seeds, workers = _start(args, out)
    note = "shortened" if args.quick or args.iters else "configs/edaps/minicity.yaml"
    outcomes = _train_all(
        seeds,
        args,
        out,
        panoptic_demo_config,
        SETTINGS,
        lambda m: (
            f"target mPQ {100 * m['mPQ']:5.1f} (things {100 * m['mPQ_things']:5.1f}, "
            f"stuff {100 * m['mPQ_stuff']:5.1f})"
        ),
        workers,
        note,
    )
    fusion = panoptic_demo_config("self_training", "none", seeds[0], args).eval

    names = CITYSCAPES_CLASSES
    classes = list(EVAL_CLASSES)
    order = [c for c in classes if c not in THING_CLASSES] + [
        c for c in classes if c in THING_CLASSES
    ]

    def values(setting: str, weighting: str, key: str) -> list[float]:
        return [
            100 * o.metrics.get(key, float("nan"))
            for o in outcomes
            if o.setting == setting and o.weighting == weighting
        ]

    def paired(setting: str, key: str) -> list[float]:
        by_seed: dict[int, dict[str, float]] = {}
        for o in outcomes:
            if o.setting == setting:
                by_seed.setdefault(o.seed, {})[o.weighting] = 100 * o.metrics.get(key, float("nan"))
        return [d["gbw"] - d["none"] for d in by_seed.values() if len(d) == 2]

    header = ["class", "kind"]
    for setting in SETTINGS:
        for m in ("PQ", "SQ", "RQ"):
            header += [f"{setting} {m} w/o", f"{setting} {m} GBW", "Δ"]
    rows = []
    keys = [
        (names[c], "thing" if c in THING_CLASSES else "stuff", "{m}/" + names[c]) for c in order
    ]
    keys += [
        (f"**mean ({len(classes)})**", "", "m{m}"),
        ("**mean, things**", "", "m{m}_things"),
        ("**mean, stuff**", "", "m{m}_stuff"),
    ]
    for label, kind, pattern in keys:
        row = [label, kind]
        for setting in SETTINGS:
            for m in ("PQ", "SQ", "RQ"):
                key = pattern.format(m=m)
                row += [
                    _fmt(*_mean_std(values(setting, "none", key))),
                    _fmt(*_mean_std(values(setting, "gbw", key))),
                    _fmt(*_mean_std(paired(setting, key)), signed=True),
                ]
        rows.append(row)

    md = _markdown(header, rows)
    verdicts = [_verdict(s, paired(s, "mPQ"), metric="mPQ") for s in SETTINGS]
    desc = (
        f"Panoptic (EDAPS on edaps_tiny). GBW on the semantic terms: lambda={args.lam}, "
        f"variant={args.variant}, scale={args.scale}; seeds {','.join(map(str, seeds))}; "
        f"target val = {len(classes)} MiniCity classes, stuff then things; fusion: score >= "
        f"{fusion.fusion.score_threshold}, stuff area >= {fusion.fusion.stuff_area} px; "
        "PQ/SQ/RQ in %, mean±std over seeds; "
        "Δ = GBW - without, paired by seed; '-': no segment of the class."
    )
    text = "\n".join([desc, "", md, "", *verdicts])
    (out / "results.md").write_text(text + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "weighting", "seed", "class", "train_id", "PQ", "SQ", "RQ", "mPQ"])
        for o in outcomes:
            for c in order:
                w.writerow(
                    [o.setting, o.weighting, o.seed, names[c], c]
                    + [o.metrics.get(f"{m}/{names[c]}") for m in ("PQ", "SQ", "RQ")]
                    + [o.metrics["mPQ"]]
                )
    print()
    print(text)
    print()
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'}")
    print(f"panoptic demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0
