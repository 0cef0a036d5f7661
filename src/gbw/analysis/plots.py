"""The paper's analysis figures, drawn from run logs (matplotlib, Agg backend).

* :func:`weights_over_time` - per-class GBW weights along training (paper Fig. 2);
* :func:`max_weight_vs_frequency` - maximum weight vs source pixel share (Fig. 6a);
* :func:`weight_std_vs_gain` - weight variability vs IoU gain (Fig. 6b);
* :func:`qualitative` - image, ground truth, prediction without / with GBW (Fig. 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gbw.data.classes import CITYSCAPES_PALETTE


def _colour(c: int) -> tuple[float, float, float]:
    r, g, b = CITYSCAPES_PALETTE[c]
    return (r / 255, g / 255, b / 255)


def weights_over_time(
    series: Mapping[str, Sequence[tuple[int, float]]],
    class_ids: Sequence[int],
    names: Sequence[str],
    out: str | Path,
    title: str,
) -> Path:
    """One line per class: the mean weight of each logging interval against the step."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for c in class_ids:
        pts = series.get(names[c])
        if not pts:
            continue
        steps, vals = zip(*pts)
        ax.plot(steps, vals, label=names[c], color=_colour(c), lw=1.6)
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("iteration")
    ax.set_ylabel("class weight $v_c$ (interval mean)")
    ax.set_title(title)
    ax.legend(ncol=3, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _class_scatter(
    x: Mapping[int, float],
    y: Mapping[int, float],
    names: Sequence[str],
    out: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    log_x: bool = False,
    zero_line: bool = False,
) -> Path:
    """One labelled, class-coloured point per class, with Spearman's rho in the title."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ids = [c for c in x if c in y and np.isfinite(y[c]) and (x[c] > 0 or not log_x)]
    xs = np.array([x[c] for c in ids])
    ys = np.array([y[c] for c in ids])
    for c, xi, yi in zip(ids, xs, ys):
        ax.scatter(xi, yi, color=_colour(c), edgecolor="k", lw=0.4, s=40)
        ax.annotate(names[c], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if log_x:
        ax.set_xscale("log")
    if zero_line:
        ax.axhline(0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ids) > 2:
        title = f"{title}\nSpearman rho = {_spearman(xs, ys):+.2f}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def max_weight_vs_frequency(
    max_weight: Mapping[int, float],
    source_share: Mapping[int, float],
    names: Sequence[str],
    out: str | Path,
    title: str,
) -> Path:
    """Each class's maximum weight over training against its source pixel share (Fig. 6a)."""
    return _class_scatter(
        source_share,
        max_weight,
        names,
        out,
        title,
        "source pixel share (%)",
        "maximum GBW weight",
        log_x=True,
    )


def weight_std_vs_gain(
    std: Mapping[int, float],
    gain: Mapping[int, float],
    names: Sequence[str],
    out: str | Path,
    title: str,
) -> Path:
    """Each class's weight standard deviation against its IoU gain in points (Fig. 6b)."""
    return _class_scatter(
        std,
        gain,
        names,
        out,
        title,
        "std of the class weight over training",
        "IoU gain with GBW (points)",
        zero_line=True,
    )


def qualitative(
    images: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    preds: Mapping[str, Sequence[np.ndarray]],
    out: str | Path,
) -> Path:
    """Rows of image | ground truth | one column per prediction set (colourised trainIds)."""
    from gbw.engine.predict import colorize

    cols = 2 + len(preds)
    rows = len(images)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows), squeeze=False)
    titles = ["image", "ground truth", *preds]
    for r in range(rows):
        panels = [images[r], colorize(gts[r])] + [colorize(p[r]) for p in preds.values()]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def confusion_delta(
    matrix: np.ndarray,
    baseline: np.ndarray,
    class_ids: Sequence[int],
    names: Sequence[str],
    out: str | Path,
    title: str,
) -> Path:
    """Row-normalised confusion of a run minus its baseline, in points (paper Fig. 4a).

    Rows are ground truth, columns predictions; green = more pixels than the baseline,
    red = fewer. A rise on the diagonal is a recall gain.
    """
    ids = list(class_ids)

    def norm(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=float)[np.ix_(ids, ids)]
        rows = m.sum(1, keepdims=True)
        return np.divide(100 * m, rows, out=np.zeros_like(m), where=rows > 0)

    delta = norm(matrix) - norm(baseline)
    lim = max(1.0, float(np.abs(delta).max()))
    fig, ax = plt.subplots(figsize=(0.42 * len(ids) + 2.5, 0.42 * len(ids) + 1.5))
    im = ax.imshow(delta, cmap="RdYlGn", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(ids)), [names[c] for c in ids], rotation=90, fontsize=7)
    ax.set_yticks(range(len(ids)), [names[c] for c in ids], fontsize=7)
    for i in range(len(ids)):
        ax.text(i, i, f"{delta[i, i]:+.1f}", ha="center", va="center", fontsize=6, weight="bold")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="points of the row")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
