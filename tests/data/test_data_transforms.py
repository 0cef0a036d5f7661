"""DAFormer transforms: sizes, the cat_max_ratio crop rule, alignment, seeding, margins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbw.data.classes import CITYSCAPES_PALETTE
from gbw.data.transforms import (
    DAFORMER_PSEUDO_MARGINS,
    DEEPLAB_BGR_MEAN,
    HRDA_PSEUDO_MARGINS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    cat_max_ratio_crop_box,
    denormalize,
    margin_mask,
    normalize,
    photometric_distortion,
    pseudo_label_margins,
    random_crop_box,
    recipe_train_transform,
    rescale_size,
    resize,
)

PALETTE = np.array(CITYSCAPES_PALETTE, dtype=np.uint8)


def blocky_label(rng: np.random.Generator, height: int, width: int, block: int = 8) -> np.ndarray:
    blocks = rng.integers(0, 19, size=(height // block + 1, width // block + 1))
    return np.kron(blocks, np.ones((block, block), dtype=np.int64))[:height, :width].astype(
        np.uint8
    )


def test_recipe_sizes():
    assert rescale_size(1914, 1052, (1280, 720)) == (1280, 704)  # GTA5: the long edge binds
    assert rescale_size(1280, 760, (1280, 760)) == (1280, 760)  # SYNTHIA: unchanged
    assert rescale_size(2048, 1024, (1024, 512)) == (1024, 512)  # Cityscapes: halved
    assert recipe_train_transform("synthia").scale == (1280, 760)
    t = recipe_train_transform("gta", seed=1)
    assert (t.crop_size, t.cat_max_ratio, t.crop_tries, t.flip_prob) == ((512, 512), 0.75, 10, 0.5)
    assert not t.photometric
    with pytest.raises(ValueError):
        recipe_train_transform("kitti")


def reference_crop(label, crop_size, seed, ratio=0.75, tries=10):
    """mmseg's rule, written out independently: check, re-draw, at most `tries` times."""
    rng = np.random.default_rng(seed)
    h, w = label.shape
    boxes = []
    for _ in range(tries + 1):
        y = int(rng.integers(0, h - crop_size[0] + 1))
        x = int(rng.integers(0, w - crop_size[1] + 1))
        boxes.append((y, y + crop_size[0], x, x + crop_size[1]))
    for box in boxes[:tries]:
        crop = label[box[0] : box[1], box[2] : box[3]]
        values, counts = np.unique(crop[crop != 255], return_counts=True)
        if len(values) > 1 and counts.max() / counts.sum() < ratio:
            return box
    return boxes[tries]


@pytest.mark.parametrize("seed", range(12))
def test_cat_max_ratio_crop_follows_mmseg_rule(seed):
    label = np.zeros((60, 80), dtype=np.uint8)
    label[10:30, 40:70] = 5  # a small second class: most crops are dominated by class 0
    label[50:, :] = 255
    box = cat_max_ratio_crop_box(label, (24, 24), np.random.default_rng(seed))
    assert box == reference_crop(label, (24, 24), seed)


def test_single_class_label_keeps_the_eleventh_draw():
    label = np.full((50, 50), 3, dtype=np.uint8)
    box = cat_max_ratio_crop_box(label, (10, 10), np.random.default_rng(7))
    rng = np.random.default_rng(7)
    draws = [random_crop_box(50, 50, (10, 10), rng) for _ in range(11)]
    assert box == draws[-1]


@pytest.mark.parametrize("seed", range(6))
def test_image_and_label_stay_aligned_through_resize_crop_flip(seed):
    rng = np.random.default_rng(seed)
    label = blocky_label(rng, 90, 150, block=10)
    image = PALETTE[label]
    t = TrainTransform(scale=(100, 60), crop_size=(48, 48), seed=seed)  # 150x90 -> 100x60
    for _ in range(4):
        img, lbl = t(image, label)
        assert img.shape == (48, 48, 3) and lbl.shape == (48, 48) and img.dtype == np.uint8
        # Where the label is locally uniform, the bilinear image shows that class's exact colour.
        # (The crop's outer ring is skipped: its bilinear neighbours lie outside the crop.)
        uniform = np.zeros_like(lbl, dtype=bool)
        uniform[1:-1, 1:-1] = True
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                uniform[1:-1, 1:-1] &= lbl[1 + dy : 47 + dy, 1 + dx : 47 + dx] == lbl[1:-1, 1:-1]
        assert uniform.mean() > 0.4
        np.testing.assert_array_equal(img[uniform], PALETTE[lbl[uniform]])


def test_without_resize_alignment_is_exact_and_flip_happens():
    rng = np.random.default_rng(0)
    label = blocky_label(rng, 40, 40, block=3)
    image = PALETTE[label]
    t = TrainTransform(crop_size=(16, 16), seed=0)
    flips = 0
    for _ in range(20):
        img, lbl = t(image, label)
        np.testing.assert_array_equal(img, PALETTE[lbl])
        flips += not any(
            np.array_equal(lbl, label[y : y + 16, x : x + 16]) for y in range(25) for x in range(25)
        )
    assert 3 <= flips <= 17


def test_small_images_are_padded_with_zero_and_ignore():
    image = np.full((10, 12, 3), 200, dtype=np.uint8)
    label = np.full((10, 12), 4, dtype=np.uint8)
    img, lbl = TrainTransform(crop_size=(16, 16), flip_prob=0.0, seed=0)(image, label)
    assert img.shape == (16, 16, 3) and lbl.shape == (16, 16)
    assert (img[:10, :12] == 200).all() and (img[10:] == 0).all() and (img[:, 12:] == 0).all()
    assert (lbl[:10, :12] == 4).all() and (lbl[10:] == 255).all() and (lbl[:, 12:] == 255).all()


def test_unlabelled_target_gets_plain_crop():
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    img, lbl = TrainTransform(crop_size=(8, 8), seed=0)(image, None)
    assert lbl is None and img.shape == (8, 8, 3)


def test_seeded_and_reseedable():
    rng = np.random.default_rng(0)
    label = blocky_label(rng, 64, 64)
    image = PALETTE[label]
    a = TrainTransform(crop_size=(20, 20), photometric=True, seed=5)
    b = TrainTransform(crop_size=(20, 20), photometric=True, seed=5)
    outs_a = [a(image, label) for _ in range(5)]
    outs_b = [b(image, label) for _ in range(5)]
    for (ia, la), (ib, lb) in zip(outs_a, outs_b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    a.reseed(5)
    np.testing.assert_array_equal(a(image, label)[0], outs_a[0][0])
    c = TrainTransform(crop_size=(20, 20), photometric=True, seed=6)
    assert any(not np.array_equal(c(image, label)[0], o[0]) for o in outs_a)


def test_photometric_distortion_changes_colours_only():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    outs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 6
    # With every strength at identity, only the 8-bit HSV round trip can change a value.
    same = photometric_distortion(
        image,
        np.random.default_rng(0),
        brightness_delta=0,
        contrast_range=(1, 1),
        saturation_range=(1, 1),
        hue_delta=0,
    )
    assert np.abs(same.astype(int) - image).max() <= 8
    # Label untouched when used in the pipeline.
    label = np.arange(400, dtype=np.uint8).reshape(20, 20) % 19
    _, lbl = TrainTransform(crop_size=None, flip_prob=0.0, photometric=True, seed=0)(image, label)
    np.testing.assert_array_equal(lbl, label)


def test_eval_transform_resizes_image_only():
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    label = np.ones((20, 40), dtype=np.uint8)
    img, lbl = EvalTransform(scale=(20, 10))(image, label)
    assert img.shape == (10, 20, 3) and lbl.shape == (20, 40)


def test_margin_masks():
    mask = margin_mask(10, 12, (2, 3, 1, 4))
    expected = np.zeros((10, 12), dtype=bool)
    expected[2:7, 1:8] = True
    np.testing.assert_array_equal(mask, expected)
    assert margin_mask(5, 5, (0, 0, 0, 0)).all()  # [-0:] would have cleared everything
    assert DAFORMER_PSEUDO_MARGINS == (15, 120, 0, 0) and HRDA_PSEUDO_MARGINS == (30, 240, 30, 30)
    m = pseudo_label_margins(512, 512)
    assert m.dtype == torch.bool and m.shape == (512, 512)
    assert not m[:15].any() and not m[-120:].any() and m[15:-120].all()
    with pytest.raises(ValueError):
        margin_mask(4, 4, (-1, 0, 0, 0))


def test_normalize_round_trip_and_formulas():
    x = torch.rand(2, 3, 5, 6)
    y = normalize(x)
    expected = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(denormalize(y), x)
    d = normalize(x, DEEPLAB_BGR_MEAN, (1, 1, 1), value_scale=255, bgr=True)
    torch.testing.assert_close(d[:, 0], x[:, 2] * 255 - DEEPLAB_BGR_MEAN[0])  # B first
    torch.testing.assert_close(d[:, 2], x[:, 0] * 255 - DEEPLAB_BGR_MEAN[2])
    back = denormalize(d, DEEPLAB_BGR_MEAN, (1, 1, 1), value_scale=255, bgr=True)
    torch.testing.assert_close(back, x)


@pytest.mark.parametrize("factor", [1.5, 2.0, 0.75])
def test_label_is_sampled_where_the_image_is(factor):
    """The image's bilinear sampling point and the label's source pixel agree within half a pixel
    (mmcv's INTER_NEAREST is off by up to a full half pixel more, which this catches)."""
    width = 60
    ramp = (np.arange(width) * 4).astype(np.uint8)  # image value = 4 * source column
    image = np.repeat(np.repeat(ramp[None, :, None], 3, axis=2), 4, axis=0)
    label = np.repeat(np.arange(width, dtype=np.uint8)[None, :], 4, axis=0)  # label = column
    out_w = int(width / factor)
    img, lbl = resize(image, label, (out_w, 4))
    sample_point = img[1, 1:-1, 0].astype(float) / 4  # where bilinear sampled (interior)
    source_column = lbl[1, 1:-1].astype(float)
    assert np.abs(source_column - sample_point).max() <= 0.5 + 0.125 + 1e-6
