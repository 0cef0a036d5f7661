"""Weighted losses against hand computations and PyTorch's own losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gbw


def test_weighted_ce_hand_case_every_reduction():
    # two pixels, two classes; pixel 2 ignored
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 255])
    v = torch.tensor([0.5, 1.5], dtype=torch.float64)
    w = torch.tensor([1.0, 0.2, 7.0], dtype=torch.float64)
    ce0 = math.log(1 + math.exp(-2.0))
    ce1 = math.log(1 + math.exp(-1.0))
    per = [0.5 * 1.0 * ce0, 1.5 * 0.2 * ce1, 0.0]

    def loss(reduction: str) -> float:
        return gbw.weighted_cross_entropy(logits, target, v, w, reduction=reduction).item()

    got = gbw.weighted_cross_entropy(logits, target, v, w, reduction="none")
    torch.testing.assert_close(got, torch.tensor(per, dtype=torch.float64))
    # PyTorch's mean (the default): divided by the labelled pixels' class weights only
    assert gbw.weighted_cross_entropy(logits, target, v, w).item() == pytest.approx(
        sum(per) / (0.5 + 1.5)
    )
    # the authors' (mmseg's) mean: over ALL pixels, ignored as zero, not divided by sum(v)
    assert loss("all_pixel_mean") == pytest.approx(sum(per) / 3)
    assert loss("labelled_mean") == pytest.approx(sum(per) / 2)
    assert loss("valid_mean") == loss("labelled_mean")  # the older name, same meaning
    assert loss("sum") == pytest.approx(sum(per))
    # focal with gamma 0 is this cross-entropy under every reduction
    for reduction in ("mean", "labelled_mean", "all_pixel_mean", "sum"):
        focal = gbw.focal_loss(logits, target, 0.0, v, w, reduction=reduction).item()
        assert focal == pytest.approx(loss(reduction))


def test_reduction_names_are_checked():
    z, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="reduction must be one of"):
        gbw.weighted_cross_entropy(z, y, reduction="avg")
    with pytest.raises(ValueError, match="PyTorch's weighted mean is 'mean'"):
        gbw.weighted_cross_entropy(z, y, reduction="weighted_mean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        gbw.GBWCrossEntropy(3, reduction="weighted_mean")


def test_mean_matches_torch_cross_entropy_values_and_gradients():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (2, 4, 4))
    y[0, 0] = 255
    v = torch.rand(5, dtype=torch.float64) + 0.5
    for weight in (None, v):
        ours = gbw.weighted_cross_entropy(z, y, weight)
        ref = F.cross_entropy(z, y, weight=weight, ignore_index=255)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(*(torch.autograd.grad(t, z)[0] for t in (ours, ref)))
    torch.testing.assert_close(
        gbw.weighted_cross_entropy(z, y, reduction="sum"),
        F.cross_entropy(z, y, ignore_index=255, reduction="sum"),
    )
    # no labelled pixel: 0 (PyTorch gives NaN)
    assert gbw.weighted_cross_entropy(z, torch.full_like(y, 255), v).item() == 0.0


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
    focal = -((1 - p[0, 0]) ** 2) * torch.log(p[0, 0]) - (1 - p[1, 3]) ** 2 * torch.log(p[1, 3])
    torch.testing.assert_close(gbw.focal_loss(z, y, gamma=2.0), focal / 2)  # 2 labelled pixels
    torch.testing.assert_close(
        gbw.focal_loss(z, y, gamma=2.0, reduction="all_pixel_mean"), focal / 3
    )


def test_entropy_means_over_the_valid_pixels():
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, :2] = True
    per = gbw.weighted_entropy(z, reduction="none")
    torch.testing.assert_close(gbw.weighted_entropy(z, valid_mask=mask), per[mask].mean())
    torch.testing.assert_close(
        gbw.weighted_entropy(z, valid_mask=mask, reduction="all_pixel_mean"),
        per[mask].sum() / per.numel(),
    )
    torch.testing.assert_close(gbw.weighted_entropy(z), per.mean())  # no mask: all pixels


def test_gbw_cross_entropy_shares_softmax_and_matches_two_step():
    torch.manual_seed(2)
    z = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (2, 5, 5))
    y[1, 0] = 255
    w = torch.rand(2, 5, 5, dtype=torch.float64)
    for reduction in ("mean", "labelled_mean", "all_pixel_mean", "sum"):
        s = gbw.GBW(6, lam=0.01, variant="channel")
        loss = s.cross_entropy(z, y, w, reduction)
        v = gbw.GBW(6, lam=0.01, variant="channel").weights(z.detach(), y, w)
        ref = gbw.weighted_cross_entropy(z, y, v, w, reduction=reduction)
        torch.testing.assert_close(loss, ref)
        (gz,) = torch.autograd.grad(loss, z)
        (gr,) = torch.autograd.grad(ref, z)
        torch.testing.assert_close(gz, gr)  # weights are constants: no gradient through v


# --- GBWCrossEntropy: the drop-in for nn.CrossEntropyLoss(ignore_index=255) ------------------


def _logits_and_labels(seed: int, size: int = 8, label_size: int = 32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 19, size, size, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 19, (2, label_size, label_size), generator=g)
    labels[0, :5] = 255  # ignored rows: the mean must not count them
    labels[1, :, :3] = 255
    return logits.requires_grad_(True), labels


def test_module_with_uniform_weights_equals_torch_cross_entropy():
    logits, labels = _logits_and_labels(3)
    # lambda so large that (g_c - mean g) / (2 lambda) vanishes: v = 1 exactly
    criterion = gbw.GBWCrossEntropy(num_classes=19, lam=1e30)
    loss = criterion(logits, labels)
    assert torch.equal(criterion.last_weights, torch.ones(19))
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    ref = torch.nn.CrossEntropyLoss(ignore_index=255)(up, labels)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref)
    (g_ours,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)
    # same size: no upsampling
    same, labels8 = _logits_and_labels(4, label_size=8)
    torch.testing.assert_close(
        criterion(same, labels8), torch.nn.CrossEntropyLoss(ignore_index=255)(same, labels8)
    )


def test_module_with_gbw_weights_is_torchs_weighted_mean():
    logits, labels = _logits_and_labels(5, label_size=8)
    criterion = gbw.GBWCrossEntropy(num_classes=19, lam=0.01)
    loss = criterion(logits, labels)
    v = criterion.last_weights.double()
    assert not torch.allclose(v, torch.ones_like(v))  # really weighted
    ref = torch.nn.CrossEntropyLoss(weight=v, ignore_index=255)(logits, labels)
    torch.testing.assert_close(loss, ref)
    (g_ours,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_module_authors_reduction_by_name():
    logits, labels = _logits_and_labels(6, label_size=8)
    authors = gbw.GBWCrossEntropy(num_classes=19, lam=0.01, reduction="all_pixel_mean")
    loss = authors(logits, labels)
    v = authors.last_weights.double()
    per_pixel = F.cross_entropy(logits, labels, weight=v, ignore_index=255, reduction="none")
    torch.testing.assert_close(loss, per_pixel.sum() / labels.numel())  # ignored pixels count
    labelled = gbw.GBWCrossEntropy(num_classes=19, lam=0.01, reduction="labelled_mean")
    torch.testing.assert_close(labelled(logits, labels), per_pixel.sum() / (labels != 255).sum())


def test_module_upsamples_smaller_logits_and_refuses_other_shapes():
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
    corners = gbw.GBWCrossEntropy(num_classes=19, align_corners=True)
    up = F.interpolate(logits.detach(), size=(32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(
        corners(logits, labels).detach(), gbw.GBW(19).cross_entropy(up, labels)
    )
    bad = [
        (torch.randn(2, 19, 64, 64), labels, "larger than the labels"),  # logits larger
        (torch.randn(2, 19, 8, 64), labels, "larger than the labels"),  # larger on one side
        (torch.randn(3, 19, 8, 8), labels, "same batch size"),
        (logits.detach(), labels[:, None], "same batch size"),  # (B, 1, H, W) labels
        (torch.randn(5, 19), torch.zeros(4, dtype=torch.long), r"labels of shape \(5,\)"),
    ]
    for z, y, message in bad:
        with pytest.raises(ValueError, match=message) as info:
            criterion(z, y)
        assert str(tuple(z.shape)) in str(info.value) and str(tuple(y.shape)) in str(info.value)
    no_up = gbw.GBWCrossEntropy(num_classes=19, upsample=False)
    with pytest.raises(ValueError, match=r"\(2, 19, 8, 8\) do not match the labels"):
        no_up(logits, labels)
