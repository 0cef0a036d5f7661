"""``gbw study``: the paper's Section 4 analysis on MiniCity, as one fixed sweep.

Everything below is fixed before any run and never tuned on a result:

* settings: source-only and DACS-style self-training, from ``configs/minicity/
  {source_only,self_training}.yaml`` (network, data and per-run budget live there);
* weightings, each with seeds 1-5: none; GBW as in the paper (class variant, pseudo-label
  confidence in g as Eq. 12, lambda 1, raw g); GBW as in the authors' code
  (``weighting.name=gbw_authors``); IF; PF; LBW; focal loss;
* the lambda curve (Table 5's shape): GBW with ``scale=mean`` for lambda in {0.01, 0.1, 0.5, 1,
  2, 10}, self-training only, seeds 1-3, against no weighting on the same seeds;
* rare-class sampling (Table 4a's shape): ``data.source.rcs=true`` for none and for the "best
  GBW" in self-training. The best GBW is the paper's variant, by rule, chosen before any run
  (not on any validation result);
* figures from the runs of the first seed (a fixed rule): Fig. 2, 6a, 6b and 4a of the paper's
  GBW against no weighting, in each setting (:func:`gbw.analysis.report.run_figures`).

Every comparison is paired by seed with a 95 % t interval and the interval's verdict
(:mod:`gbw.analysis.stats`); values are the last checkpoint's (metrics.json). The study is a
sweep underneath (``DIR/manifest.json``, ``DIR/runs/``): a killed study continues where it
stopped. ``--quick`` runs the same pipeline on tiny data with a tiny network, 2 seeds and 4
iterations per run (for the tests).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gbw.config import ConfigError
from gbw.sweep.plan import RunSpec

SEEDS = (1, 2, 3, 4, 5)
LAMBDA_SEEDS = 3  # the lambda curve uses the first 3 seeds
LAMBDAS = ("0.01", "0.1", "0.5", "1", "2", "10")
QUICK_SEEDS = (1, 2)
SETTINGS = {"source_only": "source-only", "self_training": "self-training (DACS)"}
CONFIG_FILES = {"source_only": "source_only.yaml", "self_training": "self_training.yaml"}
RARE = 6  # the rarest source classes of the Fig. 4b-shaped tables

GBW_PAPER = [
    "weighting.name=gbw",
    "weighting.variant=class",
    "weighting.scale=none",
    "weighting.lam=1.0",
    "weighting.use_pixel_weight=true",
    "weighting.count_offset=0",
    "weighting.present_only=false",
]
# label -> (what it is, overrides); the order of the tables
WEIGHTINGS: dict[str, tuple[str, list[str]]] = {
    "none": ("no class weighting", ["weighting.name=none"]),
    "gbw": ("GBW as in the paper (class variant, Eq. 12, λ = 1)", GBW_PAPER),
    "gbw_authors": ("GBW as in the authors' code (GBW.authors)", ["weighting.name=gbw_authors"]),
    "if": ("inverse image frequency (IF)", ["weighting.name=if"]),
    "pf": ("inverse pixel frequency (PF)", ["weighting.name=pf"]),
    "lbw": ("loss-based weighting (LBW)", ["weighting.name=lbw"]),
    "focal": ("focal loss (γ = 2)", ["weighting.name=focal"]),
}
BEST_GBW = "gbw"  # the rule: the paper's variant, fixed in advance
RCS = ["data.source.rcs=true"]

# --quick: tiny data, a tiny network and 4 iterations (the same pipeline, for the tests)
QUICK_OVERRIDES = [
    "data.minicity_size=quick",
    "data.batch_size=2",
    "model.kwargs={widths: [8, 8, 16, 16], aspp_channels: 8, decoder_channels: 8}",
    "train.max_iters=4",
    "train.log_every=2",
    "train.ckpt_every=2",
    "eval.batch_size=20",
]


def lam_label(lam: str) -> str:
    return f"gbw_mean_lam{lam}"


def setting_label(setting: str, weighting: str, rcs: bool = False) -> str:
    return f"{setting}/{weighting}" + ("+rcs" if rcs else "")


def default_configs_dir() -> Path:
    """``configs/minicity`` of the current folder, else of the source tree gbw runs from."""
    here = Path("configs/minicity")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "configs" / "minicity"


@dataclass
class StudyPlan:
    specs: list[RunSpec]
    comparisons: list[tuple[str, str]]
    seeds: list[int]
    lambda_seeds: list[int]
    configs: dict[str, str]


def plan_study(
    configs_dir: str | Path | None = None, quick: bool = False, data_root: str | None = None
) -> StudyPlan:
    """The study's runs (seed by seed) and the comparisons its tables make."""
    cdir = Path(configs_dir) if configs_dir else default_configs_dir()
    configs = {s: str(cdir / f) for s, f in CONFIG_FILES.items()}
    for s, path in configs.items():
        if not Path(path).is_file():
            raise ConfigError(f"{path}: the study's {s} config is missing (see --configs)")
    seeds = list(QUICK_SEEDS if quick else SEEDS)
    lam_seeds = seeds[:LAMBDA_SEEDS]
    common = list(QUICK_OVERRIDES if quick else [])
    if data_root:
        common += [f"data.{split}.root={data_root}" for split in ("source", "target", "val")]

    blocks: list[tuple[str, str, dict[str, str], list[str], list[int]]] = []
    for s in SETTINGS:
        for w, (_, ov) in WEIGHTINGS.items():
            blocks.append((s, setting_label(s, w), {"weighting": w, "rcs": "off"}, ov, seeds))
    st = "self_training"
    for lam in LAMBDAS:
        ov = [*GBW_PAPER, "weighting.scale=mean", f"weighting.lam={lam}"]
        values = {"weighting": lam_label(lam), "rcs": "off"}
        blocks.append((st, setting_label(st, lam_label(lam)), values, ov, lam_seeds))
    for w in ("none", BEST_GBW):
        values = {"weighting": w, "rcs": "on"}
        ov = [*WEIGHTINGS[w][1], *RCS]
        blocks.append((st, setting_label(st, w, rcs=True), values, ov, seeds))

    specs = []
    for seed in seeds:
        for s, label, values, ov, block_seeds in blocks:
            if seed in block_seeds:
                name = f"{label.replace('/', '-').replace('+', '-')}-s{seed}"
                values = {"setting": s, **values}
                specs.append(RunSpec(name, label, values, seed, configs[s], [*common, *ov]))

    comparisons = []
    for s in SETTINGS:
        base = setting_label(s, "none")
        comparisons += [(setting_label(s, w), base) for w in WEIGHTINGS if w != "none"]
    base = setting_label(st, "none")
    comparisons += [(setting_label(st, lam_label(lam)), base) for lam in LAMBDAS]
    comparisons += [
        (setting_label(st, "none", rcs=True), base),
        (setting_label(st, BEST_GBW, rcs=True), base),
        (setting_label(st, BEST_GBW, rcs=True), setting_label(st, "none", rcs=True)),
    ]
    return StudyPlan(specs, comparisons, seeds, lam_seeds, configs)


def run_study(args: Any, launch: dict[str, Any]) -> int:
    """``gbw study``: run (or continue) the study's sweep, then write ``DIR/study.md``.

    ``launch``: :func:`gbw.sweep.runner.run_sweep`'s jobs, launcher, overwrite, dry_run, slurm.
    """
    from gbw.sweep.runner import run_sweep

    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    plan = plan_study(args.configs, args.quick, args.data_root)
    out = Path(args.out)
    counts: dict[str, int] = {}
    for spec in plan.specs:
        counts[spec.values["setting"]] = counts.get(spec.values["setting"], 0) + 1
    print(
        f"study: {len(plan.specs)} runs ("
        + ", ".join(f"{SETTINGS[s]} {n}" for s, n in counts.items())
        + f"); seeds {','.join(map(str, plan.seeds))}, lambda curve seeds "
        f"{','.join(map(str, plan.lambda_seeds))}"
    )
    info = {
        "kind": "study",
        "quick": bool(args.quick),
        "config": plan.configs,
        "overrides": list(QUICK_OVERRIDES) if args.quick else [],
        "grids": [],
        "seeds": plan.seeds,
        "baseline": None,
        "comparisons": plan.comparisons,
    }
    result = run_sweep(plan.specs, out, info=info, **launch)
    if launch.get("dry_run"):
        return 0
    trained = sum(p.state != "finished" for p in result.runs)
    wall = _record_wall_time(out, started, time.perf_counter() - t0, trained)
    path = write_study(out, plan, wall)
    print(f"wrote {path}")
    return 1 if result.failed else 0


def _record_wall_time(out: Path, started: str, seconds: float, trained: int) -> dict[str, Any]:
    """Append this invocation to ``DIR/study_time.json``; the study's total is their sum."""
    from gbw.fileio import write_json

    path = out / "study_time.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"invocations": []}
    data["invocations"].append({"started": started, "seconds": seconds, "runs_trained": trained})
    write_json(path, data)
    return data


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return f"{model}, {cores} usable cores, {platform.platform()}"


def weight_spread(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per loss term: how far the weights move from uniform (all 1) over one run.

    From ``scalars.csv`` (weights averaged over each logging interval): the mean over
    intervals of ``max_c |v_c - 1|`` and of the std over classes of ``v_c``. From
    ``weights_summary.json`` (every step): the largest weight of any class at any step, and the
    mean over classes of each class's std over steps.
    """
    import statistics

    from gbw.engine.logger import read_scalars

    try:
        summary = json.loads((run_dir / "weights_summary.json").read_text())
        scalars = read_scalars(run_dir / "scalars.csv")
    except (OSError, ValueError):
        return {}
    out = {}
    for term, per_class in summary.items():
        by_step: dict[int, list[float]] = {}
        for tag, points in scalars.items():
            if tag.startswith(f"{term}/weight/"):
                for step, v in points:
                    by_step.setdefault(step, []).append(v)
        steps = [vs for vs in by_step.values() if len(vs) > 1]
        if not steps or not per_class:
            continue
        out[term] = {
            "interval_max_abs_dev": statistics.fmean(max(abs(v - 1) for v in vs) for vs in steps),
            "interval_class_std": statistics.fmean(statistics.pstdev(vs) for vs in steps),
            "step_max_weight": max(c["max"] for c in per_class.values()),
            "step_temporal_std": statistics.fmean(c["std"] for c in per_class.values()),
        }
    return out


def _short(setting_lab: str) -> str:
    """Column title of a study setting: its weighting, e.g. 'gbw', 'λ=0.1', 'none+rcs'."""
    w = setting_lab.partition("/")[2]
    return f"λ={w.removeprefix('gbw_mean_lam')}" if w.startswith("gbw_mean_lam") else w


def _label(setting_lab: str) -> str:
    """Readable name of a study setting label, e.g. 'GBW as in the paper ... + RCS'."""
    w = setting_lab.partition("/")[2]
    rcs = w.endswith("+rcs")
    w = w.removesuffix("+rcs")
    if w.startswith("gbw_mean_lam"):
        text = f"GBW, scale mean, λ = {w.removeprefix('gbw_mean_lam')}"
    else:
        text = WEIGHTINGS[w][0]
    return text + (" + rare-class sampling" if rcs else "")


def write_study(out: Path, plan: StudyPlan, wall: dict[str, Any]) -> Path:
    """``DIR/study.md`` with its tables and figures, plus the sweep report files."""
    import torch

    import gbw
    from gbw.analysis.report import load_run, run_figures
    from gbw.analysis.stats import fmt_interval, fmt_mean_std, mean_std
    from gbw.data.classes import CITYSCAPES_CLASSES as NAMES
    from gbw.fileio import write_text
    from gbw.sweep.report import (
        CI_RULE,
        analyse,
        class_table,
        delta_table,
        left_out_note,
        load_sweep_runs,
        md_table,
        write_sweep_report,
    )

    write_sweep_report(out, log=lambda *_: None)
    manifest, runs = load_sweep_runs(out)
    a = analyse(runs, plan.comparisons)
    st = "self_training"
    first = plan.seeds[0]
    # a rerun that only rewrites the report (nothing left to train) adds no study time
    training = [i for i in wall["invocations"] if i.get("runs_trained", 1)] or wall["invocations"]
    total_s = sum(i["seconds"] for i in training)
    done = [r for r in runs if r.metrics is not None]
    cfg_note = ", ".join(f"`{p}`" for p in plan.configs.values())
    quick = " (--quick: tiny data, not a result)" if manifest["quick"] else ""
    lines = [
        f"# GBW study on MiniCity{quick}",
        "",
        f"Machine: {_machine()}. Date: {time.strftime('%Y-%m-%d')}. "
        f"torch {torch.__version__}, gbw {gbw.__version__}, Python {platform.python_version()}.",
        f"Wall time: {total_s / 60:.1f} min over {len(training)} invocation(s) of "
        f"`gbw study` that trained runs. Runs: {len(done)} of {len(runs)} finished, "
        f"{manifest.get('jobs')} at "
        f"once ({manifest.get('launcher')} launcher"
        + (
            f", {manifest['threads_per_run']} thread(s) each"
            if manifest.get("threads_per_run")
            else ""
        )
        + "; CPU results depend on the thread count).",
        f"Configs (network, data, per-run budget): {cfg_note}"
        + (f"; --quick overrides: `{' '.join(QUICK_OVERRIDES)}`" if manifest["quick"] else "")
        + ".",
        f"Seeds: {','.join(map(str, plan.seeds))}; the λ curve uses seeds "
        f"{','.join(map(str, plan.lambda_seeds))} and self-training only.",
        "",
        "Rules fixed before any run: values are the last checkpoint of each run (metrics.json at "
        "train.max_iters) on MiniCity target val, in %, mean ± std over seeds; nothing is chosen "
        "on target val. The best GBW for the rare-class-sampling table is, by rule, the paper's "
        "variant (class, Eq. 12, λ = 1). Figures use the runs of the first seed "
        f"(seed {first}). {CI_RULE}",
    ]

    def miou_rows(pairs: Sequence[tuple[str, str | None]]) -> list[list[str]]:
        rows = []
        for s, b in pairs:
            m, sd, n = a.summary[s]["mIoU"]
            c = a.comparison(s, b) if b else None
            if c is None:
                rows.append([_label(s), str(n), fmt_mean_std(m, sd), "", ""])
            else:
                rows.append(
                    [
                        _label(s),
                        str(n),
                        fmt_mean_std(m, sd),
                        fmt_interval(c.stats["mIoU"]),
                        f"**{c.stats['mIoU'].verdict}**",
                    ]
                )
        return rows

    header = ["weighting", "seeds", "target mIoU", "Δ vs none [95 % CI]", "verdict"]
    lines += ["", "## Class weighting strategies (Table 4b's shape)"]
    for s, title in SETTINGS.items():
        pairs = [(setting_label(s, w), setting_label(s, "none")) for w in WEIGHTINGS]
        pairs[0] = (pairs[0][0], None)
        lines += ["", f"### {title}", "", md_table(header, miou_rows(pairs))]

    none, gbw_, s_, gs = (
        setting_label(st, "none"),
        setting_label(st, BEST_GBW),
        setting_label(st, "none", rcs=True),
        setting_label(st, BEST_GBW, rcs=True),
    )
    cols = [none, gbw_, s_, gs]
    row_m = ["target mIoU"] + [fmt_mean_std(*a.summary[c]["mIoU"][:2]) for c in cols]
    row_d = ["Δ vs None [95 % CI]", ""]
    row_v = ["verdict", ""]
    for c in cols[1:]:
        comp = a.comparison(c, none)
        row_d.append(fmt_interval(comp.stats["mIoU"]) if comp else "-")
        row_v.append(comp.stats["mIoU"].verdict if comp else "-")
    on_s = a.comparison(gs, s_)
    lines += [
        "",
        "## Rare-class sampling and GBW, self-training (Table 4a's shape)",
        "",
        "S = rare-class sampling (`data.source.rcs=true`); GBW = the paper's variant (fixed rule).",
        "",
        md_table(["", "None", "w/ GBW", "w/ S", "w/ GBW + S"], [row_m, row_d, row_v]),
        "",
        f"GBW on top of S (w/ GBW + S minus w/ S): Δ = {fmt_interval(on_s.stats['mIoU'])}, "
        f"**{on_s.stats['mIoU'].verdict}**."
        if on_s
        else "",
    ]

    lam_cols = [setting_label(st, lam_label(lam)) for lam in LAMBDAS]
    # the λ curve has fewer seeds: its baseline column is "none" on those seeds only
    lam_seeds = set(plan.lambda_seeds)
    a_lam = analyse(
        [r for r in runs if r.setting in lam_cols or (r.setting == none and r.seed in lam_seeds)],
        [(c, none) for c in lam_cols],
    )
    row_m = ["target mIoU", fmt_mean_std(*a_lam.summary[none]["mIoU"][:2])]
    row_d, row_v = ["Δ vs none [95 % CI]", ""], ["verdict", ""]
    for c in lam_cols:
        row_m.append(fmt_mean_std(*a_lam.summary[c]["mIoU"][:2]))
        comp = a_lam.comparison(c, none)
        row_d.append(fmt_interval(comp.stats["mIoU"]) if comp else "-")
        row_v.append(comp.stats["mIoU"].verdict if comp else "-")
    lines += [
        "",
        "## GBW's λ, self-training (Table 5's shape)",
        "",
        "GBW (class variant, Eq. 12) with `weighting.scale=mean` (g / mean g, so λ is "
        f"scale-free); seeds {','.join(map(str, plan.lambda_seeds))}, paired with no weighting "
        'on the same seeds (the "-" column: no weighting on those seeds only).',
        "",
        md_table(["λ", "-", *LAMBDAS], [row_m, row_d, row_v]),
    ]

    rare = a.classes[:RARE]
    lines += [
        "",
        f"## The {len(rare)} rarest source classes (Fig. 4b's shape)",
        "",
        "Classes: "
        + ", ".join(
            f"{NAMES[c]} ({a.share[c]:.2f} % of source pixels)" if a.share else NAMES[c]
            for c in rare
        )
        + ". Absolute values (mean ± std over seeds), then the paired Δ against no weighting "
        "(bold: the interval excludes 0).",
    ]
    for s, title in [*SETTINGS.items(), (st, "self-training, λ curve")]:
        if title.endswith("λ curve"):
            shown, an = [none, *lam_cols], a_lam
        else:
            shown, an = [setting_label(s, w) for w in WEIGHTINGS], a
        comps = [c for x in shown[1:] if (c := an.comparison(x, shown[0])) is not None]
        short = [_short(x) for x in shown]
        for what in ("IoU", "recall"):
            lines += [
                "",
                f"### {title}: {what}",
                "",
                class_table(an, what, shown, rare, short),
                "",
                delta_table(an, what, comps, rare, [f"Δ {_short(c.setting)}" for c in comps]),
            ]

    spread_rows = []
    for s in a.settings:
        per_term: dict[str, list[dict[str, float]]] = {}
        for r in runs:
            if r.setting == s and r.metrics is not None:
                for term, v in weight_spread(r.run_dir).items():
                    per_term.setdefault(term, []).append(v)
        for term, vals in per_term.items():
            cells = [
                fmt_mean_std(*mean_std(v[k] for v in vals)[:2], digits=3)
                for k in (
                    "interval_max_abs_dev",
                    "interval_class_std",
                    "step_max_weight",
                    "step_temporal_std",
                )
            ]
            spread_rows.append([_label(s), f"{SETTINGS[s.split('/')[0]]}", term, *cells])
    lines += [
        "",
        "## How far the weights move from uniform",
        "",
        "Per weighted loss term (`src`: source cross-entropy; `mix`: DACS's mixed pseudo-label "
        "term), mean ± std over seeds. Interval columns use the weights averaged over each "
        "logging interval (scalars.csv), step columns every step (weights_summary.json). "
        "Uniform weights give 0, 0, 1 and 0.",
        "",
        md_table(
            [
                "weighting",
                "setting",
                "term",
                "mean max_c abs(v_c - 1) (interval)",
                "mean std_c v_c (interval)",
                "largest v_c (step)",
                "mean over c of std_t v_c (step)",
            ],
            spread_rows,
        )
        if spread_rows
        else "No run logged class weights.",
    ]

    figures = []
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    for s, title in SETTINGS.items():
        g = [r for r in runs if r.setting == setting_label(s, BEST_GBW) and r.seed == first]
        b = [r for r in runs if r.setting == setting_label(s, "none") and r.seed == first]
        if g and b and g[0].metrics is not None and b[0].metrics is not None:
            drawn = run_figures(
                load_run(g[0].run_dir),
                load_run(b[0].run_dir),
                a.classes,
                a.share,
                fig_dir,
                prefix=f"{s}_",
            )
            figures += [(title, p) for p in drawn]
    lines += [
        "",
        f"## Figures (seed {first}; the paper's GBW against no weighting)",
        "",
        "Fig. 2: class weights over training per loss term; Fig. 6a: largest weight vs source "
        "pixel share; Fig. 6b: weight std vs IoU gain; Fig. 4a: change of the row-normalised "
        "confusion matrix (rows: ground truth).",
    ]
    lines += [f"\n{title}: ![{p.stem}](figures/{p.name})" for title, p in figures]

    notes = [
        f"- {c.setting} vs {c.baseline}: {n}"
        for c in [*(c for c in a.comparisons if c.setting not in lam_cols), *a_lam.comparisons]
        if (n := left_out_note(c))
    ]
    if notes or a.unfinished:
        lines += ["", "## Left out"]
        lines += notes
        if a.unfinished:
            lines.append("- not finished: " + ", ".join(r.name for r in a.unfinished))
    lines += [
        "",
        "All settings, every class, and the machine-readable values: [sweep.md](sweep.md), "
        "sweep.csv, sweep.json.",
    ]
    path = out / "study.md"
    write_text(path, "\n".join(x for x in lines if x is not None) + "\n")
    return path
