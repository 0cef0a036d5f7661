"""``gbw report RUN [RUN ...] --out DIR``: compare finished runs from their logs.

Writes ``report.md`` and ``report.csv`` (per-class IoU and recall of every run, deltas to the
baseline run, classes sorted by source pixel share when the source statistics are available)
and, for every run that logged class weights, the paper's figures: weights over training
(Fig. 2), maximum weight vs source frequency (Fig. 6a), weight variability vs IoU gain against
the baseline (Fig. 6b) and the confusion-matrix change against the baseline (Fig. 4a).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gbw.analysis import plots
from gbw.config import from_dict
from gbw.data.classes import CITYSCAPES_CLASSES
from gbw.engine.logger import read_scalars


def _load(run: Path) -> dict[str, Any]:
    import yaml

    if not (run / "metrics.json").exists():
        raise FileNotFoundError(f"{run}: no metrics.json (is the run finished?)")
    info = {"dir": run, "name": run.name, "metrics": json.loads((run / "metrics.json").read_text())}
    info["config"] = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    summary = run / "weights_summary.json"
    info["weights"] = json.loads(summary.read_text()) if summary.exists() else {}
    return info


def source_share(exp: Any) -> dict[int, float] | None:
    """Percent of source pixels per class, from the source dataset's class statistics."""
    spec = exp.data.source
    try:
        if spec.name == "minicity":
            from gbw.data.minicity import load_class_stats

            counts = load_class_stats(spec.split, spec.root or None, size=exp.data.minicity_size)[1]
        else:
            from gbw.data.prepare import load_class_stats as load_real

            counts = load_real(spec.root or f"data/{spec.name}", spec.name)[1]
    except (FileNotFoundError, OSError, ValueError):
        return None
    total = counts.sum()
    return {
        c: 100 * float(counts[:, c].sum()) / max(float(total), 1.0) for c in range(counts.shape[1])
    }


def report_runs(runs: list[str], out: str, baseline: str | None = None) -> Path:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = [_load(Path(r)) for r in runs]
    unique_names(infos)
    base = infos[0]
    if baseline:
        same = [i for i in infos if i["dir"].resolve() == Path(baseline).resolve()]
        base = same[0] if same else _load(Path(baseline))
        if not same:
            unique_names([*infos, base])
    names = CITYSCAPES_CLASSES
    classes = base["metrics"].get("classes") or list(range(len(names)))
    share = source_share(base["config"])
    order = sorted(classes, key=lambda c: share[c]) if share else list(classes)

    def val(info: dict, key: str) -> float:
        v = info["metrics"].get(key)
        return float("nan") if v is None else 100 * float(v)

    header = ["class"] + (["src px %"] if share else [])
    for info in infos:
        header += [f"{info['name']} IoU", f"{info['name']} recall"]
        if info is not base:
            header += ["ΔIoU", "Δrecall"]
    rows = []
    for c in [*order, None]:
        label = "**mIoU**" if c is None else names[c]
        row = [label] + ([f"{share[c]:.2f}" if c is not None else ""] if share else [])
        for info in infos:
            iou = val(info, "mIoU" if c is None else f"IoU/{names[c]}")
            rec = float("nan") if c is None else val(info, f"recall/{names[c]}")
            row += [_f(iou), _f(rec)]
            if info is not base:
                b_iou = val(base, "mIoU" if c is None else f"IoU/{names[c]}")
                b_rec = float("nan") if c is None else val(base, f"recall/{names[c]}")
                row += [_f(iou - b_iou, True), _f(rec - b_rec, True)]
        rows.append(row)
    lines = [
        f"Baseline: `{base['dir']}`. IoU and recall in % on the run's val set "
        f"({len(classes)} classes" + (", rarest source class first)." if share else ")."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
    figures = []
    for info in infos:
        figures += run_figures(info, base, order, share, out_dir)
    lines += ["", *[f"![{p.stem}]({p.name})" for p in figures]]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    with (out_dir / "report.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "class", "train_id", "IoU", "recall"])
        for info in infos:
            for c in classes:
                w.writerow(
                    [
                        info["name"],
                        names[c],
                        c,
                        info["metrics"].get(f"IoU/{names[c]}"),
                        info["metrics"].get(f"recall/{names[c]}"),
                    ]
                )
    print("\n".join(lines[: 4 + len(rows)]))
    print(f"\nwrote {out_dir / 'report.md'}, report.csv and {len(figures)} figures")
    return out_dir / "report.md"


def _f(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def unique_names(infos: list[dict[str, Any]]) -> None:
    """Give runs with the same folder name distinct names (table columns, figure files):
    the shortest path suffix that tells them apart, then ``#2``, ``#3`` for the same folder
    given twice. Changes ``info["name"]`` in place."""
    parts = [i["dir"].resolve().parts for i in infos]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["_".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
    seen: dict[str, int] = {}
    for info, name in zip(infos, names):
        seen[name] = seen.get(name, 0) + 1
        info["name"] = name if seen[name] == 1 else f"{name}#{seen[name]}"


def load_run(run: str | Path) -> dict[str, Any]:
    """A finished run's metrics, config and weight summary (what the figures need)."""
    return _load(Path(run))


def run_figures(
    info: dict,
    base: dict,
    order: list[int],
    share: dict[int, float] | None,
    out_dir: Path,
    prefix: str | None = None,
) -> list[Path]:
    """The paper's figures for one run (Figs. 2, 6a; against ``base``: 6b, 4a).

    Files are ``<prefix>fig2_weights_<term>.png``, ``fig6a_max_weight.png``,
    ``fig6b_std_vs_gain.png`` and ``fig4a_confusion_delta.png``; ``prefix`` defaults to the
    run's name and an underscore.
    """
    names = CITYSCAPES_CLASSES
    written: list[Path] = []
    tag = info["name"]
    pre = f"{tag}_" if prefix is None else prefix
    if info["weights"]:
        scalars = read_scalars(info["dir"] / "scalars.csv")
        show = order[:4] + order[-3:] if len(order) > 7 else order
        for term in info["weights"]:
            series = {
                t.split("/")[-1]: v for t, v in scalars.items() if t.startswith(f"{term}/weight/")
            }
            if series:
                written.append(
                    plots.weights_over_time(
                        series,
                        show,
                        names,
                        out_dir / f"{pre}fig2_weights_{term}.png",
                        f"{tag}: class weights over training ('{term}' loss)",
                    )
                )
        term = "src" if "src" in info["weights"] else next(iter(info["weights"]))
        summary = info["weights"][term]
        if share:
            mx = {c: summary[names[c]]["max"] for c in order if names[c] in summary}
            written.append(
                plots.max_weight_vs_frequency(
                    mx,
                    share,
                    names,
                    out_dir / f"{pre}fig6a_max_weight.png",
                    f"{tag}: max weight ('{term}') vs source frequency",
                )
            )
        if info is not base:
            sd = {c: summary[names[c]]["std"] for c in order if names[c] in summary}
            gain = {
                c: 100
                * (
                    info["metrics"].get(f"IoU/{names[c]}", math.nan)
                    - base["metrics"].get(f"IoU/{names[c]}", math.nan)
                )
                for c in order
            }
            written.append(
                plots.weight_std_vs_gain(
                    sd,
                    gain,
                    names,
                    out_dir / f"{pre}fig6b_std_vs_gain.png",
                    f"{tag}: weight std ('{term}') vs IoU gain over {base['name']}",
                )
            )
    m, b = info["metrics"].get("confusion"), base["metrics"].get("confusion")
    if info is not base and m is not None and b is not None:
        written.append(
            plots.confusion_delta(
                np.asarray(m),
                np.asarray(b),
                order,
                names,
                out_dir / f"{pre}fig4a_confusion_delta.png",
                f"{tag} minus {base['name']}: row-normalised confusion (points)",
            )
        )
    return written
