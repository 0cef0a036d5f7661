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
    weighting_overrides,
)

SETTINGS = {"source_only": "edaps_source_only", "self_training": "edaps"}
WEIGHTINGS = ("none", "gbw")
# Iterations per setting at batch 4 + 4 of MiniCity's 96x128 images, chosen so that the whole
# demo fits 5 minutes on 2 CPU cores; never tuned on GBW's result. PROVISIONAL: from the CPU
# time of one step on stand-in scenes of MiniCity's size (0.09 s source-only, 0.17 s
# self-training, one thread), to be re-measured end to end on MiniCity v2.
ITERS = {"source_only": 400, "self_training": 250}
QUICK_ITERS = {"source_only": 4, "self_training": 3}
# EDAPS's 2048-pixel stuff area on 2048x1024 images, scaled to MiniCity's 128x96
STUFF_AREA = 12


def panoptic_demo_config(
    setting: str, weighting: str, seed: int, args: argparse.Namespace
) -> ExperimentConfig:
    """The experiment of one panoptic demo run (also written to its run folder)."""
    iters = args.iters or (QUICK_ITERS if args.quick else ITERS)[setting]
    overrides = [
        f"name=panoptic-{setting}-{weighting}-s{seed}",
        f"seed={seed}",
        f"method={SETTINGS[setting]}",
        "model.name=edaps_tiny",
        f"data.minicity_size={'quick' if args.quick else 'default'}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.in_memory=true",
        "data.source.panoptic=true",
        "data.val.panoptic=true",
        "optim.name=adamw",
        "optim.lr=5e-4",
        "optim.weight_decay=0.0001",
        "optim.head_lr_mult=10.0",
        "optim.power=1.0",
        f"train.max_iters={iters}",
        f"train.log_every={max(1, iters // 20)}",
        f"train.ckpt_every={max(1, iters // 3)}",
        "train.accelerator=cpu",
        "train.progress=false",
        "eval.batch_size=25",
        f"eval.fusion.stuff_area={STUFF_AREA}",
        *weighting_overrides(weighting, args),
    ]
    # DACS's EMA rate for a short run, the jitter ops in a fixed order to save CPU time
    overrides += ["uda.ema_alpha=0.99", "uda.color_jitter_random_order=false"]
    return load_config(None, overrides)


def run_panoptic_demo(args: argparse.Namespace) -> int:
    from gbw.data.minicity import EVAL_CLASSES

    t_start = time.perf_counter()
    out = Path(args.out) / "panoptic"
    seeds = _start(args, out)
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
    )

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
        f"0.95, stuff area >= {STUFF_AREA} px; PQ/SQ/RQ in %, mean±std over seeds; "
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
