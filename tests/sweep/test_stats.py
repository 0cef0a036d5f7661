"""Seed statistics against hand-computed values and scipy: t quantiles, paired intervals,
the verdict rule and the pairing of seeds."""

from __future__ import annotations

import math

import pytest

from gbw.analysis.stats import (
    BETTER,
    NO_CHANGE,
    TOO_FEW,
    WORSE,
    fmt_interval,
    fmt_mean_std,
    mean_std,
    paired_comparison,
    t_quantile,
    verdict,
)


def test_t_quantile_matches_scipy_and_the_table():
    stats = pytest.importorskip("scipy.stats")
    for dof in [*range(1, 41), 60, 99, 100, 250, 1001]:
        for p in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=1e-10)
    # textbook values of t_{0.975, dof}
    for dof, t in {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 30: 2.042}.items():
        assert t_quantile(0.975, dof) == pytest.approx(t, abs=5e-4)


def test_t_quantile_rejects_bad_arguments():
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError, match=r"0\.5 < p < 1"):
        t_quantile(0.3, 3)


def test_paired_interval_by_hand():
    # deltas 1, 2, 3: mean 2, std 1, t_{0.975,2} = 4.303 -> 2 ± 4.303 / sqrt(3)
    c = paired_comparison({1: 11.0, 2: 12.0, 3: 13.0}, {1: 10.0, 2: 10.0, 3: 10.0})
    half = 4.302652729749 / math.sqrt(3)
    assert (c.n, c.mean, c.std) == (3, 2.0, 1.0)
    assert c.low == pytest.approx(2 - half, abs=1e-9)
    assert c.high == pytest.approx(2 + half, abs=1e-9)
    assert c.low == pytest.approx(-0.4841377, abs=1e-6)
    assert c.verdict == NO_CHANGE  # the interval covers 0
    assert fmt_interval(c) == "+2.0 [-0.5, +4.5]"


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([1.0, 1.2, 0.8, 1.1], BETTER),  # mean 1.025, half-width 0.27: above 0
        ([-2.0, -1.5, -2.5], WORSE),  # mean -2, half-width 1.24: below 0
        ([1.0, -1.0, 0.5], NO_CHANGE),  # covers 0
        ([3.0], TOO_FEW),  # one pair: no interval
    ],
)
def test_verdict_follows_the_interval(deltas, expected):
    base = {s: 50.0 for s in range(len(deltas))}
    c = paired_comparison({s: 50.0 + d for s, d in enumerate(deltas)}, base)
    assert c.verdict == expected
    if expected == BETTER:
        assert c.low > 0
    if expected == WORSE:
        assert c.high < 0
    if expected == TOO_FEW:
        assert math.isnan(c.low) and c.mean == 3.0


def test_verdict_edges():
    assert verdict(0.0, 1.0) == NO_CHANGE  # touching 0 is not "above 0"
    assert verdict(-1.0, 0.0) == NO_CHANGE
    assert verdict(0.1, 0.2) == BETTER
    assert verdict(math.nan, math.nan) == TOO_FEW


def test_seeds_in_one_setting_only_are_left_out_and_named():
    c = paired_comparison({1: 3.0, 2: 4.0, 3: 9.0, 5: 1.0}, {1: 1.0, 2: 1.0, 4: 0.0, 5: math.nan})
    assert c.seeds == [1, 2]
    assert c.only_setting == [3, 5]  # 5: NaN on the baseline side counts as missing
    assert c.only_baseline == [4]
    assert c.mean == 2.5 and c.n == 2


def test_mean_std_and_formatting():
    assert mean_std([1.0, 2.0, 3.0, math.nan]) == (2.0, 1.0, 3)
    m, s, n = mean_std([4.0])
    assert (m, n) == (4.0, 1) and math.isnan(s)
    assert fmt_mean_std(2.0, 1.0) == "2.0 ± 1.0"
    assert fmt_mean_std(4.0, math.nan) == "4.0"
    assert fmt_mean_std(*mean_std([])[:2]) == "-"
