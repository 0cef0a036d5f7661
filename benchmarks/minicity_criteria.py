"""Measure every MiniCity criterion of docs/minicity.md and print the table quoted there.

Data criteria (no training): visibility (per-class median pixels per image where the class
occurs, median thing-instance area, pixels in parts under 2 px wide), imbalance (classes under
1 % of source pixels, most / least frequent class). Training criteria: for each train seed, a
source-only run (``configs/minicity/source_only.yaml``) evaluated on ``source_val`` and
``target_val``, and a self-training run (``configs/minicity/self_training.yaml``, DACS style)
on ``target_val``; both without class weighting (this script never runs a weighting). Each
run is a separate ``gbw train`` process with ``--threads`` CPU threads; its wall time is the
per-run time the study pays.

    python benchmarks/minicity_criteria.py [--seeds 1,2] [--jobs 1] [--threads 1]
    python benchmarks/minicity_criteria.py --no-train          # data criteria only (~1 min)

Run folders go to ``--out`` (default ``minicity_criteria_out/``); a run whose
``metrics.json`` exists and whose stored config matches is reused (``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gbw.data.classes import CITYSCAPES_CLASSES, NUM_CLASSES, THING_CLASSES
from gbw.data.io import read_png_unchanged
from gbw.data.minicity import SPLITS, ensure_minicity, load_class_stats
from gbw.data.minicity.geometry import MIN_STROKE_PX
from gbw.data.minicity.panoptic import decode_png16, semantic_of
from gbw.data.minicity.stats import instance_areas, present_medians, thin_pixels

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "minicity"
RUNS = {s: CONFIGS / f"{s}.yaml" for s in ("source_only", "self_training")}
THIN_CLASSES = (4, 5, 6, 7, 17, 18)  # fence, pole, traffic light, traffic sign, two-wheelers
DOMAIN_SPLITS = {"source": ("source_train",), "target": ("target_train", "target_val")}

# The criteria of docs/minicity.md (fixed before any class-weighting run).
MIN_CLASS_MEDIAN = 40
MIN_INSTANCE_MEDIAN = 25
MIN_UNDER_1PCT = 6
MIN_FREQ_RATIO = 300
MIN_SOURCE_IOU = 10.0
MIN_SOURCE_MIOU = 55.0
MIN_GAP = 15.0
MIN_SELF_TRAINING_GAIN = 3.0


# ---- data criteria -----------------------------------------------------------------------


def data_statistics(path: Path) -> dict:
    """Visibility and imbalance statistics of one generated copy, read from its files."""
    out: dict = {}
    for domain, splits in DOMAIN_SPLITS.items():
        counts = np.concatenate(
            [load_class_stats(s, path.parent, _seed(path), _size(path))[1] for s in splits]
        )
        areas: dict[int, list[int]] = {c: [] for c in THING_CLASSES}
        thin = np.zeros(NUM_CLASSES)
        total = np.zeros(NUM_CLASSES)
        for split in splits:
            folder = path / SPLITS[split][1] / "panoptic"
            for f in sorted(folder.glob("*.png")):
                pan = decode_png16(read_png_unchanged(f), f)
                for c, a in instance_areas(pan).items():
                    areas[c] += a
                label = semantic_of(pan)
                for c in THIN_CLASSES:
                    m = label == c
                    total[c] += m.sum()
                    thin[c] += thin_pixels(m).sum()
        out[domain] = {
            "counts": counts,
            "share": 100.0 * counts.sum(0) / counts.sum(),
            "images": 100.0 * (counts > 0).mean(0),
            "median_px": present_medians(counts),
            "instance_median": {
                c: float(np.median(a)) if a else float("nan") for c, a in areas.items()
            },
            "instances": {c: len(a) for c, a in areas.items()},
            "thin_pct": {c: 100.0 * thin[c] / max(total[c], 1) for c in THIN_CLASSES},
        }
    return out


def _seed(path: Path) -> int:
    return int(json.loads((path / "meta.json").read_text())["seed"])


def _size(path: Path) -> str:
    return str(json.loads((path / "meta.json").read_text())["size"])


# ---- training criteria -------------------------------------------------------------------


def _overrides(setting: str, seed: int, args: argparse.Namespace) -> list[str]:
    root = str(args.root) if args.root else ""
    out = [
        f"name={setting}-s{seed}",
        f"seed={seed}",
        f"out_dir={args.out}",
        f"data.minicity_size={args.size}",
        "train.progress=false",
        *args.set,
    ]
    if root:
        out += [f"data.{s}.root={root}" for s in ("source", "target", "val")]
    return out


def train_run(setting: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one run in its own ``gbw train`` process (or reuse it); its metrics and wall time."""
    import yaml

    from gbw.config import load_config, to_dict

    over = _overrides(setting, seed, args)
    exp = load_config(RUNS[setting], over)
    run_dir = Path(args.out) / exp.name
    stored, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
    timing = run_dir / "wall_time.json"
    if (
        not args.fresh
        and metrics.exists()
        and stored.exists()
        and timing.exists()
        and yaml.safe_load(stored.read_text()) == to_dict(exp)
    ):
        return {**json.loads(metrics.read_text()), **json.loads(timing.read_text()), "reused": 1}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "gbw.cli", "train", str(RUNS[setting]), *over]
    if run_dir.exists():
        cmd.append("--overwrite")
    log = Path(args.out) / f"{exp.name}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        # wait4: the CPU time of this child alone (runs may train side by side)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    info = {"wall_s": wall, "cpu_s": cpu, "threads": args.threads, "load": os.getloadavg()[0]}
    timing.write_text(json.dumps(info))
    print(f"  {exp.name}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    return {**json.loads(metrics.read_text()), **info}


def source_val_iou(run_dir: Path, args: argparse.Namespace) -> np.ndarray:
    """Per-class IoU (%) of a trained run on ``source_val``."""
    import torch

    from gbw.data.minicity import MiniCity
    from gbw.engine.evaluate import evaluate
    from gbw.engine.runs import load_trained

    torch.set_num_threads(args.threads)
    exp, model, _ = load_trained(run_dir)
    ds = MiniCity("source_val", args.root, size=args.size, with_labels=True)
    m = evaluate(model, ds, exp.eval, exp.model.num_classes, classes=tuple(range(NUM_CLASSES)))
    return 100.0 * m.iou.numpy()


def target_iou(metrics: dict) -> np.ndarray:
    return np.array([100.0 * metrics[f"IoU/{n}"] for n in CITYSCAPES_CLASSES])


# ---- report ------------------------------------------------------------------------------


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def report(stats: dict, runs: dict, seeds: list[int], gen_s: float | None) -> str:
    src, tgt = stats["source"], stats["target"]
    names = CITYSCAPES_CLASSES
    lines = ["| criterion | required | measured | met |", "|---|---|---|---|"]

    def row(what: str, need: str, got: str, flag: bool) -> None:
        lines.append(f"| {what} | {need} | {got} | {_ok(flag)} |")

    for dom, st in (("source", src), ("target", tgt)):
        c = int(np.nanargmin(st["median_px"]))
        v = st["median_px"][c]
        row(
            f"Visible: smallest per-class median px per image ({dom})",
            f">= {MIN_CLASS_MEDIAN}",
            f"{v:.0f} ({names[c]})",
            v >= MIN_CLASS_MEDIAN,
        )
    for dom, st in (("source", src), ("target", tgt)):
        med = st["instance_median"]
        c = min(med, key=lambda k: med[k])
        row(
            f"Visible: smallest median thing-instance area ({dom})",
            f">= {MIN_INSTANCE_MEDIAN} px",
            f"{med[c]:.0f} ({names[c]})",
            med[c] >= MIN_INSTANCE_MEDIAN,
        )
    thin = max(src["thin_pct"].values())
    row(
        "Visible: thin structures (strokes) at least 2 px wide",
        ">= 2 px",
        f"{MIN_STROKE_PX:g} px by construction; <= {thin:.1f} % of thin-class pixels in parts "
        "under 2 px (occlusion, corners)",
        MIN_STROKE_PX >= 2,
    )
    share = src["share"]
    under = int((share < 1.0).sum())
    row(
        "Imbalanced: classes under 1 % of source pixels",
        f">= {MIN_UNDER_1PCT}",
        str(under),
        under >= MIN_UNDER_1PCT,
    )
    hi, lo = int(np.argmax(share)), int(np.argmin(share))
    ratio = share[hi] / share[lo]
    row(
        "Imbalanced: most / least frequent source class",
        f">= {MIN_FREQ_RATIO}x",
        f"{ratio:.0f}x ({names[hi]} {share[hi]:.2f} % / {names[lo]} {share[lo]:.3f} %)",
        ratio >= MIN_FREQ_RATIO,
    )
    for seed in seeds:
        so, st = runs.get(("source_only", seed)), runs.get(("self_training", seed))
        if so is None:
            continue
        sv = so["source_val_iou"]
        c = int(np.nanargmin(sv))
        ms, mt = float(np.nanmean(sv)), 100.0 * so["mIoU"]
        row(
            f"Learnable: source-only, smallest source_val IoU (seed {seed})",
            f">= {MIN_SOURCE_IOU:g}",
            f"{sv[c]:.1f} ({names[c]})",
            sv[c] >= MIN_SOURCE_IOU,
        )
        row(
            f"Learnable: source-only source_val mIoU (seed {seed})",
            f">= {MIN_SOURCE_MIOU:g}",
            f"{ms:.1f}",
            ms >= MIN_SOURCE_MIOU,
        )
        row(
            f"Gap: source_val - target_val mIoU, source-only (seed {seed})",
            f">= {MIN_GAP:g}",
            f"{ms:.1f} - {mt:.1f} = {ms - mt:.1f}",
            ms - mt >= MIN_GAP,
        )
        if st is not None:
            gain = 100.0 * st["mIoU"] - mt
            row(
                f"Gap: self-training - source-only, target_val (seed {seed})",
                f">= {MIN_SELF_TRAINING_GAIN:g}",
                f"{100 * st['mIoU']:.1f} - {mt:.1f} = {gain:+.1f}",
                gain >= MIN_SELF_TRAINING_GAIN,
            )
    for setting in RUNS:
        keys = [k for k in runs if k[0] == setting and "wall_s" in runs[k]]
        if keys:
            th = "/".join(sorted({str(runs[k]["threads"]) for k in keys}))
            row(
                f"Fast: one {setting} run, {th} thread: CPU time (= wall on an idle core); "
                "wall under the load average shown",
                "~120 s",
                ", ".join(
                    f"{runs[k]['cpu_s']:.0f} s CPU ({runs[k]['wall_s']:.0f} s wall, load "
                    f"{runs[k]['load']:.1f})"
                    for k in keys
                ),
                True,
            )
    if gen_s is not None:
        row("Fast: generation of the copy", "part of the demo's 5 min", f"{gen_s:.1f} s", True)
    return "\n".join(lines)


def class_table(stats: dict, runs: dict, seeds: list[int]) -> str:
    src, tgt = stats["source"], stats["target"]
    head = [
        "class",
        "src px %",
        "median px/img src / tgt",
        "inst. median src / tgt",
        "px in parts < 2 px wide, % src",
    ]
    for seed in seeds:
        head += [f"SO src_val s{seed}", f"SO tgt_val s{seed}", f"ST tgt_val s{seed}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, name in enumerate(CITYSCAPES_CLASSES):
        im = src["instance_median"].get(c)
        cells = [
            name,
            f"{src['share'][c]:.3f}",
            f"{src['median_px'][c]:.0f} / {tgt['median_px'][c]:.0f}",
            f"{im:.0f} / {tgt['instance_median'][c]:.0f}" if im is not None else "-",
            f"{src['thin_pct'][c]:.1f}" if c in src["thin_pct"] else "-",
        ]
        for seed in seeds:
            so, st = runs.get(("source_only", seed)), runs.get(("self_training", seed))
            cells.append(f"{so['source_val_iou'][c]:.1f}" if so else "-")
            cells.append(f"{target_iou(so)[c]:.1f}" if so else "-")
            cells.append(f"{target_iou(st)[c]:.1f}" if st else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="MiniCity cache (default: $GBW_DATA)")
    ap.add_argument("--size", default="default", choices=("default", "quick"))
    ap.add_argument("--seeds", default="1,2", help="train seeds (comma-separated)")
    ap.add_argument("--out", type=Path, default=Path("minicity_criteria_out"))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    ap.add_argument("--no-train", action="store_true", help="data criteria only")
    ap.add_argument("--fresh", action="store_true", help="retrain runs that exist")
    ap.add_argument("--settings", default="source_only,self_training")
    ap.add_argument(
        "--set", action="append", default=[], help="extra key=value override for every run"
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    import torch

    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    path = ensure_minicity(args.root, seed=0, size=args.size)
    gen_s = time.perf_counter() - t0
    print(f"MiniCity at {path} ({gen_s:.1f} s)", flush=True)
    stats = data_statistics(path)

    runs: dict = {}
    if not args.no_train:
        args.out.mkdir(parents=True, exist_ok=True)
        jobs = [(s, seed) for seed in seeds for s in args.settings.split(",") if s]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            done = dict(zip(jobs, pool.map(lambda j: train_run(*j, args), jobs)))
        for (setting, seed), m in done.items():
            if setting == "source_only":
                m["source_val_iou"] = source_val_iou(args.out / f"{setting}-s{seed}", args)
            runs[(setting, seed)] = m
    cpu = platform.processor() or platform.machine()
    print()
    print(
        f"MiniCity {json.loads((path / 'meta.json').read_text())['version']}, size {args.size}, "
        f"data seed 0, train seeds {args.seeds}; {datetime.date.today()}, {cpu}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.threads} "
        f"thread(s) per run, {args.jobs} run(s) at a time"
    )
    if args.set:
        print(f"overrides: {' '.join(args.set)}")
    print()
    print(report(stats, runs, seeds, gen_s if gen_s > 2.0 else None))
    print()
    print(class_table(stats, runs, seeds if runs else []))


if __name__ == "__main__":
    main()
