"""Plain-text and markdown tables of per-class results."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gbw.metrics import SegMetrics


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
