"""Seed statistics for comparisons (METHOD.md section 7): mean ± std, paired deltas, intervals.

A comparison pairs the runs of two settings by seed, takes the per-seed differences
``d_i = x_i - b_i`` and reports their mean with a two-sided 95 % Student t interval over the
``n - 1`` degrees of freedom of the differences::

    mean(d) ± t_{0.975, n-1} * std(d) / sqrt(n)          (std with n - 1 in the denominator)

The verdict follows the interval and nothing else: entirely above 0 -> "better", entirely below
0 -> "worse", covering 0 -> "no clear change"; with fewer than 2 paired seeds there is no
interval and the verdict says so.

The t quantile is computed here, exactly, instead of importing scipy (a test-only dependency):
for an integer number of degrees of freedom the two-sided t probability ``P(|T| <= t)`` has a
finite closed form (Abramowitz & Stegun 26.7.3 and 26.7.4), which is inverted by bisection to
machine precision. The tests check it against ``scipy.stats.t.ppf``. Pure Python: no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

BETTER, NO_CHANGE, WORSE = "better", "no clear change", "worse"
TOO_FEW = "too few paired seeds"


def t_two_sided_probability(t: float, dof: int) -> float:
    """``P(|T| <= t)`` for Student's t with an integer number of degrees of freedom."""
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof}")
    if t <= 0:
        return 0.0
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    if dof % 2 == 1:  # A&S 26.7.3: (2/pi)(theta + sin(theta)(cos + 2/3 cos^3 + ...))
        total, term = 0.0, math.cos(theta)
        if dof > 1:
            total = term
            for k in range(1, (dof - 3) // 2 + 1):
                term *= (2 * k) / (2 * k + 1) * c2
                total += term
        return min(1.0, 2.0 / math.pi * (theta + math.sin(theta) * total))
    total, term = 1.0, 1.0  # A&S 26.7.4: sin(theta)(1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, (dof - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return min(1.0, math.sin(theta) * total)


def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile (``p`` in (0.5, 1)) of Student's t, e.g. ``t_quantile(0.975, 2)``."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"expected 0.5 < p < 1, got {p}")
    mass = 2.0 * p - 1.0  # P(|T| <= t) = 2p - 1 for the upper quantile t
    lo, hi = 0.0, 1.0
    while t_two_sided_probability(hi, dof) < mass:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_two_sided_probability(mid, dof) < mass:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std with n - 1, n) over the finite values; NaN where undefined."""
    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan), len(xs)


def verdict(low: float, high: float) -> str:
    """The interval's word: above 0 -> better, below 0 -> worse, covering 0 -> no clear change."""
    if math.isnan(low) or math.isnan(high):
        return TOO_FEW
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NO_CHANGE


@dataclass
class PairedComparison:
    """A setting against its baseline, paired by seed (values in the caller's units)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    verdict: str
    seeds: list[int] = field(default_factory=list)  # the paired seeds
    only_setting: list[int] = field(default_factory=list)  # seeds left out: no baseline run
    only_baseline: list[int] = field(default_factory=list)  # seeds left out: no setting run

    def as_dict(self) -> dict:
        return asdict(self)


def paired_comparison(
    setting: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95
) -> PairedComparison:
    """Mean paired difference ``setting - baseline`` over the seeds both have, with its interval.

    ``setting`` and ``baseline`` map seed -> value; seeds with a missing or NaN value on either
    side are left out of the pairing and listed in the result.
    """

    def finite(d: Mapping[int, float]) -> dict[int, float]:
        return {s: float(v) for s, v in d.items() if v is not None and math.isfinite(float(v))}

    a, b = finite(setting), finite(baseline)
    seeds = sorted(set(a) & set(b))
    deltas = [a[s] - b[s] for s in seeds]
    mean, std, n = mean_std(deltas)
    low = high = math.nan
    if n >= 2:
        half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedComparison(
        n=n,
        mean=mean,
        std=std,
        low=low,
        high=high,
        verdict=verdict(low, high),
        seeds=seeds,
        only_setting=sorted(set(a) - set(b)),
        only_baseline=sorted(set(b) - set(a)),
    )


def fmt_mean_std(mean: float, std: float, digits: int = 1) -> str:
    """``61.2 ± 0.4``; ``61.2`` for one value; ``-`` for none."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_interval(c: PairedComparison, digits: int = 1) -> str:
    """``+1.2 [-0.3, +2.7]``; the mean alone without an interval; ``-`` without pairs."""
    if math.isnan(c.mean):
        return "-"
    if math.isnan(c.low):
        return f"{c.mean:+.{digits}f}"
    return f"{c.mean:+.{digits}f} [{c.low:+.{digits}f}, {c.high:+.{digits}f}]"
