"""The self-training building blocks against hand computations, torchvision and the references'
semantics; every block on meta tensors (no host synchronisation); reproducibility."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from gbw.uda.blocks import (
    EMATeacher,
    _adjust_brightness,
    _adjust_contrast,
    _adjust_hue,
    _adjust_saturation,
    _blur_with_sigma,
    _hsv_to_rgb,
    _rgb_to_hsv,
    block_mask,
    blur_kernel_size,
    class_mix_masks,
    color_jitter,
    downscale_label_ratio,
    gaussian_blur,
    mix,
    pseudo_labels,
    strong_augment,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ EMA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("const", torch.tensor([0.1, 0.2, 0.3]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x))) + self.const


def _perturb(model: nn.Module, seed: int) -> None:
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        model.bn.running_mean.add_(torch.randn(3, generator=g, dtype=torch.float64))
        model.bn.running_var.mul_(2.0)
        model.bn.num_batches_tracked.add_(7)


def test_ema_alpha_schedule():
    teacher = EMATeacher(Tiny(), alpha=0.99)
    assert teacher.alpha_at(0) == 0.0
    assert teacher.alpha_at(1) == 0.5
    assert teacher.alpha_at(10) == pytest.approx(1 - 1 / 11)
    assert teacher.alpha_at(10_000) == 0.99
    steps = torch.tensor([0, 1, 10, 10_000])
    torch.testing.assert_close(teacher.alpha_at(steps), torch.tensor([0.0, 0.5, 1 - 1 / 11, 0.99]))


def test_ema_update_formula_and_buffers_with_ema_statistics():
    student = Tiny().double()
    teacher = EMATeacher(student, alpha=0.99, bn="ema")
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for step in (0, 1, 10, 5000):
        _perturb(student, seed=step + 1)
        old_p = [p.clone() for p in teacher.model.parameters()]
        old_mean = teacher.model.bn.running_mean.clone()
        a = min(1 - 1 / (step + 1), 0.99)
        teacher.update(student, step)
        for t, s, o in zip(teacher.model.parameters(), student.parameters(), old_p):
            torch.testing.assert_close(t, a * o + (1 - a) * s, rtol=1e-14, atol=1e-14)
        # floating-point state-dict buffers follow the same EMA ...
        torch.testing.assert_close(
            teacher.model.bn.running_mean, a * old_mean + (1 - a) * student.bn.running_mean
        )
        # ... integer and non-persistent buffers are copied
        assert teacher.model.bn.num_batches_tracked == student.bn.num_batches_tracked
        assert torch.equal(teacher.model.const, student.const)
    # step 0 is an exact copy (DACS's first update, DAFormer's _init_ema_weights)
    _perturb(student, seed=99)
    teacher.update(student, 0)
    for t, s in zip(teacher.model.state_dict().values(), student.state_dict().values()):
        assert torch.equal(t, s)


def test_ema_update_with_batch_statistics_averages_parameters_only():
    """The references' update (DACS update_ema_variables, DAFormer _update_ema): parameters
    only; the teacher's buffers are its own."""
    student = Tiny().double()
    teacher = EMATeacher(student, alpha=0.99)
    assert teacher.bn == "batch"
    for step in (0, 3):
        _perturb(student, seed=step + 1)
        old_p = [p.clone() for p in teacher.model.parameters()]
        old_bufs = [b.clone() for b in teacher.model.buffers()]
        student_bufs = [b.clone() for b in student.buffers()]
        teacher.update(student, step)
        a = min(1 - 1 / (step + 1), 0.99)
        for t, s, o in zip(teacher.model.parameters(), student.parameters(), old_p):
            torch.testing.assert_close(t, a * o + (1 - a) * s, rtol=1e-14, atol=1e-14)
        for t, o in zip(teacher.model.buffers(), old_bufs):
            assert torch.equal(t, o)
        assert all(torch.equal(b, o) for b, o in zip(student.buffers(), student_bufs))


def test_teacher_normalises_with_the_batch_statistics_by_default():
    """Hand-made BatchNorm of the batch the teacher predicts, dropout off, nothing of the
    student touched; ``bn="ema"`` uses the running statistics instead."""
    torch.manual_seed(0)
    student = Tiny().double()
    _perturb(student, seed=5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = EMATeacher(student)
    x = torch.randn(6, 4, dtype=torch.float64)
    h = student.fc(x).detach()
    mean, var = h.mean(0), h.var(0, unbiased=False)
    bn = student.bn
    by_hand = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.detach() + bn.bias.detach()
    y1, y2 = teacher(x), teacher(x)
    torch.testing.assert_close(y1, by_hand + student.const)
    assert torch.equal(y1, y2) and not y1.requires_grad  # dropout off, no autograd
    # the teacher's own running statistics moved (as in the references); the student's not
    assert teacher.model.bn.num_batches_tracked == before["bn.num_batches_tracked"] + 2
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert student.training and teacher.model.bn.training and not teacher.model.drop.training
    teacher.model.train()  # someone flips the inner model: dropout stays off
    assert torch.equal(teacher(x), y1)
    # gbw's alternative: running statistics (eval mode)
    ema = EMATeacher(student, bn="ema")
    running = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    expected = running * bn.weight.detach() + bn.bias.detach() + student.const
    torch.testing.assert_close(ema(x), expected)
    assert not ema.model.bn.training
    with pytest.raises(ValueError, match="bn must be one of"):
        EMATeacher(student, bn="train")


def test_teacher_modes_agree_without_batch_statistics():
    """Frozen BN (DeepLabV2 ``bn: frozen``) and LayerNorm (MiT) do not depend on the mode."""
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(1)
    student = nn.Sequential(
        nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(1), nn.LayerNorm(144)
    )
    student[1].running_mean.normal_()
    x = torch.randn(2, 3, 8, 8)
    batch, ema = EMATeacher(student, bn="batch"), EMATeacher(student, bn="ema")
    torch.testing.assert_close(batch(x), ema(x))
    torch.testing.assert_close(batch(x), student.eval()(x).detach())


def test_ema_forward_state_dict_round_trip():
    student = Tiny()
    for bn in ("batch", "ema"):
        teacher = EMATeacher(student, bn=bn)
        teacher.train()
        assert teacher.training and not teacher.model.training
        x = torch.randn(5, 4, requires_grad=True)
        assert torch.equal(teacher(x), teacher(x))  # dropout off
        # state_dict round trip into a teacher of another student
        _perturb(student, seed=3)
        teacher.update(student, 5)
        other = EMATeacher(Tiny(), bn=bn)
        other.load_state_dict(teacher.state_dict())
        for a, b in zip(other.state_dict().values(), teacher.state_dict().values()):
            assert torch.equal(a, b)
        assert set(teacher.state_dict()) == {f"model.{k}" for k in student.state_dict()}


def test_ema_rejects_other_architecture():
    teacher = EMATeacher(Tiny())
    with pytest.raises(ValueError, match="architecture"):
        teacher.update(nn.Linear(4, 3), 1)


# ------------------------------------------------------------------------------- ClassMix


def _labels() -> torch.Tensor:
    lab = torch.full((2, 8, 10), 255, dtype=torch.long)
    for c in range(5):  # image 0: classes 0..4 in vertical stripes, plus ignore
        lab[0, :, 2 * c : 2 * c + 2] = c
    lab[0, 0] = 255
    lab[1, :4] = 5  # image 1: classes 5 and 6, no ignore
    lab[1, 4:] = 6
    return lab


def _chosen(mask: torch.Tensor, lab: torch.Tensor) -> set[int]:
    chosen = set(lab[mask].tolist())
    for c in chosen:  # a class is pasted whole or not at all
        assert mask[lab == c].all()
    return chosen


def test_class_mix_half_of_present_classes_per_image():
    lab = _labels()
    counts = torch.zeros(7)
    for seed in range(200):
        m = class_mix_masks(lab, gen(seed))
        assert m.dtype == torch.bool and m.shape == lab.shape
        c0, c1 = _chosen(m[0], lab[0]), _chosen(m[1], lab[1])
        assert len(c0) == 3 and c0 <= {0, 1, 2, 3, 4}  # ceil(5 / 2), never ignore
        assert len(c1) == 1 and c1 <= {5, 6}
        for c in c0 | c1:
            counts[c] += 1
    # uniform choice: each class of image 0 in 3/5 of the draws, of image 1 in 1/2
    assert torch.allclose(counts[:5] / 200, torch.full((5,), 0.6), atol=0.1)
    assert torch.allclose(counts[5:] / 200, torch.full((2,), 0.5), atol=0.1)


def test_class_mix_per_image_counting_the_ignore_label_as_dacs_code():
    """vikolss/DACS trainUDA.py: ``classes = torch.unique(labels[image_i])`` with the ignore
    filter commented out, then ``ceil(n / 2)`` of them: image 0 has {0..4, 255} (n = 6, 3
    chosen, the ignore label among the candidates), image 1 {5, 6} (n = 2, 1 chosen)."""
    lab = _labels()
    ignore_chosen = 0
    for seed in range(200):
        m = class_mix_masks(lab, gen(seed), count_ignore=True)
        c0, c1 = _chosen(m[0], lab[0]), _chosen(m[1], lab[1])
        assert len(c0) == 3 and c0 <= {0, 1, 2, 3, 4, 255}
        assert len(c1) == 1 and c1 <= {5, 6}
        ignore_chosen += 255 in c0
        # replay: the 3 lowest scores among image 0's 6 candidates (slot 19 = ignore)
        scores = torch.rand(2, 20, generator=gen(seed))
        ranked = sorted([0, 1, 2, 3, 4, 19], key=lambda c: scores[0, c].item())[:3]
        assert c0 == {255 if c == 19 else c for c in ranked}
    assert 0.4 < ignore_chosen / 200 < 0.6  # chosen like any class: 3 of 6


def test_class_mix_reproducible_and_edge_cases():
    lab = torch.randint(0, 19, (2, 16, 16))
    assert torch.equal(class_mix_masks(lab, gen(1)), class_mix_masks(lab, gen(1)))
    assert not torch.equal(class_mix_masks(lab, gen(1)), class_mix_masks(lab, gen(2)))
    empty = torch.full((1, 4, 4), 255)
    assert not class_mix_masks(empty, gen()).any()
    one = torch.full((1, 4, 4), 3)
    assert class_mix_masks(one, gen()).all()  # ceil(1 / 2) = 1


def test_class_mix_daformer_batch_quirk():
    lab = _labels()  # batch classes {0..6, 255}: n = 8, 4 chosen per image
    for seed in range(50):
        g = gen(seed)
        m = class_mix_masks(lab, g, per_image=False)
        # replay the draw: the k lowest random scores among the batch's 8 "classes"
        g = gen(seed)
        scores = torch.rand(2, 20, generator=g)
        batch_classes = [0, 1, 2, 3, 4, 5, 6, 19]  # slot 19 = ignore
        for i in range(2):
            ranked = sorted(batch_classes, key=lambda c, i=i: scores[i, c].item())[:4]
            expect = {255 if c == 19 else c for c in ranked} & set(lab[i].unique().tolist())
            assert _chosen(m[i], lab[i]) == expect
    # the ignore "class" is sometimes pasted, as in DAFormer
    assert any(
        class_mix_masks(lab, gen(s), per_image=False)[0][lab[0] == 255].any() for s in range(50)
    )


def test_mix_images_labels_weights():
    mask = torch.tensor([[[True, False], [False, True]]])
    a_img, b_img = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    out = mix(mask, a_img, b_img)
    assert torch.equal(out, mask.unsqueeze(1).expand(1, 3, 2, 2).float())
    a_lab, b_lab = torch.full((1, 2, 2), 7), torch.tensor([[[1, 2], [3, 255]]])
    lab = mix(mask, a_lab, b_lab)
    assert lab.dtype == torch.int64 and lab.tolist() == [[[7, 2], [3, 7]]]
    w = mix(mask, 1.0, torch.full((1, 2, 2), 0.25))
    assert w.tolist() == [[[1.0, 0.25], [0.25, 1.0]]]
    soft = mix(torch.full((1, 2, 2), 0.25), a_img, b_img)
    torch.testing.assert_close(soft, torch.full((1, 3, 2, 2), 0.25))
    assert mix(mask.float(), a_lab, b_lab).dtype == torch.int64


# -------------------------------------------------------------------------- pseudo-labels


def test_pseudo_labels_threshold_fraction_margins():
    # 2 classes, 1 x 4 x 3 pixels; confident (p >= 0.968) where |logit gap| >= log(0.968/0.032)
    gap = math.log(0.968 / 0.032)
    diff = torch.tensor(
        [[5.0, -5.0, 0.1], [gap + 0.01, 1.0, -4.0], [0.0, 6.0, -gap + 0.01], [3.5, -3.5, 9.0]]
    )
    logits = torch.stack([diff, torch.zeros_like(diff)]).unsqueeze(0)  # (1, 2, 4, 3)
    labels, weight = pseudo_labels(logits)
    assert labels.dtype == torch.int64
    assert torch.equal(labels[0], (diff < 0).long())
    confident = diff.abs() >= gap
    assert int(confident.sum()) == 8
    torch.testing.assert_close(weight, torch.full((1, 4, 3), 8 / 12))
    _, w = pseudo_labels(logits, margins=(1, 2, 0, 1))
    expect = torch.full((4, 3), 8 / 12)
    expect[:1] = 0
    expect[-2:] = 0
    expect[:, -1:] = 0
    torch.testing.assert_close(w[0], expect)
    _, w = pseudo_labels(logits, weighting="per_pixel", margins=(0, 0, 1, 0))
    assert torch.equal(w[0], (confident & (torch.arange(3) >= 1)).float())
    _, w = pseudo_labels(logits.bfloat16(), weighting="none")
    assert w.dtype == torch.float32 and torch.equal(w, torch.ones(1, 4, 3))
    # the fraction is one scalar over the whole batch
    _, w = pseudo_labels(torch.cat([logits, torch.zeros_like(logits)]))
    torch.testing.assert_close(w, torch.full((2, 4, 3), 8 / 24))
    with pytest.raises(ValueError):
        pseudo_labels(logits, weighting="soft")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ colour jitter


def _image(seed: int = 0, h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=gen(seed))


def test_hsv_round_trip_matches_colorsys():
    x = _image(1)
    x[..., 0, :] = 0.5  # grey pixels (hue undefined) and black
    x[..., 1, :] = 0.0
    h, s, v = _rgb_to_hsv(x)
    for i, j in [(0, 0), (1, 3), (2, 7), (5, 5), (11, 9)]:
        ref = colorsys.rgb_to_hsv(*x[0, :, i, j].tolist())
        got = (h[0, i, j].item(), s[0, i, j].item(), v[0, i, j].item())
        assert got == pytest.approx(ref, abs=1e-6)
    torch.testing.assert_close(_hsv_to_rgb(h, s, v), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("factor", [0.8, 1.0, 1.17])
def test_torchvision_convention_ops_match_torchvision(factor):
    x = _image(2)
    f = torch.tensor([factor])
    for ours, theirs in [
        (_adjust_brightness(x, f, "torchvision"), TF.adjust_brightness(x, factor)),
        (_adjust_contrast(x, f, "torchvision"), TF.adjust_contrast(x, factor)),
        (_adjust_saturation(x, f, "torchvision"), TF.adjust_saturation(x, factor)),
    ]:
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [-0.2, -0.05, 0.0, 0.13, 0.5])
def test_hue_matches_torchvision(shift):
    x = _image(3)
    # HSV round trips differ in rounding only; 1e-5 holds on float32 images in [0, 1]
    torch.testing.assert_close(
        _adjust_hue(x, torch.tensor([shift])), TF.adjust_hue(x, shift), atol=1e-5, rtol=0
    )


def test_kornia_convention_ops():
    x = _image(4)
    f = torch.tensor([1.15])
    torch.testing.assert_close(_adjust_brightness(x, f, "kornia"), (x + 0.15).clamp(0, 1))
    torch.testing.assert_close(_adjust_contrast(x, f, "kornia"), (x * 1.15).clamp(0, 1))
    # saturation scales HSV S (clamped), keeps H and V
    out = _adjust_saturation(x, f, "kornia")
    h0, s0, v0 = _rgb_to_hsv(x)
    h1, s1, v1 = _rgb_to_hsv(out)
    torch.testing.assert_close(s1, (s0 * 1.15).clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(v1, v0, atol=1e-6, rtol=0)
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("convention", ["kornia", "torchvision"])
@pytest.mark.parametrize("random_order", [True, False])
def test_color_jitter_identity_probability_and_range(convention, random_order):
    x = torch.rand(4, 3, 9, 11, generator=gen(5))
    kw = {"convention": convention, "random_order": random_order}
    same = color_jitter(x, gen(), strength=0.0, p_skip=0.0, **kw)
    torch.testing.assert_close(same, x, atol=2e-6, rtol=0)
    assert torch.equal(color_jitter(x, gen(), p_skip=1.0, **kw), x)  # never applied
    out = color_jitter(x, gen(), strength=0.4, p_skip=0.0, **kw)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert ((out - x).abs().amax(dim=(1, 2, 3)) > 1e-3).all()  # every image changed
    half = color_jitter(x.bfloat16(), gen(), strength=0.4, p_skip=0.0, **kw)
    assert half.dtype == torch.bfloat16  # computed in float32, cast back
    torch.testing.assert_close(half.float(), out, atol=2e-2, rtol=0)
    # one decision per batch (DAFormer), applied with probability 1 - p_skip = 0.8
    g = gen(6)
    changed = [not torch.equal(color_jitter(x, g, **kw), x) for _ in range(200)]
    assert 0.7 < sum(changed) / 200 < 0.9
    out = color_jitter(x, gen(7), p_skip=0.5, per_image=True, **kw)
    per = [not torch.equal(out[i], x[i]) for i in range(4)]
    g = gen(7)
    assert per == (torch.rand(4, generator=g) > 0.5).tolist()


def _jitter_by_hand(x: torch.Tensor, g: torch.Generator, *, same_order: bool, hue_sign=1.0):
    """The kornia-convention jitter (s = 0.2, always applied) replayed from the draws."""
    b = x.shape[0]
    torch.rand(1, generator=g)  # the apply decision
    fb = torch.rand(b, generator=g) * 0.4 + 0.8
    fc = torch.rand(b, generator=g) * 0.4 + 0.8
    fs = torch.rand(b, generator=g) * 0.4 + 0.8
    fh = torch.rand(b, generator=g) * 0.4 - 0.2
    order = torch.rand(1 if same_order else b, 4, generator=g).argsort(dim=1).expand(b, 4)
    out = []
    for i in range(b):
        y = x[i : i + 1]
        for op in order[i].tolist():
            f = [fb, fc, fs, fh * hue_sign][op][i : i + 1]
            if op == 0:
                y = _adjust_brightness(y, f, "kornia")
            elif op == 1:
                y = _adjust_contrast(y, f, "kornia")
            elif op == 2:
                y = _adjust_saturation(y, f, "kornia")
            else:
                y = _adjust_hue(y, f)
        out.append(y)
    return torch.cat(out), order


@pytest.mark.parametrize("same_order", [False, True])
def test_color_jitter_draws_one_order_per_image_or_per_batch(same_order):
    """DACS/DAFormer call kornia once per mixed image (own order); MIC once on its masked
    batch (kornia 0.5.8 draws one ``randperm(4)`` per call: one order for all images)."""
    x = torch.rand(6, 3, 7, 5, generator=gen(20))
    out = color_jitter(x, gen(21), p_skip=0.0, same_order=same_order)
    expected, order = _jitter_by_hand(x, gen(21), same_order=same_order)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    distinct = {tuple(o) for o in order.tolist()}
    assert len(distinct) == 1 if same_order else len(distinct) > 1


def test_color_jitter_on_bgr_channels_as_dacs():
    """DACS jitters BGR data: the same as jittering the flipped image, and (kornia
    convention) the same as the RGB jitter with the hue rotation reversed."""
    x = torch.rand(3, 3, 8, 6, generator=gen(22))
    bgr = color_jitter(x, gen(23), p_skip=0.0, channels="bgr")
    torch.testing.assert_close(bgr, color_jitter(x.flip(1), gen(23), p_skip=0.0).flip(1))
    reversed_hue, _ = _jitter_by_hand(x, gen(23), same_order=False, hue_sign=-1.0)
    torch.testing.assert_close(bgr, reversed_hue, atol=1e-5, rtol=0)
    assert not torch.allclose(bgr, color_jitter(x, gen(23), p_skip=0.0), atol=1e-3)
    with pytest.raises(ValueError, match="channels"):
        color_jitter(x, gen(), channels="rbg")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- blur


def test_blur_kernel_size_formula():
    def reference(side: int) -> int:  # DACS/DAFormer's expression
        return int(np.floor(np.ceil(0.1 * side) - 0.5 + np.ceil(0.1 * side) % 2))

    for side in [16, 17, 100, 101, 512, 720, 760, 1024, 1280]:
        k = blur_kernel_size(side)
        assert k == reference(side) and k % 2 == 1
    assert [blur_kernel_size(s) for s in (512, 720, 1024)] == [51, 71, 103]


def test_blur_matches_torchvision_and_preserves_constants():
    x = torch.rand(2, 3, 40, 30, generator=gen(8))
    sigma = torch.tensor([0.3, 1.1])
    out = _blur_with_sigma(x, sigma)
    for i in range(2):
        ref = TF.gaussian_blur(
            x[i : i + 1], [blur_kernel_size(30), blur_kernel_size(40)], [sigma[i].item()] * 2
        )
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=0)
    const = torch.full((2, 3, 40, 30), 0.37)
    torch.testing.assert_close(_blur_with_sigma(const, sigma), const)
    torch.testing.assert_close(out.mean(), x.mean(), atol=5e-3, rtol=0)
    assert out.std() < x.std()
    assert torch.equal(gaussian_blur(x, gen(), p=0.0), x)
    blurred = gaussian_blur(x, gen(), p=1.0)
    assert not torch.equal(blurred, x) and blurred.shape == x.shape
    assert gaussian_blur(x.bfloat16(), gen(), p=1.0).dtype == torch.bfloat16


@pytest.mark.parametrize("same_sigma", [False, True])
def test_blur_draws_one_sigma_per_image_or_per_batch(same_sigma):
    """One sigma per ``strong_transform`` call: per image for DACS/DAFormer's mixed images,
    one for MIC's whole masked batch (``np.random.uniform(0.15, 1.15)`` once per call)."""
    x = torch.rand(4, 3, 40, 30, generator=gen(24))  # kernels 3 x 3 (20 x 16 would be 1 x 1)
    out = gaussian_blur(x, gen(25), p=1.0, same_sigma=same_sigma)
    g = gen(25)
    torch.rand(1, generator=g)  # the apply decision
    sigma = torch.rand(1 if same_sigma else 4, generator=g) + 0.15
    torch.testing.assert_close(out, _blur_with_sigma(x, sigma.expand(4)))
    per_image = [_blur_with_sigma(x[i : i + 1], sigma[:1]) for i in range(4)]
    assert all(torch.allclose(out[i : i + 1], per_image[i]) for i in range(4)) == same_sigma


def test_strong_augment_order_and_reproducibility():
    x = torch.rand(2, 3, 24, 20, generator=gen(9))
    g = gen(10)
    state = g.get_state()
    out = strong_augment(x, g)
    g2 = torch.Generator()
    g2.set_state(state)
    expect = gaussian_blur(color_jitter(x, g2), g2)  # jitter, then blur, same draws
    assert torch.equal(out, expect)
    g.set_state(state)
    assert torch.equal(strong_augment(x, g), out)


# --------------------------------------------------------------------------- MIC masking


def test_block_mask_ratio_and_blocks():
    m = block_mask((64, 128, 192), gen(11), block_size=16, ratio=0.7)
    assert m.shape == (64, 1, 128, 192) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # 64 * 96 blocks, each kept with probability 0.3: standard error of the mean 0.006
    assert abs(m.mean().item() - 0.3) < 0.02
    blocks = m.view(64, 1, 8, 16, 12, 16)
    assert torch.equal(blocks.amax(dim=(3, 5)), blocks.amin(dim=(3, 5)))  # constant per block
    # uneven sizes: round(H / bs) cells, nearest upsampling, at least one cell
    m = block_mask((2, 3, 100, 40), gen(12), block_size=64)
    assert m.shape == (2, 1, 100, 40)
    assert block_mask((1, 10, 10), gen(), block_size=64).shape == (1, 1, 10, 10)


# ------------------------------------------------------------------- feature-distance labels


def _downscale_reference(gt: torch.Tensor, s: int, min_ratio: float, c: int) -> torch.Tensor:
    """DAFormer's algorithm: one-hot with ignore as class c, avg-pool, argmax, thresholds."""
    out = gt.clone()
    out[out == 255] = c
    onehot = torch.nn.functional.one_hot(out, c + 1).permute(0, 3, 1, 2).float()
    ratio, arg = torch.nn.functional.avg_pool2d(onehot, s).max(dim=1)
    arg[arg == c] = 255
    arg[ratio < min_ratio] = 255
    return arg


def test_downscale_label_ratio():
    lab = torch.tensor(
        [
            [
                [1, 1, 2, 2, 4],
                [1, 1, 2, 0, 4],
                [3, 3, 255, 255, 4],
                [5, 5, 255, 7, 4],
                [9, 9, 9, 9, 9],
            ]
        ]
    )
    out = downscale_label_ratio(lab, 2, 0.75, num_classes=19)
    # cells: all 1 -> 1; 3/4 class 2 -> 2; 2/4 each -> ignore; majority ignore -> ignore
    assert out.tolist() == [[[1, 2], [255, 255]]]
    assert downscale_label_ratio(lab, 2, 0.5, 19).tolist() == [[[1, 2], [3, 255]]]
    assert downscale_label_ratio(lab.unsqueeze(1), 2, 0.75, 19).shape == (1, 1, 2, 2)
    rnd = torch.randint(0, 4, (3, 33, 47), generator=gen(13))
    rnd[rnd == 3] = 255
    for s, r in [(2, 0.5), (4, 0.75), (8, 0.3)]:
        assert torch.equal(
            downscale_label_ratio(rnd, s, r, 19), _downscale_reference(rnd, s, r, 19)
        )


# ------------------------------------------------------------- no host sync, reproducibility


def test_every_block_runs_on_meta_tensors():
    """Meta tensors carry shapes only: any value read on the host (``.item()``, ``if t:``,
    ``torch.unique``, ``nonzero``, boolean-mask indexing) raises. So each block passing
    here has static shapes and never synchronises (what CUDA-graph capture needs)."""
    meta = torch.device("meta")
    g = gen()  # random draws on meta ignore the generator's values
    images = torch.empty(2, 3, 64, 48, device=meta)
    labels = torch.empty(2, 64, 48, dtype=torch.long, device=meta)
    logits = torch.empty(2, 19, 64, 48, device=meta)

    student = Tiny().to(meta)
    for bn in ("batch", "ema"):
        teacher = EMATeacher(student, bn=bn)
        teacher.update(student, 3)
        teacher.update(student, torch.tensor(3, device=meta))
        assert teacher(torch.empty(5, 4, device=meta)).shape == (5, 3)

    for per_image in (True, False):
        m = class_mix_masks(labels, g, per_image=per_image)
        assert m.shape == labels.shape and m.dtype == torch.bool
    assert mix(m, images, images).shape == images.shape
    assert mix(m, labels, labels).dtype == torch.long
    for weighting in ("fraction", "per_pixel", "none"):
        pl, pw = pseudo_labels(logits, margins=(15, 12, 3, 4), weighting=weighting)
        assert pl.shape == pw.shape == labels.shape
    assert mix(m, 1.0, pw).shape == labels.shape
    for convention in ("kornia", "torchvision"):
        for random_order in (True, False):
            out = strong_augment(
                images, g, convention=convention, random_order=random_order, per_image=True
            )
            assert out.shape == images.shape and out.device == meta
    for channels in ("rgb", "bgr"):  # MIC's batch draws; DACS's BGR jitter
        out = strong_augment(images, g, same_order_and_sigma=True, channels=channels)
        assert out.shape == images.shape and out.device == meta
    assert gaussian_blur(images, g).shape == images.shape
    assert block_mask(images.shape, g, block_size=16, device=meta).shape == (2, 1, 64, 48)
    assert downscale_label_ratio(labels, 4, 0.75, 19).shape == (2, 16, 12)


def test_generator_state_restores_every_block():
    images = torch.rand(2, 3, 20, 16, generator=gen(14))
    labels = torch.randint(0, 19, (2, 20, 16), generator=gen(15))

    def run(g: torch.Generator) -> list[torch.Tensor]:
        return [
            class_mix_masks(labels, g),
            strong_augment(images, g, per_image=True),
            block_mask(images.shape, g, block_size=4),
        ]

    g = gen(16)
    state = g.get_state()
    first = run(g)
    second = run(g)  # the generator moved on: new draws
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    g.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(run(g), first))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_sync_and_graph_capture():
    """On a GPU: no block synchronises (sync debug mode 'error'), and a step made of all of
    them is captured in one CUDA graph and replays with fresh random draws."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.rand(2, 3, 128, 96, device=dev)
    target = torch.rand(2, 3, 128, 96, device=dev)
    labels = torch.randint(0, 19, (2, 128, 96), device=dev)
    logits = torch.randn(2, 19, 128, 96, device=dev)
    student = Tiny().to(dev)
    teacher = EMATeacher(student)  # BatchNorm on the batch's statistics, as the references
    features = torch.randn(6, 4, device=dev)
    step = torch.zeros((), dtype=torch.long, device=dev)

    def uda_step() -> list[torch.Tensor]:
        teacher.update(student, step)
        step.add_(1)
        predicted = teacher(features)
        pl, pw = pseudo_labels(logits, margins=(15, 12, 0, 0))
        m = class_mix_masks(labels, g, per_image=False)
        img = strong_augment(mix(m, images, target), g, per_image=True)
        return [
            img,
            mix(m, labels, pl),
            mix(m, 1.0, pw),
            img * block_mask(img.shape, g, block_size=16, device=dev),
            downscale_label_ratio(labels, 4, 0.75, 19),
            predicted,
        ]

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        uda_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            uda_step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        outs = uda_step()
    graph.replay()
    first = [o.clone() for o in outs]
    graph.replay()
    assert not torch.equal(first[0], outs[0])  # fresh random draws each replay
    assert int(step) == 5
    assert torch.isfinite(outs[0]).all()
