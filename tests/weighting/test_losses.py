"""Weighted losses against hand computations and PyTorch's own losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gbw


def test_weighted_ce_hand_case():
    # two pixels, two classes; pixel 2 ignored
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 255])
    v = torch.tensor([0.5, 1.5], dtype=torch.float64)
    w = torch.tensor([1.0, 0.2, 7.0], dtype=torch.float64)
    ce0 = math.log(1 + math.exp(-2.0))
    ce1 = math.log(1 + math.exp(-1.0))
    per = [0.5 * 1.0 * ce0, 1.5 * 0.2 * ce1, 0.0]
    got = gbw.weighted_cross_entropy(logits, target, v, w, reduction="none")
    torch.testing.assert_close(got, torch.tensor(per, dtype=torch.float64))
    # authors' mean: over ALL pixels, ignored as zero, not divided by sum(v)
    assert gbw.weighted_cross_entropy(logits, target, v, w).item() == pytest.approx(sum(per) / 3)
    assert gbw.weighted_cross_entropy(logits, target, v, w, reduction="valid_mean").item() == (
        pytest.approx(sum(per) / 2)
    )
    assert gbw.weighted_cross_entropy(
        logits, target, v, w, reduction="weighted_mean"
    ).item() == pytest.approx(sum(per) / (0.5 * 1.0 + 1.5 * 0.2))


def test_weighted_mean_matches_torch_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 4, 4)
    y = torch.randint(0, 5, (2, 4, 4))
    y[0, 0] = 255
    v = torch.rand(5) + 0.5
    ours = gbw.weighted_cross_entropy(z, y, v, reduction="weighted_mean")
    ref = F.cross_entropy(z, y, weight=v, ignore_index=255)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(
        gbw.weighted_cross_entropy(z, y, reduction="sum"),
        F.cross_entropy(z, y, ignore_index=255, reduction="sum"),
    )


def test_entropy_hand_case_and_adv_ent_normalisation():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]], dtype=torch.float64))
    v = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    h0 = 0.5 * math.log(2) + 2 * 1.0 * 0.25 * math.log(4)  # weighted: v1 = 2, v2 = 0
    got = gbw.weighted_entropy(logits, v, reduction="none")
    assert got[0].item() == pytest.approx(1.0 * 0.5 * math.log(2) + 2.0 * 0.25 * math.log(4))
    assert got[1].item() == pytest.approx(0.0, abs=1e-12)
    del h0
    # ADVENT: -sum p log2(p) / (N log2 C): same as natural-log entropy / log C
    z = torch.randn(2, 19, 3, 3, dtype=torch.float64)
    p = torch.softmax(z, 1)
    advent = -(p * torch.log2(p + 1e-30)).sum() / (2 * 3 * 3 * math.log2(19))
    torch.testing.assert_close(gbw.weighted_entropy(z, normalize=True), advent)


def test_focal_gamma_zero_is_ce_and_hand_case():
    torch.manual_seed(1)
    z = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 255])
    torch.testing.assert_close(gbw.focal_loss(z, y, gamma=0.0), gbw.weighted_cross_entropy(z, y))
    p = torch.softmax(z, 1)
    expected = (
        -((1 - p[0, 0]) ** 2) * torch.log(p[0, 0]) - (1 - p[1, 3]) ** 2 * torch.log(p[1, 3])
    ) / 3
    torch.testing.assert_close(gbw.focal_loss(z, y, gamma=2.0), expected)


def test_gbw_cross_entropy_shares_softmax_and_matches_two_step():
    torch.manual_seed(2)
    z = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (2, 5, 5))
    w = torch.rand(2, 5, 5, dtype=torch.float64)
    s = gbw.GBW(6, lam=0.01, variant="channel")
    loss = s.cross_entropy(z, y, w)
    v = gbw.GBW(6, lam=0.01, variant="channel").weights(z.detach(), y, w)
    ref = gbw.weighted_cross_entropy(z, y, v, w)
    torch.testing.assert_close(loss, ref)
    (gz,) = torch.autograd.grad(loss, z)
    (gr,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(gz, gr)  # weights are constants: no gradient through v


def test_module_upsamples_and_is_two_lines():
    torch.manual_seed(3)
    criterion = gbw.GBWCrossEntropy(num_classes=19)
    logits = torch.randn(2, 19, 8, 8, requires_grad=True)
    labels = torch.randint(0, 19, (2, 32, 32))
    loss = criterion(logits, labels)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert criterion.last_weights.shape == (19,)
    assert criterion.last_weights.sum().item() == pytest.approx(19.0, rel=1e-5)
    up = F.interpolate(logits.detach(), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss.detach(), gbw.GBW(19).cross_entropy(up, labels))
