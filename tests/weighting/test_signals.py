"""Closed-form gradient signals equal per-class autograd on the logits."""

from __future__ import annotations

import pytest
import torch

import gbw
from gbw.weighting.reference import (
    autograd_grad_sqnorms,
    per_class_ce,
    per_class_entropy,
)

VARIANTS = ["class", "channel"]


def _case(seed: int, shape=(2, 7, 5, 6), ignore_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    b, c = shape[0], shape[1]
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    tshape = (b, *shape[2:])
    y = torch.randint(0, c, tshape, generator=gen)
    y[torch.rand(tshape, generator=gen) < ignore_frac] = 255
    w = torch.rand(tshape, generator=gen, dtype=torch.float64)
    return z, y, w


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("use_w", [False, True])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("seed", range(4))
def test_ce_closed_form_equals_autograd(variant, use_w, offset, seed):
    z, y, w = _case(seed)
    w = w if use_w else None
    closed = gbw.class_grad_sqnorms(z, y, pixel_weight=w, variant=variant, count_offset=offset)
    ref = autograd_grad_sqnorms(z, lambda t: per_class_ce(t, y, w, 255, offset), variant)
    assert closed.dtype == torch.float64
    assert _rel(closed, ref) <= 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_ce_closed_form_on_flat_inputs(variant):
    z, y, w = _case(7, shape=(50, 11))
    closed = gbw.class_grad_sqnorms(z, y, pixel_weight=w, variant=variant)
    ref = autograd_grad_sqnorms(z, lambda t: per_class_ce(t, y, w), variant)
    assert _rel(closed, ref) <= 1e-6


def test_absent_class_has_zero_class_signal_but_channel_signal():
    z, y, _ = _case(3, ignore_frac=0.0)
    y[y == 2] = 0  # class 2 absent
    g_class = gbw.class_grad_sqnorms(z, y, variant="class")
    g_chan = gbw.class_grad_sqnorms(z, y, variant="channel")
    assert g_class[2] == 0
    # other classes' pixels still push channel 2 down (false-positive gradient)
    assert g_chan[2] > 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_entropy_closed_form_equals_autograd(variant, masked, seed):
    z, _, _ = _case(seed)
    mask = None
    if masked:
        mask = (
            torch.rand(z.shape[0], *z.shape[2:], generator=torch.Generator().manual_seed(seed))
            > 0.4
        )
    closed = gbw.entropy_grad_sqnorms(z, valid_mask=mask, variant=variant)
    ref = autograd_grad_sqnorms(z, lambda t: per_class_entropy(t, mask), variant)
    assert _rel(closed, ref) <= 1e-6


def test_entropy_normalize_divides_by_log_c_squared():
    z, _, _ = _case(1)
    a = gbw.entropy_grad_sqnorms(z)
    b = gbw.entropy_grad_sqnorms(z, normalize=True)
    torch.testing.assert_close(b, a / torch.log(torch.tensor(7.0, dtype=torch.float64)) ** 2)


def test_shared_probs_give_same_signal():
    z, y, w = _case(2)
    p = torch.softmax(z, 1)
    for variant in VARIANTS:
        torch.testing.assert_close(
            gbw.class_grad_sqnorms(z, y, pixel_weight=w, variant=variant, probs=p),
            gbw.class_grad_sqnorms(z, y, pixel_weight=w, variant=variant),
        )


def test_counts_returned():
    z, y, _ = _case(5)
    _, n = gbw.class_grad_sqnorms(z, y, return_counts=True)
    expected = torch.stack([(y == c).sum() for c in range(7)]).double()
    torch.testing.assert_close(n, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_logits_computed_in_float32(dtype):
    z, y, _ = _case(4)
    g_lo = gbw.class_grad_sqnorms(z.to(dtype), y)
    g_hi = gbw.class_grad_sqnorms(z.to(dtype).double(), y)
    assert g_lo.dtype == torch.float32
    assert torch.isfinite(g_lo).all()
    torch.testing.assert_close(g_lo.double(), g_hi, rtol=1e-4, atol=1e-12)


def test_large_low_precision_logits_stay_finite():
    z, y, _ = _case(6)
    for variant in VARIANTS:
        g = gbw.class_grad_sqnorms((z * 1e3).half(), y, variant=variant)  # |z| < 65504
        assert torch.isfinite(g).all()
        e = gbw.entropy_grad_sqnorms((z * 1e30).bfloat16(), variant=variant)
        assert torch.isfinite(e).all()


def test_all_ignored_gives_zero_signal():
    z, y, _ = _case(0)
    y[:] = 255
    for variant in VARIANTS:
        assert (gbw.class_grad_sqnorms(z, y, variant=variant) == 0).all()
    assert (
        gbw.entropy_grad_sqnorms(z, valid_mask=torch.zeros_like(y, dtype=torch.bool)) == 0
    ).all()


def test_no_host_sync_meta_tensors():
    """Meta tensors have no values: any .item()/bool() on them raises. Passing proves the
    signal, the QP and the losses never branch on tensor values (capturable, sync-free)."""
    z = torch.empty(2, 19, 16, 16, device="meta")
    y = torch.empty(2, 16, 16, dtype=torch.long, device="meta")
    w = torch.empty(2, 16, 16, device="meta")
    for variant in VARIANTS:
        for scale in ("none", "mean"):
            s = gbw.GBW(19, variant=variant, scale=scale, present_only=True)
            assert s.cross_entropy(z, y, w).shape == ()
            assert s.entropy(z).shape == ()
    assert gbw.LossBasedWeighting(19).cross_entropy(z, y, w).shape == ()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_make_no_host_sync():
    z = torch.randn(2, 19, 64, 64, device="cuda", requires_grad=True)
    y = torch.randint(0, 19, (2, 64, 64), device="cuda")
    s = gbw.GBW(19, variant="channel", present_only=True, scale="mean")
    s.cross_entropy(z, y)  # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = s.cross_entropy(z, y)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = gbw.GBW(19, variant="channel", present_only=True, scale="mean")
    torch.testing.assert_close(s.last_weights.cpu(), ref.weights(z.detach().cpu(), y.cpu()))
