"""``gbw report --sweep DIR``: one table per sweep, seeds aggregated and paired.

For every setting of the sweep (runs that differ only by seed): the mean ± std over seeds of
target mIoU and of every class's IoU and recall. Against the baseline setting, the paired
difference by seed with its 95 % Student t interval and the verdict of that interval
(:mod:`gbw.analysis.stats`). Only each run's ``metrics.json`` counts - written once at the end
of training from the last checkpoint's model, never a best snapshot chosen on target val -
and only from runs that reached their ``train.max_iters``; unfinished runs are listed, and
seeds that only one of the two settings has are left out of the pairing and named.

The baseline is ``--baseline KEY=VALUE[,KEY=VALUE]`` (e.g. ``weighting.name=none``): each
setting is compared with the setting that has the same levels of every other grid key and the
given levels of these; without ``--baseline`` the sweep's own (``gbw sweep --baseline``, or the
comparisons ``gbw study`` recorded), else the first value of the first grid.

Writes ``sweep.md`` (markdown tables), ``sweep.csv`` (one row per setting, metric and class)
and ``sweep.json`` (every run's values, the aggregates and the comparisons). Values in %.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbw.analysis.stats import (
    PairedComparison,
    fmt_interval,
    fmt_mean_std,
    mean_std,
    paired_comparison,
)
from gbw.config import ConfigError
from gbw.data.classes import CITYSCAPES_CLASSES
from gbw.fileio import write_json, write_text

NAMES = CITYSCAPES_CLASSES
CI_RULE = (
    "Δ = setting - baseline in points, paired by seed; [low, high] is the 95 % Student t "
    "interval of the mean paired difference (n - 1 degrees of freedom). Verdict: interval "
    "above 0 -> better, below 0 -> worse, covering 0 -> no clear change."
)


@dataclass
class SweepRun:
    name: str
    setting: str
    values: dict[str, str]
    seed: int
    run_dir: Path
    metrics: dict[str, Any] | None  # None: not finished
    status: str = ""

    def value(self, key: str) -> float:
        """``key`` (``mIoU``, ``IoU/<class>``, ``recall/<class>``) in %, NaN if absent."""
        v = None if self.metrics is None else self.metrics.get(key)
        return math.nan if v is None else 100.0 * float(v)


@dataclass
class Comparison:
    setting: str
    baseline: str
    stats: dict[str, PairedComparison] = field(default_factory=dict)  # metric key -> stats


@dataclass
class SweepAnalysis:
    """Everything the tables are made of."""

    runs: list[SweepRun]
    settings: list[str]
    values: dict[str, dict[str, str]]
    classes: list[int]  # evaluated classes, rarest source class first when known
    share: dict[int, float] | None  # source pixel share in %
    summary: dict[str, dict[str, tuple[float, float, int]]]  # setting -> key -> mean, std, n
    seeds: dict[str, list[int]]  # setting -> seeds with a finished run
    comparisons: list[Comparison]
    unfinished: list[SweepRun]

    def metric_keys(self) -> list[str]:
        return [
            "mIoU",
            *(f"IoU/{NAMES[c]}" for c in self.classes),
            *(f"recall/{NAMES[c]}" for c in self.classes),
        ]

    def per_seed(self, setting: str, key: str) -> dict[int, float]:
        return {r.seed: r.value(key) for r in self.runs if r.setting == setting and r.metrics}

    def comparison(self, setting: str, baseline: str | None = None) -> Comparison | None:
        for c in self.comparisons:
            if c.setting == setting and (baseline is None or c.baseline == baseline):
                return c
        return None


def load_sweep_runs(out: str | Path) -> tuple[dict[str, Any], list[SweepRun]]:
    """The manifest and every run in it, with the metrics of the finished ones."""
    from gbw.sweep.manifest import read_finished_metrics, read_manifest

    out = Path(out)
    manifest = read_manifest(out)
    runs = []
    for entry in manifest["runs"]:
        try:
            run_dir = out / entry.get("run_dir", f"runs/{entry['name']}")
            run = SweepRun(
                name=entry["name"],
                setting=entry["setting"],
                values={str(k): str(v) for k, v in entry.get("values", {}).items()},
                seed=int(entry["seed"]),
                run_dir=run_dir,
                metrics=read_finished_metrics(run_dir),
                status=entry.get("status", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{out / 'manifest.json'}: bad run entry {entry!r} ({exc})") from None
        runs.append(run)
    return manifest, runs


def _parse_levels(spec: str) -> dict[str, str]:
    from gbw.sweep.plan import split_values

    levels = {}
    for item in split_values(spec):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"--baseline {spec!r}: expected KEY=VALUE[,KEY=VALUE]")
        levels[key.strip()] = value.strip()
    return levels


def baseline_pairs(
    settings: Sequence[str], values: dict[str, dict[str, str]], spec: str
) -> list[tuple[str, str]]:
    """``(setting, its baseline)`` for ``spec`` = ``KEY=VALUE[,KEY=VALUE]`` (module docstring)."""
    levels = _parse_levels(spec)
    factors = sorted({k for v in values.values() for k in v})
    for key, level in levels.items():
        if key not in factors:
            raise ConfigError(
                f"--baseline {spec!r}: {key!r} is not a grid key of this sweep "
                f"(keys: {', '.join(factors) or 'none'})"
            )
        seen = sorted({v[key] for v in values.values() if key in v})
        if level not in seen:
            raise ConfigError(
                f"--baseline {spec!r}: no setting has {key}={level} (values: {', '.join(seen)})"
            )
    by_values = {tuple(sorted(values[s].items())): s for s in settings}
    pairs = []
    for s in settings:
        want = dict(values[s]) | levels
        if want == values[s] or set(want) != set(values[s]):
            continue
        base = by_values.get(tuple(sorted(want.items())))
        if base is not None:
            pairs.append((s, base))
    return pairs


def default_baseline(manifest: dict[str, Any]) -> str | None:
    """The sweep's recorded baseline, else the first value of its first grid."""
    if manifest.get("baseline"):
        return str(manifest["baseline"])
    grids = manifest.get("grids") or []
    if grids:
        return f"{grids[0]['key']}={grids[0]['values'][0]}"
    return None


def analyse(runs: Sequence[SweepRun], pairs: Sequence[tuple[str, str]]) -> SweepAnalysis:
    """Aggregate the finished runs per setting and compare the given pairs by seed."""
    from gbw.analysis.report import source_share
    from gbw.config import from_dict

    settings: list[str] = []
    values: dict[str, dict[str, str]] = {}
    for r in runs:
        if r.setting not in values:
            settings.append(r.setting)
            values[r.setting] = r.values
    done = [r for r in runs if r.metrics is not None]
    classes: list[int] = []
    share = None
    if done:
        classes = list(done[0].metrics.get("classes") or range(len(NAMES)))
        import yaml

        try:
            cfg = from_dict(yaml.safe_load((done[0].run_dir / "config.yaml").read_text()))
            share = source_share(cfg) if _source_data_present(cfg) else None
        except (OSError, ValueError, ConfigError):
            share = None
        if share:
            classes.sort(key=lambda c: share[c])
    a = SweepAnalysis(
        runs=list(runs),
        settings=settings,
        values=values,
        classes=classes,
        share=share,
        summary={},
        seeds={},
        comparisons=[],
        unfinished=[r for r in runs if r.metrics is None],
    )
    keys = a.metric_keys()
    for s in settings:
        a.seeds[s] = sorted(r.seed for r in done if r.setting == s)
        a.summary[s] = {k: mean_std(a.per_seed(s, k).values()) for k in keys}
    for s, b in pairs:
        stats = {k: paired_comparison(a.per_seed(s, k), a.per_seed(b, k)) for k in keys}
        a.comparisons.append(Comparison(s, b, stats))
    return a


def _source_data_present(cfg: Any) -> bool:
    """A report never generates MiniCity just to sort its classes (a copied sweep folder)."""
    spec = cfg.data.source
    if spec.name != "minicity":
        return True
    from gbw.data.minicity import minicity_dir

    return minicity_dir(spec.root or None, 0, cfg.data.minicity_size).exists()


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def left_out_note(c: Comparison, key: str = "mIoU") -> str:
    """Which seeds the pairing of ``key`` left out, in words ('' when none)."""
    st = c.stats[key]
    parts = []
    if st.only_setting:
        parts.append(f"seed(s) {','.join(map(str, st.only_setting))} only in {c.setting}")
    if st.only_baseline:
        parts.append(f"seed(s) {','.join(map(str, st.only_baseline))} only in {c.baseline}")
    return "; ".join(parts)


def miou_table(a: SweepAnalysis, settings: Sequence[str] | None = None) -> str:
    """Per setting: seeds, mIoU mean ± std, and against its baseline Δ [95 % CI] and verdict."""
    rows = []
    bases = {c.baseline for c in a.comparisons}
    for s in settings if settings is not None else a.settings:
        m, sd, n = a.summary[s]["mIoU"]
        comps = [c for c in a.comparisons if c.setting == s]
        if not comps:
            role = "(baseline)" if s in bases else "(none to compare with)"
            rows.append([s, str(n), fmt_mean_std(m, sd), role, "", "", ""])
        for c in comps:  # one row per baseline the setting is compared with
            st = c.stats["mIoU"]
            rows.append(
                [
                    s,
                    str(n),
                    fmt_mean_std(m, sd),
                    c.baseline,
                    fmt_interval(st),
                    f"**{st.verdict}**",
                    ",".join(map(str, st.seeds)) or "-",
                ]
            )
    header = ["setting", "seeds", "target mIoU", "baseline", "Δ [95 % CI]", "verdict", "paired"]
    return md_table(header, rows)


def class_table(
    a: SweepAnalysis,
    what: str,
    settings: Sequence[str] | None = None,
    classes: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
) -> str:
    """Classes x settings: mean ± std over seeds of ``what`` (IoU or recall)."""
    settings = list(settings if settings is not None else a.settings)
    header = ["class", *(["src px %"] if a.share else []), *(titles or settings)]
    rows = []
    for c in classes if classes is not None else a.classes:
        row = [NAMES[c], *([f"{a.share[c]:.2f}"] if a.share else [])]
        row += [fmt_mean_std(*a.summary[s][f"{what}/{NAMES[c]}"][:2]) for s in settings]
        rows.append(row)
    return md_table(header, rows)


def delta_table(
    a: SweepAnalysis,
    what: str,
    comparisons: Sequence[Comparison] | None = None,
    classes: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
) -> str:
    """Classes x compared settings: Δ [95 % CI] of ``what``; bold where the interval excludes 0."""
    comps = list(comparisons if comparisons is not None else a.comparisons)
    names = [c.setting for c in comps]
    names_ = [
        c.setting if names.count(c.setting) == 1 else f"{c.setting} - {c.baseline}" for c in comps
    ]
    header = ["class", *(["src px %"] if a.share else []), *(titles or names_)]
    rows = []
    for cl in classes if classes is not None else a.classes:
        row = [NAMES[cl], *([f"{a.share[cl]:.2f}"] if a.share else [])]
        for c in comps:
            st = c.stats[f"{what}/{NAMES[cl]}"]
            cell = fmt_interval(st)
            row.append(f"**{cell}**" if st.verdict in ("better", "worse") else cell)
        rows.append(row)
    return md_table(header, rows)


def write_sweep_report(
    out: str | Path,
    baseline: str | None = None,
    report_dir: str | Path | None = None,
    log: Any = print,
) -> Path:
    """Write ``sweep.md``, ``sweep.csv`` and ``sweep.json`` for the sweep in ``out``."""
    out = Path(out)
    manifest, runs = load_sweep_runs(out)
    dest = Path(report_dir) if report_dir else out
    dest.mkdir(parents=True, exist_ok=True)
    settings = list(dict.fromkeys(r.setting for r in runs))
    values = {r.setting: r.values for r in runs}
    spec = baseline or default_baseline(manifest)
    if baseline is None and manifest.get("comparisons"):
        pairs = [(str(s), str(b)) for s, b in manifest["comparisons"]]
        spec = "as recorded by the study"
    else:
        pairs = baseline_pairs(settings, values, spec) if spec else []
    a = analyse(runs, pairs)
    done = [r for r in runs if r.metrics is not None]
    config = manifest.get("config")
    if isinstance(config, dict):  # a study: one config per setting
        config = ", ".join(str(v) for v in config.values())
    lines = [
        f"# Sweep `{out}`",
        "",
        f"Config: `{config}`"
        + (f"; overrides: `{' '.join(manifest['overrides'])}`" if manifest.get("overrides") else "")
        + "; grids: "
        + (
            "; ".join(f"`{g['key']}` = {', '.join(g['values'])}" for g in manifest["grids"])
            if manifest.get("grids")
            else "none"
        )
        + f"; seeds: {','.join(map(str, manifest.get('seeds', [])))}.",
        f"Baseline: {spec or 'none'}. Runs: {len(done)} of {len(runs)} finished.",
        "Values: the last checkpoint of each run (its metrics.json at train.max_iters) on the "
        "run's val split (target val), in %; mean ± std over seeds (std with n - 1).",
        CI_RULE,
        "",
        "## Target mIoU",
        "",
        miou_table(a),
    ]
    notes = [f"- {c.setting}: {n}" for c in a.comparisons if (n := left_out_note(c))]
    if notes:
        lines += ["", "Left out of the pairing:", *notes]
    if a.unfinished:
        lines += ["", "Not finished (left out): " + ", ".join(r.name for r in a.unfinished)]
    order = "rarest source class first" if a.share else "trainId order"
    for what in ("IoU", "recall"):
        lines += ["", f"## Per-class {what} (mean ± std over seeds; {order})", ""]
        lines.append(class_table(a, what))
    for what in ("IoU", "recall"):
        if a.comparisons:
            lines += [
                "",
                f"## Per-class {what}: Δ against the baseline [95 % CI] (bold: interval "
                "excludes 0)",
                "",
                delta_table(a, what),
            ]
    text = "\n".join(lines) + "\n"
    write_text(dest / "sweep.md", text)
    _write_csv(a, dest / "sweep.csv")
    write_json(dest / "sweep.json", _as_json(a, spec, out))
    log("")
    log("\n".join(lines[: lines.index("## Target mIoU") + 3]))
    log(f"wrote {dest / 'sweep.md'}, sweep.csv and sweep.json")
    return dest / "sweep.md"


def _split_key(key: str) -> tuple[str, str]:
    return ("mIoU", "") if key == "mIoU" else tuple(key.split("/", 1))  # type: ignore[return-value]


def _write_csv(a: SweepAnalysis, path: Path) -> None:
    base_of = {c.setting: c for c in a.comparisons}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "setting",
                "metric",
                "class",
                "n",
                "mean",
                "std",
                "baseline",
                "paired_n",
                "delta_mean",
                "delta_std",
                "ci_low",
                "ci_high",
                "verdict",
                "paired_seeds",
                "left_out_seeds",
            ]
        )
        for s in a.settings:
            for key in a.metric_keys():
                metric, cls = _split_key(key)
                m, sd, n = a.summary[s][key]
                row: list[Any] = [s, metric, cls, n, _num(m), _num(sd)]
                c = base_of.get(s)
                if c is None:
                    row += ["", "", "", "", "", "", "", "", ""]
                else:
                    st = c.stats[key]
                    left = st.only_setting + st.only_baseline
                    row += [
                        c.baseline,
                        st.n,
                        _num(st.mean),
                        _num(st.std),
                        _num(st.low),
                        _num(st.high),
                        st.verdict,
                        " ".join(map(str, st.seeds)),
                        " ".join(map(str, sorted(left))),
                    ]
                w.writerow(row)


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6g}"


def _clean(x: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _as_json(a: SweepAnalysis, baseline: str | None, out: Path) -> dict[str, Any]:
    keys = a.metric_keys()
    return _clean(
        {
            "sweep": str(out),
            "baseline": baseline,
            "units": "percent",
            "source": "metrics.json of each run (last checkpoint, at train.max_iters)",
            "classes": [NAMES[c] for c in a.classes],
            "source_share_pct": {NAMES[c]: a.share[c] for c in a.classes} if a.share else None,
            "runs": [
                {
                    "name": r.name,
                    "setting": r.setting,
                    "values": r.values,
                    "seed": r.seed,
                    "finished": r.metrics is not None,
                    **({k: r.value(k) for k in keys} if r.metrics else {}),
                }
                for r in a.runs
            ],
            "settings": [
                {
                    "setting": s,
                    "values": a.values[s],
                    "seeds": a.seeds[s],
                    **{
                        k: dict(zip(("mean", "std", "n"), a.summary[s][k], strict=True))
                        for k in keys
                    },
                }
                for s in a.settings
            ],
            "comparisons": [
                {
                    "setting": c.setting,
                    "baseline": c.baseline,
                    **{k: c.stats[k].as_dict() for k in keys},
                }
                for c in a.comparisons
            ],
        }
    )
