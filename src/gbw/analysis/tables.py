"""Plain-text and markdown tables of per-class results."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gbw.metrics import PanopticMetrics, SegMetrics


def _pct(x: float) -> str:
    return "  -  " if math.isnan(x) else f"{100 * x:5.1f}"


def metrics_table(metrics: SegMetrics, names: Sequence[str]) -> str:
    """Per-class IoU / recall / precision and the means, as a markdown table."""
    rows = ["| class | IoU | recall | precision |", "|---|---|---|---|"]
    for c in metrics.classes:
        rows.append(
            f"| {names[c]} | {_pct(float(metrics.iou[c]))} | "
            f"{_pct(float(metrics.recall[c]))} | {_pct(float(metrics.precision[c]))} |"
        )
    rows.append(
        f"| **mean ({len(metrics.classes)} classes)** | **{_pct(metrics.miou)}** | "
        f"{_pct(metrics.mean_recall)} | {_pct(metrics.mean_precision)} |"
    )
    return "\n".join(rows)


def panoptic_table(metrics: PanopticMetrics, names: Sequence[str]) -> str:
    """Per-class PQ / SQ / RQ (with TP, FP, FN) and the means over all classes, things and
    stuff, as a markdown table ("-": no segment of the class anywhere)."""
    rows = ["| class | kind | PQ | SQ | RQ | TP | FP | FN |", "|---|---|---|---|---|---|---|---|"]
    for c in metrics.classes:
        kind = "thing" if c in metrics.things else "stuff"
        rows.append(
            f"| {names[c]} | {kind} | {_pct(float(metrics.pq[c]))} | {_pct(float(metrics.sq[c]))} "
            f"| {_pct(float(metrics.rq[c]))} | {int(metrics.tp[c])} | {int(metrics.fp[c])} "
            f"| {int(metrics.fn[c])} |"
        )
    for which in ("all", "things", "stuff"):
        n = len(metrics.subset(which))
        rows.append(
            f"| **mean, {which} ({n})** | | **{_pct(metrics.mean('pq', which))}** | "
            f"{_pct(metrics.mean('sq', which))} | {_pct(metrics.mean('rq', which))} | | | |"
        )
    return "\n".join(rows)
