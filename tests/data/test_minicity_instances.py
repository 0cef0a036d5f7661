"""MiniCity v2 instance maps: the panoptic convention, occlusion, the 16-bit PNG format, the
dataset's ``with_panoptic`` samples through the training transform, and thin strokes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gbw.data.classes import IGNORE_INDEX, THING_CLASSES
from gbw.data.io import read_gray, read_png_unchanged
from gbw.data.minicity import SIZES, MiniCity, ensure_minicity
from gbw.data.minicity.domains import SOURCE, TARGET
from gbw.data.minicity.geometry import MIN_STROKE_PX, Camera, Canvas, thick
from gbw.data.minicity.panoptic import (
    LABEL_DIVISOR,
    VOID,
    VOID_CODE,
    decode_png16,
    encode_png16,
    from_transform_code,
    panoptic_from_instances,
    semantic_of,
    to_transform_code,
)
from gbw.data.minicity.scene import (
    C,
    Look,
    draw_person,
    draw_pole,
    draw_two_wheeler,
    draw_vehicle,
    render,
)
from gbw.data.minicity.stats import thin_pixels
from gbw.data.minicity.textures import texture_bank
from gbw.data.transforms import TrainTransform

HW = (SIZES["default"].height, SIZES["default"].width)
THINGS = np.array(THING_CLASSES)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_minicity(tmp_path_factory.mktemp("mc"), seed=0, size="quick", workers=1)


def check_convention(label: np.ndarray, pan: np.ndarray, consecutive: bool = True) -> None:
    """Every rule of the panoptic convention, on one (label, panoptic) pair. Generated maps
    number the instances of a class 1..n; a crop may drop some (``consecutive=False``)."""
    label = np.asarray(label).astype(np.int64)
    pan = np.asarray(pan)
    assert pan.dtype == np.int64 and pan.shape == label.shape
    # The semantic part of every id is the label; void is 255 * 1000 exactly.
    assert np.array_equal(semantic_of(pan), label)
    assert (pan[label == IGNORE_INDEX] == VOID).all()
    k = pan % LABEL_DIVISOR
    thing = np.isin(label, THINGS)
    # Stuff = trainId * 1000; every thing pixel belongs to exactly one instance (k >= 1).
    assert (k[~thing] == 0).all()
    assert (k[thing] >= 1).all()
    # Within a class, the instance numbers are 1..n (unique ids per class).
    if consecutive:
        for c in np.unique(label[thing]):
            ks = np.unique(k[label == c])
            assert np.array_equal(ks, np.arange(1, ks.size + 1)), (c, ks)


# ---- the convention on rendered scenes and on disk ----------------------------------------


@pytest.mark.parametrize("domain", [SOURCE, TARGET], ids=["source", "target"])
def test_rendered_scenes_follow_the_panoptic_convention(domain) -> None:
    n_instances = 0
    for i in range(12):
        _, label, pan = render(domain, np.random.default_rng([0, 5, i]), HW)
        check_convention(label, pan)
        n_instances += int((np.unique(pan) % LABEL_DIVISOR > 0).sum())
    assert n_instances > 50  # the scenes do contain things


def test_files_on_disk_follow_the_convention_and_match_the_labels(quick: Path) -> None:
    seen_void = 0
    for split in ("source_train", "target_val"):
        ds = MiniCity(split, quick.parent, size="quick", with_panoptic=True)
        for i in range(len(ds)):
            s = ds[i]
            assert s["panoptic"].dtype == torch.int64
            check_convention(s["label"].numpy(), s["panoptic"].numpy())
            seen_void += int((s["panoptic"] == VOID).sum())
        raw = read_png_unchanged(ds.panoptic_path(0))
        assert raw.dtype == np.uint16 and raw.shape == HW  # the documented on-disk format
    assert seen_void > 0  # the target's bonnet


def test_panoptic_equals_the_in_memory_render(quick: Path) -> None:
    ds = MiniCity("target_val", quick.parent, size="quick", with_panoptic=True)
    _, label, pan = render(TARGET, np.random.default_rng([0, 3, 1]), HW)
    assert np.array_equal(ds[1]["panoptic"].numpy(), pan)
    assert np.array_equal(read_gray(ds.samples[1].label), label)


# ---- instances of hand-placed objects -----------------------------------------------------


def _canvas() -> tuple[Canvas, Camera, Look]:
    look = Look(SOURCE.style, np.random.default_rng(0), texture_bank())
    cv = Canvas.empty(*HW, IGNORE_INDEX)
    cv.label[:] = C["road"]  # a stuff background
    return cv, Camera(f=170.0, cx=96.0, hy=40.0, h=1.5), look


def test_occluded_instances_keep_only_their_visible_pixels() -> None:
    cv, cam, look = _canvas()
    draw_person(cv, cam, 0.0, 12.0, look, np.random.default_rng(1))
    alone = cv.inst == 1
    cv2, *_ = _canvas()
    draw_person(cv2, cam, 0.0, 12.0, look, np.random.default_rng(1))  # the same person ...
    draw_person(cv2, cam, 0.15, 8.0, look, np.random.default_rng(2))  # ... behind a nearer one
    pan = panoptic_from_instances(cv2.label, cv2.inst)
    check_convention(cv2.label, pan)
    far, near = pan == C["person"] * 1000 + 1, pan == C["person"] * 1000 + 2
    assert near.sum() > 0 and 0 < far.sum() < alone.sum()  # partly hidden
    assert not (far & near).any()
    assert np.array_equal(far, alone & ~near)  # exactly its unoccluded pixels


def test_rider_and_two_wheeler_are_two_instances_vehicles_one() -> None:
    cv, cam, look = _canvas()
    draw_two_wheeler(cv, cam, -1.0, 9.0, False, True, look, np.random.default_rng(3))
    draw_vehicle(cv, cam, "car", 2.5, 10.0, True, look, np.random.default_rng(4), (1.8, 1.5, 4.4))
    pan = panoptic_from_instances(cv.label, cv.inst)
    check_convention(cv.label, pan)
    ids = set(np.unique(pan).tolist())
    # the rider, its bicycle and the car (end face + flank): one instance each, nothing else
    assert ids == {0, C["rider"] * 1000 + 1, C["car"] * 1000 + 1, C["bicycle"] * 1000 + 1}


def test_panoptic_from_instances_renumbers_and_rejects_missing_ids() -> None:
    label = np.array([[13, 13, 13, 0], [11, 11, 255, 2]], np.uint8)
    inst = np.array([[7, 7, 3, 0], [9, 4, 0, 0]], np.int32)
    pan = panoptic_from_instances(label, inst)
    # car instances 3 and 7 -> 1, 2 (drawing order); person 4 and 9 -> 1, 2
    assert pan.tolist() == [[13002, 13002, 13001, 0], [11002, 11001, VOID, 2000]]
    with pytest.raises(ValueError, match="without an instance number"):
        panoptic_from_instances(label, np.zeros_like(inst))


# ---- the on-disk format and the transform code --------------------------------------------


def test_png16_format_round_trips_and_rejects_bad_files(tmp_path: Path) -> None:
    pan = np.array([[0, 13001, 18999], [VOID, 10000, 255000]], np.int64)
    enc = encode_png16(pan)
    assert enc.dtype == np.uint16 and enc[1, 0] == VOID_CODE
    assert np.array_equal(decode_png16(enc), pan)
    with pytest.raises(ValueError, match="16-bit"):
        decode_png16(enc.astype(np.uint8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="has class 19"):
        decode_png16(np.array([[19001]], np.uint16), tmp_path / "x.png")
    with pytest.raises(ValueError, match="out of range"):
        encode_png16(np.array([[70000]], np.int64))
    assert np.array_equal(from_transform_code(to_transform_code(pan)), pan)
    assert from_transform_code(np.zeros((1, 1), np.uint16))[0, 0] == VOID  # padding is void


def test_transform_keeps_label_and_panoptic_consistent(quick: Path) -> None:
    # upscale (nearest for label and panoptic), crop larger than the image height (padding),
    # and always flip: every geometric step of TrainTransform.apply at once
    tf = TrainTransform(scale=(288, 144), crop_size=(160, 200), flip_prob=1.0, seed=0)
    ds = MiniCity("source_train", quick.parent, size="quick", with_panoptic=True, transform=tf)
    plain = MiniCity("source_train", quick.parent, size="quick", with_panoptic=True)
    for i in range(4):
        s = ds[i]
        label, pan = s["label"].numpy(), s["panoptic"].numpy()
        assert label.shape == pan.shape == (160, 200)
        check_convention(label, pan, consecutive=False)
        assert (pan[144:] == VOID).all() and (label[144:] == IGNORE_INDEX).all()  # padded rows
        assert set(np.unique(pan).tolist()) <= set(np.unique(plain[i]["panoptic"]).tolist()) | {
            VOID
        }


def test_with_panoptic_needs_labels_and_a_mask_aware_transform(quick: Path) -> None:
    with pytest.raises(ValueError, match="needs with_labels=True"):
        MiniCity("target_train", quick.parent, size="quick", with_panoptic=True)
    assert (
        "panoptic"
        in MiniCity(
            "target_train", quick.parent, size="quick", with_labels=True, with_panoptic=True
        )[0]
    )
    with pytest.raises(TypeError, match="apply"):
        MiniCity(
            "source_val",
            quick.parent,
            size="quick",
            with_panoptic=True,
            transform=lambda image, label: (image, label),
        )
    assert "panoptic" not in MiniCity("source_val", quick.parent, size="quick")[0]


# ---- thin structures ----------------------------------------------------------------------


def test_strokes_are_at_least_two_pixels_wide() -> None:
    px = np.array([0.01, 0.05, 0.3])
    assert np.allclose(2 * thick(0.04, px), np.maximum(0.04, MIN_STROKE_PX * px))
    assert MIN_STROKE_PX >= 2
    cv, cam, look = _canvas()
    # a plain pole 60 m away: 0.15 m real width is ~0.4 px, drawn 2 px wide
    draw_pole(cv, cam, 3.0, 60.0, 1, "plain", look, np.random.default_rng(5))
    pole = cv.label == C["pole"]
    widths = pole.sum(1)[pole.any(1)]
    assert widths.size >= 5 and widths.min() >= 2
    assert thin_pixels(pole).sum() == 0


def test_thin_pixels_finds_one_pixel_parts() -> None:
    m = np.zeros((6, 6), bool)
    m[1:5, 1:3] = True  # 2 px wide: kept
    m[0, 4] = m[1:4, 5] = True  # 1 px wide: thin
    thin = thin_pixels(m)
    assert thin.sum() == 4 and not thin[1:5, 1:3].any()
