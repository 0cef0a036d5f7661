"""The sort-based QP equals an independent active-set QP solver (quadprog)."""

from __future__ import annotations

import numpy as np
import pytest
import quadprog
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gbw
from gbw.weighting.qp import solve_class_weights_with_status


def reference_qp(g: np.ndarray, lam: float, total: float) -> np.ndarray:
    """min -g.v + lam ||v||^2 s.t. v >= 0, sum v = total, by quadprog's dual active set.

    Equivalent form: min -y.v + 1/2 ||v||^2 with y = (g - max g) / (2 lam) (a constant shift
    of g changes the objective by a constant on the feasible set). Presolve: any optimum has
    v_max <= total, and v_c > 0 only where y_c - tau > 0 with tau >= y_max - total, so classes
    with y_c <= y_max - total are fixed at 0. That keeps quadprog's inputs within `total` of
    each other when g spans 1e-12..1e30; quadprog solves the remaining QP.
    """
    c = g.size
    y = (g - g.max()) / (2 * lam)
    free = y > -total
    v = np.zeros(c)
    k = int(free.sum())
    cons = np.hstack([np.ones((k, 1)), np.eye(k)])
    b = np.hstack([[total], np.zeros(k)])
    v[free] = quadprog.solve_qp(np.eye(k), y[free], cons, b, meq=1)[0]
    return v


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(240):
        c = [1, 2, 3, 5, 19, 19, 40, 150][i % 8]
        kind = i % 6
        if kind == 0:
            g = rng.random(c)
        elif kind == 1:  # authors' scale: tiny g
            g = rng.random(c) * 10.0 ** rng.uniform(-9, -3)
        elif kind == 2:  # huge g
            g = rng.random(c) * 10.0 ** rng.uniform(3, 30)
        elif kind == 3:  # ties and zeros
            g = rng.choice([0.0, 0.5, 2.0], size=c)
        elif kind == 4:  # mostly zeros, one spike
            g = np.zeros(c)
            g[rng.integers(c)] = rng.uniform(0, 100)
        else:  # spread over magnitudes
            g = 10.0 ** rng.uniform(-12, 12, size=c)
        lam = float(10.0 ** rng.uniform(-3, 2))
        cases.append((g, lam))
    return cases


CASES = _cases()


@pytest.mark.parametrize("idx", range(len(CASES)))
def test_equals_independent_solver(idx):
    g, lam = CASES[idx]
    v = gbw.solve_class_weights(torch.tensor(g), lam).numpy()
    ref = reference_qp(g, lam, float(g.size))
    np.testing.assert_allclose(v, ref, atol=1e-6 * max(1.0, g.size / 19), rtol=0)
    assert abs(v.sum() - g.size) <= 1e-9 * g.size
    assert (v >= 0).all()


def test_closed_form_when_nothing_is_clipped():
    g = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    v = gbw.solve_class_weights(g, lam=1.0)
    torch.testing.assert_close(v, 1.0 + (g - g.mean()) / 2.0)


def test_total_and_batched_rows():
    rng = np.random.default_rng(1)
    g = rng.random((6, 19))
    v = gbw.solve_class_weights(torch.tensor(g), 0.05, total=7.0).numpy()
    for row, vr in zip(g, v):
        np.testing.assert_allclose(vr, reference_qp(row, 0.05, 7.0), atol=1e-9)


def test_present_mask_solves_subproblem_and_neutral_elsewhere():
    g = torch.tensor([0.9, 0.0, 0.3, 0.0, 2.0], dtype=torch.float64)
    present = torch.tensor([True, False, True, False, True])
    v = gbw.solve_class_weights(g, 0.5, present=present)
    sub = reference_qp(g[present].numpy(), 0.5, 3.0)
    np.testing.assert_allclose(v[present].numpy(), sub, atol=1e-12)
    assert (v[~present] == gbw.weighting.NEUTRAL_WEIGHT).all()


def test_fallbacks_are_uniform_and_flagged():
    v, fb = solve_class_weights_with_status(torch.tensor([1.0, float("nan"), 2.0]), 1.0)
    assert fb.item() and torch.equal(v, torch.ones(3))
    v, fb = solve_class_weights_with_status(
        torch.tensor([1.0, 2.0]), 1.0, present=torch.tensor([False, False])
    )
    assert fb.item() and torch.equal(v, torch.ones(2))
    v, fb = solve_class_weights_with_status(torch.tensor([float("inf"), 1.0]), 1.0)
    assert fb.item() and torch.isfinite(v).all()
    # a NaN in an absent class does not matter
    v, fb = solve_class_weights_with_status(
        torch.tensor([float("nan"), 1.0, 3.0]), 1.0, present=torch.tensor([False, True, True])
    )
    assert not fb.item() and torch.isfinite(v).all()


def test_c_equals_one():
    assert gbw.solve_class_weights(torch.tensor([3.7]), 0.1).item() == pytest.approx(1.0)


def test_keeps_dtype_and_float32_precision():
    g = torch.rand(19) * 1e-4
    v32 = gbw.solve_class_weights(g)
    v64 = gbw.solve_class_weights(g.double())
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, atol=2e-7, rtol=0)


g_arrays = st.integers(1, 25).flatmap(
    lambda c: arrays(np.float64, c, elements=st.floats(0, 1e6, allow_nan=False))
)


@settings(max_examples=150, deadline=None)
@given(g=g_arrays, lam=st.floats(1e-3, 1e3))
def test_properties_sum_nonnegative(g, lam):
    v = gbw.solve_class_weights(torch.tensor(g), lam)
    assert (v >= 0).all()
    assert v.sum().item() == pytest.approx(g.size, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(g=g_arrays, lam=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31))
def test_permutation_equivariance(g, lam, seed):
    perm = np.random.default_rng(seed).permutation(g.size)
    v = gbw.solve_class_weights(torch.tensor(g), lam).numpy()
    vp = gbw.solve_class_weights(torch.tensor(g[perm]), lam).numpy()
    np.testing.assert_allclose(vp, v[perm], atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(g=g_arrays)
def test_large_lambda_gives_uniform(g):
    v = gbw.solve_class_weights(torch.tensor(g), lam=1e12)
    np.testing.assert_allclose(v.numpy(), np.ones(g.size), atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(g=g_arrays, lam=st.floats(1e-3, 1e3), idx=st.integers(0, 100), bump=st.floats(0, 1e6))
def test_monotone_in_g(g, lam, idx, bump):
    i = idx % g.size
    v = gbw.solve_class_weights(torch.tensor(g), lam)
    g2 = g.copy()
    g2[i] += bump
    v2 = gbw.solve_class_weights(torch.tensor(g2), lam)
    assert v2[i] >= v[i] - 1e-9
