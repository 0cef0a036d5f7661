"""Strategies: GBW settings, baselines, diagnostics, degenerate batches and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gbw
from gbw.weighting import make_weighting


def _batch(seed=0, c=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, c, 6, 6, generator=g), torch.randint(0, c, (2, 6, 6), generator=g)


def test_gbw_weights_are_qp_of_signal():
    z, y = _batch()
    s = gbw.GBW(5, lam=0.003, variant="class")
    v = s.weights(z, y)
    g = gbw.class_grad_sqnorms(z, y)
    torch.testing.assert_close(v, gbw.solve_class_weights(g, 0.003))
    torch.testing.assert_close(s.last_g, g)
    assert s.log_dict()["weights"] is s.last_weights


def test_authors_preset_is_channel_offset_one_no_pixel_weight():
    z, y = _batch(1)
    w = torch.rand(2, 6, 6)
    s = gbw.GBW.authors(5)
    v = s.weights(z, y, w)
    g = gbw.class_grad_sqnorms(z, y, variant="channel", count_offset=1)
    torch.testing.assert_close(v, gbw.solve_class_weights(g, 1.0))


def test_authors_scale_keeps_weights_near_one():
    # METHOD.md: on real-size batches the authors' weights stay within ~[0.996, 1.02]
    torch.manual_seed(0)
    z, y = torch.randn(2, 19, 64, 64), torch.randint(0, 19, (2, 64, 64))
    v = gbw.GBW.authors(19).weights(z, y)
    assert v.min() > 0.99 and v.max() < 1.02


def test_mean_scale_makes_lambda_scale_free():
    z, y = _batch(2)
    s1 = gbw.GBW(5, lam=0.5, scale="mean")
    v = s1.weights(z, y)
    g = gbw.class_grad_sqnorms(z, y)
    # lam = 0.5 with g / mean(g): v = g / mean(g) exactly when nothing is clipped
    torch.testing.assert_close(v, g / g.mean())
    # and the same weights for logits whose g is 100x larger would need lam 100x larger in
    # "none" mode; with "mean" they are unchanged
    s2 = gbw.GBW(5, lam=0.5, scale="mean")
    torch.testing.assert_close(s2.weights(z, y), v)


def test_present_only_uses_present_classes():
    z, y = _batch(3)
    y[y == 4] = 0
    s = gbw.GBW(5, lam=0.001, present_only=True)
    v = s.weights(z, y)
    assert v[4] == 1.0
    assert v[:4].sum().item() == pytest.approx(4.0)


def test_degenerate_batches_never_nan_and_count_fallbacks():
    z, y = _batch(4)
    s = gbw.GBW(5, present_only=True)
    v = s.weights(z, torch.full_like(y, 255))  # all ignored
    assert torch.equal(v, torch.ones(5))
    zn = z.clone()
    zn[0, :, 0, 0] = float("nan")
    v = s.weights(zn, y)  # non-finite logits
    assert torch.equal(v, torch.ones(5))
    assert int(s.fallbacks) == 2
    # a single present class, C = 1, half precision: finite
    y1 = torch.zeros_like(y)
    for strategy in (gbw.GBW(5), gbw.GBW(5, present_only=True), gbw.GBW(5, variant="channel")):
        assert torch.isfinite(strategy.weights(z, y1)).all()
    assert gbw.GBW(1).weights(torch.randn(4, 1), torch.zeros(4, dtype=torch.long)).item() == 1.0
    for dtype in (torch.float16, torch.bfloat16):
        s = gbw.GBW(5, lam=0.01)
        loss = s.cross_entropy(z.to(dtype), y)
        assert torch.isfinite(loss) and torch.isfinite(s.last_weights).all()
        assert torch.isfinite(s.entropy(z.to(dtype)))


def test_lbw_uses_per_class_mean_losses():
    z, y = _batch(5)
    s = gbw.LossBasedWeighting(5, lam=2.0)
    v = s.weights(z, y)
    logp = torch.log_softmax(z, 1)
    ce = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    lbar = torch.stack([ce[y == c].mean() for c in range(5)])
    torch.testing.assert_close(v, gbw.solve_class_weights(lbar, 2.0))
    ve = s.entropy_weights(z)
    ent = -(logp.exp() * logp).mean((0, 2, 3))
    torch.testing.assert_close(ve, gbw.solve_class_weights(ent, 2.0))


def test_inverse_frequency_image_and_pixel_levels():
    # 4 images x 3 classes; class 2 never seen
    counts = np.array([[10, 0, 0], [10, 5, 0], [30, 0, 0], [50, 0, 0]])
    fi = gbw.InverseFrequency(counts, "image")
    # image frequencies: class0 in 4/4 images, class1 in 1/4 -> relative 0.8, 0.2
    inv = np.array([1 / 0.8, 1 / 0.2])
    expected = np.append(inv / inv.mean(), 1.0)
    np.testing.assert_allclose(fi.fixed_weights.numpy(), expected, rtol=1e-6)
    fp = gbw.InverseFrequency(counts, "pixel")
    inv = np.array([105 / 100, 105 / 5])
    np.testing.assert_allclose(
        fp.fixed_weights.numpy(), np.append(inv / inv.mean(), 1.0), rtol=1e-6
    )
    z = torch.randn(2, 3, 4, 4)
    assert torch.equal(fp.weights(z, torch.zeros(2, 4, 4, dtype=torch.long)), fp.fixed_weights)


def test_focal_strategy_and_factory():
    z, y = _batch(6)
    torch.testing.assert_close(
        make_weighting("focal", 5, gamma=2.0).cross_entropy(z, y), gbw.focal_loss(z, y, 2.0)
    )
    torch.testing.assert_close(
        make_weighting("none", 5).cross_entropy(z, y), gbw.weighted_cross_entropy(z, y)
    )
    assert isinstance(make_weighting("gbw", 5, lam=2.0, variant="channel"), gbw.GBW)
    assert make_weighting("gbw_authors", 5).count_offset == 1
    with pytest.raises(ValueError, match="needs class_stats"):
        make_weighting("if", 5)
    with pytest.raises(ValueError, match="unknown weighting 'gwb'"):
        make_weighting("gwb", 5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gbw.GBW(5, lam=0.0), "lam must be a finite number > 0"),
        (lambda: gbw.GBW(5, lam=-1.0), "lam must be a finite number > 0"),
        (lambda: gbw.solve_class_weights(torch.rand(3), float("inf")), "lam must be a finite"),
        (lambda: gbw.GBW(5, variant="row"), "variant must be one of"),
        (lambda: gbw.GBW(5, scale="max"), "scale must be one of"),
        (lambda: gbw.GBW(0), "num_classes must be a positive int"),
        (
            lambda: gbw.class_grad_sqnorms(
                torch.randn(2, 5, 4), torch.zeros(2, 4, dtype=torch.long)
            ),
            r"logits must have shape \(B, C, H, W\) or \(N, C\)",
        ),
        (
            lambda: gbw.class_grad_sqnorms(
                torch.randn(2, 5, 4, 4), torch.zeros(2, 4, 3, dtype=torch.long)
            ),
            r"target must have shape \(2, 4, 4\)",
        ),
        (
            lambda: gbw.class_grad_sqnorms(torch.randn(2, 5, 4, 4), torch.zeros(2, 4, 4)),
            "target must be an integer tensor",
        ),
        (
            lambda: gbw.class_grad_sqnorms(
                torch.randint(0, 3, (2, 5, 4, 4)), torch.zeros(2, 4, 4, dtype=torch.long)
            ),
            "logits must be a floating-point tensor",
        ),
        (
            lambda: gbw.class_grad_sqnorms(torch.randn(2, 5, 4, 4), torch.full((2, 4, 4), 5)),
            r"target values must be in \[0, 5\) or ignore_index=255",
        ),
        (
            lambda: gbw.class_grad_sqnorms(torch.randn(2, 5, 4, 4), torch.full((2, 4, 4), -1)),
            r"target values must be in \[0, 5\)",
        ),
        (
            lambda: gbw.class_grad_sqnorms(
                torch.randn(2, 5, 4, 4),
                torch.zeros(2, 4, 4, dtype=torch.long),
                pixel_weight=-torch.ones(2, 4, 4),
            ),
            "pixel_weight must be finite and >= 0",
        ),
        (
            lambda: gbw.weighted_cross_entropy(
                torch.randn(2, 5, 4, 4),
                torch.zeros(2, 4, 4, dtype=torch.long),
                pixel_weight=torch.full((2, 4, 4), float("nan")),
            ),
            "pixel_weight must be finite and >= 0",
        ),
        (
            lambda: gbw.weighted_cross_entropy(
                torch.randn(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(4)
            ),
            r"class_weight must be a tensor of shape \(5,\)",
        ),
        (
            lambda: gbw.GBW(4).weights(
                torch.randn(2, 5, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
            ),
            "GBW was built for 4 classes but logits have 5 channels",
        ),
        (
            lambda: gbw.entropy_grad_sqnorms(
                torch.randn(2, 5, 4, 4), valid_mask=torch.ones(2, 4, 4)
            ),
            "valid_mask must be a bool tensor",
        ),
        (
            lambda: gbw.solve_class_weights(torch.rand(3), present=torch.ones(3)),
            "present must be a bool tensor",
        ),
        (
            lambda: gbw.solve_class_weights(torch.rand(3), total=-2.0),
            "total must be finite and > 0",
        ),
        (
            lambda: gbw.InverseFrequency(np.array([[1, -2]])),
            "class_stats must be a",
        ),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_entropy_weights_follow_the_loss_normalisation():
    z, _ = _batch(7)
    for variant in ("class", "channel"):
        s = gbw.GBW(5, lam=1e-3, variant=variant)
        s.entropy(z, normalize=True)
        g = gbw.entropy_grad_sqnorms(z, variant=variant, normalize=True)
        torch.testing.assert_close(s.last_weights, gbw.solve_class_weights(g, 1e-3))
    lbw = gbw.LossBasedWeighting(5, lam=0.5)
    logp = torch.log_softmax(z, 1)
    ent = -(logp.exp() * logp).mean((0, 2, 3)) / np.log(5)
    torch.testing.assert_close(
        lbw.entropy_weights(z, normalize=True), gbw.solve_class_weights(ent, 0.5)
    )
