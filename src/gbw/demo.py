"""``gbw demo``: the paper's story on the embedded MiniCity benchmark, on a CPU in minutes.

Four runs per seed - source-only and DACS-style self-training, each without and with GBW -
share the seed, the initial weights and the data order, so the only difference within a pair
is the class weighting. The demo then evaluates every run per class on the labelled target
validation split, measures the domain gap (source-only on held-out source vs target images),
prints and writes the tables, draws the paper's analysis figures from the logs and ends with
one line saying what it found. Finished runs are reused (a killed demo resumes), so
``--seeds 1,2,3`` after ``--seeds 1`` only trains the new seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gbw.config import ConfigError, ExperimentConfig, config_difference, load_config, to_dict
from gbw.data.classes import CITYSCAPES_CLASSES

SETTINGS = {"source_only": "source_only", "self_training": "dacs"}
WEIGHTINGS = ("none", "gbw")
# The runs come from configs/minicity/<setting>[_gbw].yaml: one definition of the network and
# the per-run budget for the demo, the study and `gbw train` (docs/minicity.md). --quick
# (tests) shortens every run to these iterations on the quick-size data.
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "minicity"
QUICK_ITERS = {"source_only": 12, "self_training": 8}


def minicity_config(setting: str, weighting: str = "none") -> Path:
    """The repository's MiniCity config of a demo setting (``source_only``, ``self_training``)
    without (``none``) or with (``gbw``) GBW."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown MiniCity setting {setting!r}; choose one of {list(SETTINGS)}")
    path = CONFIGS / f"{setting}{'_gbw' if weighting == 'gbw' else ''}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: MiniCity config not found; gbw demo reads configs/minicity/ from a clone "
            "of the repository (pip install -e .)"
        )
    return path


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="semantic",
        choices=["semantic", "panoptic"],
        help="semantic (default) or panoptic: EDAPS on MiniCity's instance maps, PQ/SQ/RQ",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny data and a few iterations: checks that everything runs (tests)",
    )
    p.add_argument("--seeds", default="1", help="comma-separated seeds, e.g. 1,2,3 (mean, std)")
    p.add_argument("--lam", type=float, default=1.0, help="GBW lambda (paper Eq. 11; default 1)")
    p.add_argument(
        "--variant",
        default="class",
        choices=["class", "channel"],
        help="gradient signal: paper's per-class norm, or the authors' per-channel",
    )
    p.add_argument(
        "--scale",
        default="none",
        choices=["none", "mean"],
        help="none: the paper's raw g; mean: g / mean(g) (scale-free lambda)",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument(
        "--iters",
        type=int,
        default=0,
        help="override the iterations of every run (0 = the budget of configs/minicity/)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="runs trained at the same time, one process each (0 = one per CPU core, at most "
        "2); the CPU threads are split between them",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="where MiniCity is generated and cached (default: ~/.cache/gbw)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train again a run whose folder holds a run of other settings (by default that "
        "is an error: the demo never deletes a run silently)",
    )


def demo_config(
    setting: str, weighting: str, seed: int, args: argparse.Namespace
) -> ExperimentConfig:
    """The experiment of one demo run: ``minicity_config(setting, weighting)`` with the run's
    name, seed and data root (written to its run folder as config.yaml)."""
    overrides = [
        f"name={run_name(setting, weighting, seed, args)}",
        f"seed={seed}",
        f"data.minicity_size={'quick' if args.quick else 'default'}",
        "train.progress=false",
        *budget_overrides(args.iters or (QUICK_ITERS[setting] if args.quick else 0), 40, 4),
        *weighting_overrides(weighting, args),
    ]
    return load_config(minicity_config(setting, weighting), overrides)


def run_name(setting: str, weighting: str, seed: int, args: argparse.Namespace) -> str:
    """``<setting>-<weighting>[-<GBW options>][-it<iters>]-s<seed>``: runs of other options
    get other folders, so that a demo never meets (or deletes) a run of other settings."""
    parts = [setting, weighting]
    if weighting == "gbw":
        defaults = {"lam": 1.0, "variant": "class", "scale": "none"}
        given = {"lam": float(args.lam), "variant": args.variant, "scale": args.scale}
        parts += [f"{k}{v}" for k, v in given.items() if v != defaults[k]]
    if args.iters:
        parts.append(f"it{args.iters}")
    return "-".join([*parts, f"s{seed}"])


def budget_overrides(iters: int, logs: int, checkpoints: int) -> list[str]:
    """``train.max_iters`` and matching log/checkpoint intervals (nothing for ``iters=0``)."""
    if not iters:
        return []
    return [
        f"train.max_iters={iters}",
        f"train.log_every={max(1, iters // logs)}",
        f"train.ckpt_every={max(1, iters // checkpoints)}",
    ]


def weighting_overrides(weighting: str, args: argparse.Namespace) -> list[str]:
    """The weighting of a demo run and where MiniCity lives. Runs without GBW carry no GBW
    options, so they stay identical (and are reused) across --lam/--variant/--scale."""
    out = [f"weighting.name={weighting}"]
    if weighting == "gbw":
        out += [
            f"weighting.lam={args.lam}",
            f"weighting.variant={args.variant}",
            f"weighting.scale={args.scale}",
        ]
    if args.data_root:
        out += [f"data.{split}.root={args.data_root}" for split in ("source", "target", "val")]
    return out


@dataclass
class RunOutcome:
    setting: str
    weighting: str
    seed: int
    run_dir: Path
    metrics: dict[str, float]
    seconds: float


def _stored_difference(exp: ExperimentConfig, run_dir: Path) -> list[str] | None:
    """The config keys in which the run already in ``run_dir`` differs from ``exp`` (None: no
    stored run)."""
    import yaml

    stored = run_dir / "config.yaml"
    if not stored.is_file():
        return None
    return config_difference(yaml.safe_load(stored.read_text()), to_dict(exp))


def _finished(exp: ExperimentConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a finished run of exactly this config, else None."""
    if (run_dir / "metrics.json").exists() and _stored_difference(exp, run_dir) == []:
        return json.loads((run_dir / "metrics.json").read_text())
    return None


def check_reusable(exp: ExperimentConfig, run_dir: Path, overwrite: bool) -> None:
    """A run folder holding a run of other settings is an error unless ``overwrite`` (the
    demo never deletes a run silently; gbw.engine.run_folder decides what may be deleted)."""
    diff = _stored_difference(exp, run_dir)
    if diff and not overwrite:
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(
            f"{run_dir} holds a run of other settings (differs in {shown}); write the demo to "
            "another --out, or pass --overwrite to train it again"
        )


def _train(
    exp: ExperimentConfig, run_dir: Path, threads: int, overwrite: bool
) -> tuple[dict[str, float], float]:
    """Train one run (resuming its own last checkpoint); (metrics, seconds). Runs in a worker
    process when the demo trains several runs at once."""
    import torch

    from gbw.engine.trainer import train

    torch.set_num_threads(threads)
    fresh = bool(_stored_difference(exp, run_dir))  # another config: only with --overwrite
    t0 = time.perf_counter()
    result = train(
        exp, run_dir=run_dir, resume=False if fresh else "auto", overwrite=overwrite and fresh
    )
    return result.metrics, time.perf_counter() - t0


def _start(args: argparse.Namespace, out: Path) -> tuple[list[int], int]:
    """(seeds, runs at a time); MiniCity generated (or found) and the output folder made."""
    from gbw.data.minicity import ensure_minicity

    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    size = "quick" if args.quick else "default"
    workers = args.jobs or min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    data_dir = ensure_minicity(args.data_root, seed=0, size=size, workers=workers)
    print(f"MiniCity ({size}) ready at {data_dir} ({time.perf_counter() - t0:.1f} s)")
    return seeds, workers


def _train_all(
    seeds: list[int],
    args: argparse.Namespace,
    out: Path,
    config: Callable[[str, str, int, argparse.Namespace], ExperimentConfig],
    settings: Iterable[str],
    summary: Callable[[dict[str, float]], str],
    workers: int,
    budget_note: str,
) -> list[RunOutcome]:
    """Every (seed, setting, weighting) run, trained (``workers`` at a time, one process
    each) or reused, one line each as it finishes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    import torch

    jobs = [
        (setting, weighting, seed, exp, out / "runs" / exp.name)
        for seed in seeds
        for setting in settings
        for weighting in WEIGHTINGS
        for exp in [config(setting, weighting, seed, args)]
    ]
    for *_, exp, run_dir in jobs:  # before any training: a conflict is one line, nothing lost
        check_reusable(exp, run_dir, args.overwrite)
    iters = {j[0]: j[3].train.max_iters for j in jobs}
    print(
        "Budget per run: "
        + ", ".join(f"{s} {n} iterations" for s, n in iters.items())
        + f" ({budget_note}); {workers} run(s) at a time"
    )
    outcomes: dict[int, RunOutcome] = {}

    def report(i: int, metrics: dict[str, float], seconds: float) -> None:
        setting, weighting, seed, exp, run_dir = jobs[i]
        outcomes[i] = RunOutcome(setting, weighting, seed, run_dir, metrics, seconds)
        took = f"{seconds:.0f} s" if seconds else "reused"
        print(f"  {exp.name:<32} {summary(metrics)}  ({took})", flush=True)

    todo = []
    for i, (*_, exp, run_dir) in enumerate(jobs):
        done = _finished(exp, run_dir)
        if done is not None:
            report(i, done, 0.0)
        else:
            todo.append(i)
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            threads = max(1, torch.get_num_threads())
            report(i, *_train(jobs[i][3], jobs[i][4], threads, args.overwrite))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        # "spawn": the workers must not inherit the parent's torch threads (fork is unsafe)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(_train, jobs[i][3], jobs[i][4], threads, args.overwrite): i
                for i in todo
            }
            for fut in as_completed(futures):
                report(futures[fut], *fut.result())
    return [outcomes[i] for i in range(len(jobs))]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def _fmt(mean: float, std: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    s = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return s if math.isnan(std) else f"{s}±{std:.1f}"


def run_demo(args: argparse.Namespace) -> int:
    from gbw.data.minicity import EVAL_CLASSES, class_table

    t_start = time.perf_counter()
    out = Path(args.out)
    size = "quick" if args.quick else "default"
    seeds, workers = _start(args, out)
    note = (
        "shorter than the study's budget in configs/minicity/"
        if args.quick or args.iters
        else "configs/minicity/, the study's budget"
    )
    outcomes = _train_all(
        seeds,
        args,
        out,
        demo_config,
        SETTINGS,
        lambda m: f"target mIoU {100 * m['mIoU']:5.1f}",
        workers,
        note,
    )

    names = CITYSCAPES_CLASSES
    rows = class_table(args.data_root, 0, size)
    share = {r.train_id: r.source_pixels for r in rows}
    order = sorted(EVAL_CLASSES, key=lambda c: share[c])  # rarest source class first
    gap = _domain_gap(out, seeds[0], args, EVAL_CLASSES)

    def per_class(setting: str, weighting: str, what: str, c: int) -> list[float]:
        return [
            100 * o.metrics.get(f"{what}/{names[c]}", float("nan"))
            for o in outcomes
            if o.setting == setting and o.weighting == weighting
        ]

    def paired_delta(setting: str, what: str, c: int | None) -> list[float]:
        key = "mIoU" if c is None else f"{what}/{names[c]}"
        by_seed = {}
        for o in outcomes:
            if o.setting == setting:
                by_seed.setdefault(o.seed, {})[o.weighting] = 100 * o.metrics.get(key, float("nan"))
        return [d["gbw"] - d["none"] for d in by_seed.values() if "gbw" in d and "none" in d]

    header = ["class", "src px %"]
    for setting in SETTINGS:
        for what in ("IoU", "recall"):
            header += [f"{setting} {what} w/o", f"{setting} {what} GBW", "Δ"]
    table = []
    for c in order:
        row = [names[c], f"{share[c]:.2f}"]
        for setting in SETTINGS:
            for what in ("IoU", "recall"):
                row += [
                    _fmt(*_mean_std(per_class(setting, "none", what, c))),
                    _fmt(*_mean_std(per_class(setting, "gbw", what, c))),
                    _fmt(*_mean_std(paired_delta(setting, what, c)), signed=True),
                ]
        table.append(row)
    miou_row = ["**mIoU**", ""]
    for setting in SETTINGS:
        m_none = [
            100 * o.metrics["mIoU"]
            for o in outcomes
            if o.setting == setting and o.weighting == "none"
        ]
        m_gbw = [
            100 * o.metrics["mIoU"]
            for o in outcomes
            if o.setting == setting and o.weighting == "gbw"
        ]
        miou_row += [
            _fmt(*_mean_std(m_none)),
            _fmt(*_mean_std(m_gbw)),
            _fmt(*_mean_std(paired_delta(setting, "IoU", None)), signed=True),
            "",
            "",
            "",
        ]
    table.append(miou_row)

    md = _markdown(header, table)
    verdicts = [_verdict(setting, paired_delta(setting, "IoU", None)) for setting in SETTINGS]
    desc = (
        f"GBW: lambda={args.lam}, variant={args.variant}, scale={args.scale}; seeds "
        f"{','.join(map(str, seeds))}; target val = {len(EVAL_CLASSES)} MiniCity classes, "
        "rarest source class first; IoU/recall in %, mean±std over seeds; "
        "Δ = GBW - without, paired by seed."
    )
    gap_line = (
        f"Domain gap (source-only, no GBW, seed {seeds[0]}): mIoU {gap[0]:.1f} on held-out "
        f"source images vs {gap[1]:.1f} on target val."
    )
    text = "\n".join([desc, "", md, "", gap_line, *verdicts])
    (out / "results.md").write_text(text + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "setting",
                "weighting",
                "seed",
                "class",
                "train_id",
                "src_px_pct",
                "IoU",
                "recall",
                "mIoU",
            ]
        )
        for o in outcomes:
            for c in order:
                w.writerow(
                    [
                        o.setting,
                        o.weighting,
                        o.seed,
                        names[c],
                        c,
                        share[c],
                        o.metrics.get(f"IoU/{names[c]}"),
                        o.metrics.get(f"recall/{names[c]}"),
                        o.metrics["mIoU"],
                    ]
                )
    plots = _plots(out, outcomes, seeds[0], share, order, args)
    print()
    print(text)
    print()
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'} and {len(plots)} plots in {out}")
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _verdict(setting: str, deltas: list[float], metric: str = "mIoU") -> str:
    """One honest line: a gain, no change or a loss, with the rule used. Several seeds: the
    paired 95 % t interval of the deltas decides (METHOD.md section 7, as ``gbw report
    --sweep``); one seed has no interval, and only a change of 1 point or more is named."""
    from gbw.analysis.stats import paired_comparison

    mean, _ = _mean_std(deltas)
    if len(deltas) > 1:
        c = paired_comparison(dict(enumerate(deltas)), dict.fromkeys(range(len(deltas)), 0.0))
        word = {"better": "a gain", "worse": "a loss"}.get(c.verdict, "no clear change")
        rule = f"{c.n} paired seeds, 95 % interval [{c.low:+.2f}, {c.high:+.2f}]"
    else:
        clear = abs(mean) >= 1.0
        word = ("a gain" if mean > 0 else "a loss") if clear else "no clear change"
        rule = "one seed: seed-to-seed noise not measured, |Δ| >= 1 point counted as a change"
    return f"Found for {setting}: {word} with GBW, {metric} Δ = {mean:+.2f} points ({rule})."


def _domain_gap(out: Path, seed: int, args: argparse.Namespace, classes) -> tuple[float, float]:
    """Source-only (no GBW) mIoU on held-out source images vs on target val."""
    from gbw.data.minicity import MiniCity
    from gbw.engine.evaluate import evaluate
    from gbw.engine.runs import load_trained

    run = out / "runs" / run_name("source_only", "none", seed, args)
    exp, model, _ = load_trained(run)
    ds = MiniCity("source_val", args.data_root, size=exp.data.minicity_size, with_labels=True)
    source = evaluate(model, ds, exp.eval, exp.model.num_classes, classes=classes).miou
    # target val: the run's own final evaluation (same model, split and classes)
    target = json.loads((run / "metrics.json").read_text())["mIoU"]
    return 100 * source, 100 * target


def _plots(
    out: Path,
    outcomes: list[RunOutcome],
    seed: int,
    share: dict[int, float],
    order: list[int],
    args: argparse.Namespace,
) -> list[Path]:
    import numpy as np
    import torch

    from gbw.analysis import plots
    from gbw.analysis.report import load_run, run_figures
    from gbw.data.minicity import MiniCity
    from gbw.engine.evaluate import predict_logits
    from gbw.engine.runs import load_trained

    run = {(o.setting, o.weighting): o for o in outcomes if o.seed == seed}
    # Figs. 2, 6a, 6b and 4a of the self-training run with GBW, against the one without
    written = run_figures(
        load_run(run[("self_training", "gbw")].run_dir),
        load_run(run[("self_training", "none")].run_dir),
        order,
        share,
        out,
        prefix="",
    )
    # Fig. 5: the first 4 target val images (by name) that contain the rarest source class
    # present in the val split: a fixed rule, not chosen by the outcome.
    ds = MiniCity(
        "target_val", args.data_root, size="quick" if args.quick else "default", with_labels=True
    )
    samples = [ds[i] for i in range(len(ds))]
    chosen: list[dict] = []
    for c in order:
        chosen = [s for s in samples if (s["label"] == c).any()][:4]
        if len(chosen) >= 2:
            break
    preds = {}
    for w in WEIGHTINGS:
        exp, model, _ = load_trained(run[("self_training", w)].run_dir)
        imgs = torch.stack([s["image"] for s in chosen])
        preds["self-training" + (" + GBW" if w == "gbw" else "")] = [
            p.numpy() for p in predict_logits(model, imgs, exp.eval, 19).argmax(1)
        ]
    images = [(s["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for s in chosen]
    gts = [s["label"].numpy() for s in chosen]
    written.append(plots.qualitative(images, gts, preds, out / "fig5_qualitative.png"))
    return written
