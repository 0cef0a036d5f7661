"""GTA5, SYNTHIA and Cityscapes datasets on fake trees in the real layouts, pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbw.data.cityscapes import Cityscapes
from gbw.data.classes import SYNTHIA_13, SYNTHIA_16
from gbw.data.gta import GTA5
from gbw.data.prepare import prepare_dataset
from gbw.data.registry import dataset_class
from gbw.data.synthia import Synthia
from gbw.data.transforms import HRDA_PSEUDO_MARGINS, TrainTransform, margin_mask


def test_id_tables_are_the_recipes_tables(fake):
    assert Cityscapes.ID_TO_TRAIN_ID == fake.CITYSCAPES_TABLE
    assert GTA5.ID_TO_TRAIN_ID == fake.CITYSCAPES_TABLE
    assert Synthia.ID_TO_TRAIN_ID == fake.SYNTHIA_TABLE
    # Full lookup tables agree with the dicts on every possible raw value.
    lut = Synthia.lookup_table()
    assert lut.shape == (65536,)
    assert all(lut[i] == fake.SYNTHIA_TABLE.get(i, 255) for i in range(300))
    assert set(np.unique(lut[300:]).tolist()) == {255}


def test_evaluation_subsets():
    assert Synthia.EVAL_CLASSES == {"16": SYNTHIA_16, "13": SYNTHIA_13}
    assert len(SYNTHIA_16) == 16 and len(SYNTHIA_13) == 13
    assert GTA5.EVAL_CLASSES["19"] == tuple(range(19))


@pytest.mark.parametrize(
    ("name", "builder", "table"),
    [("gta", "gta", "CITYSCAPES_TABLE"), ("synthia", "synthia", "SYNTHIA_TABLE")],
)
def test_source_labels_map_pixel_by_pixel(tmp_path, fake, name, builder, table):
    raw = getattr(fake, builder)(tmp_path / name)
    ds = dataset_class(name)(tmp_path / name)
    assert len(ds) == 3
    assert [s.name for s in ds.samples] == sorted(raw)
    for i in range(len(ds)):
        sample = ds[i]
        expected = fake.expected(raw[sample["name"]], getattr(fake, table))
        assert sample["label"].dtype == torch.int64
        np.testing.assert_array_equal(sample["label"].numpy(), expected)
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 24, 40)
        assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0


def test_synthia_reads_class_from_first_channel_and_instance_from_second(tmp_path, fake):
    cls_ids = np.array([[3, 21], [12, 16]], dtype=np.uint16)
    inst = np.array([[4, 1000], [3, 65535]], dtype=np.uint16)  # 4 and 3 are valid class ids too
    path = tmp_path / "GT" / "LABELS" / "0000000.png"
    fake.write_synthia_label(path, cls_ids, inst)
    np.testing.assert_array_equal(Synthia.read_raw_label(path), cls_ids)
    np.testing.assert_array_equal(Synthia.read_instance_ids(path), inst)
    np.testing.assert_array_equal(
        Synthia.to_train_ids(Synthia.read_raw_label(path)), [[0, 3], [17, 255]]
    )


def test_synthia_rejects_8bit_single_channel_labels(tmp_path, fake):
    path = tmp_path / "x.png"
    fake.save_gray(path, np.zeros((3, 3)))
    with pytest.raises(ValueError) as err:
        Synthia.read_raw_label(path)
    assert str(err.value) == (
        f"{path}: expected a 16-bit 3-channel PNG (class id in the first channel), "
        "got a 1-channel 8-bit image"
    )


def test_cityscapes_splits_pixel_by_pixel_and_target_without_labels(tmp_path, fake):
    raw = fake.cityscapes(tmp_path / "cs")
    train = Cityscapes(tmp_path / "cs", "train")
    val = Cityscapes(tmp_path / "cs", "val")
    assert (len(train), len(val)) == (3, 2)
    for ds in (train, val):
        for i in range(len(ds)):
            s = ds[i]
            assert s["name"].startswith(f"leftImg8bit/{ds.split}/")
            expected = fake.expected(raw[s["name"]], fake.CITYSCAPES_TABLE)
            np.testing.assert_array_equal(s["label"].numpy(), expected)
    target = Cityscapes(tmp_path / "cs", "train", with_labels=False)
    assert "label" not in target[0]


def test_prepared_labels_are_the_fast_path_and_identical(tmp_path, fake):
    fake.gta(tmp_path / "gta")
    before = [GTA5(tmp_path / "gta")[i]["label"] for i in range(3)]
    prepare_dataset("gta", tmp_path / "gta", progress=False)
    ds = GTA5(tmp_path / "gta")
    assert all(s.label.name.endswith("_labelTrainIds.png") for s in ds.samples)
    for i in range(3):
        assert torch.equal(ds[i]["label"], before[i])


def test_wrong_root_names_root_and_expected_folders(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        GTA5(tmp_path / "nowhere")
    assert str(err.value) == (
        f"{tmp_path / 'nowhere'}: folder not found; expected a GTA5 root with the sub-folders "
        "images/, labels/ (layout data/gta/images/<id>.png and data/gta/labels/<id>.png)"
    )
    (tmp_path / "syn" / "RGB").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        Synthia(tmp_path / "syn")
    assert str(err.value) == (
        f"{tmp_path / 'syn'}: not a SYNTHIA-RAND-CITYSCAPES root; missing sub-folder(s) "
        "GT/LABELS/ (expected RGB/, GT/LABELS/; layout data/synthia/RGB/<id>.png and "
        "data/synthia/GT/LABELS/<id>.png)"
    )


def test_missing_label_fails_at_construction(tmp_path, fake):
    fake.gta(tmp_path / "gta")
    (tmp_path / "gta" / "labels" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        GTA5(tmp_path / "gta")
    root = tmp_path / "gta"
    assert str(err.value) == (
        f"{root / 'labels' / '00002.png'}: label file not found (expected for image "
        f"{root / 'images' / '00002.png'}); 1 of 3 labels are missing, run "
        f"`gbw data check gta --root {root}` for the full list"
    )
    assert len(GTA5(root, with_labels=False)) == 3  # unlabelled use still works


def test_size_mismatch_fails_when_loading(tmp_path, fake):
    fake.gta(tmp_path / "gta")
    label = tmp_path / "gta" / "labels" / "00001.png"
    fake.save_palette(label, np.zeros((23, 40)))
    with pytest.raises(ValueError) as err:
        GTA5(tmp_path / "gta")[0]
    assert str(err.value) == f"{label}: size 40x23 does not match image 40x24"


def find_crop(original: np.ndarray, crop: np.ndarray) -> tuple[int, int, bool]:
    """Where ``crop`` (maybe mirrored) sits in ``original``: (y0, x0, flipped)."""
    h, w = crop.shape[:2]
    for y0 in range(original.shape[0] - h + 1):
        for x0 in range(original.shape[1] - w + 1):
            window = original[y0 : y0 + h, x0 : x0 + w]
            for flipped in (False, True):
                if np.array_equal(window[:, ::-1] if flipped else window, crop):
                    return y0, x0, flipped
    raise AssertionError("crop not found in the original image")


def test_hrda_margin_mask_is_cropped_with_the_image(tmp_path, fake):
    fake.cityscapes(tmp_path / "cs", counts={"train": 1}, size=(64, 48))
    root = tmp_path / "cs"
    ds = Cityscapes(root, "train", with_labels=False, pseudo_margins=HRDA_PSEUDO_MARGINS)
    np.testing.assert_array_equal(
        ds[0]["valid_pseudo_mask"].numpy(), margin_mask(48, 64, (30, 240, 30, 30))
    )
    # With a random crop and flip, the mask must be cut from the same place as the image.
    transform = TrainTransform(crop_size=(16, 16), flip_prob=0.5, seed=3)
    ds = Cityscapes(
        root, "train", with_labels=False, pseudo_margins=(5, 10, 3, 4), transform=transform
    )
    original = ds.read_image(ds.samples[0].image)
    reference = margin_mask(48, 64, (5, 10, 3, 4))
    flips = set()
    for _ in range(8):
        s = ds[0]
        crop = (s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        y0, x0, flipped = find_crop(original, crop)
        expected = reference[y0 : y0 + 16, x0 : x0 + 16]
        expected = expected[:, ::-1] if flipped else expected
        np.testing.assert_array_equal(s["valid_pseudo_mask"].numpy(), expected)
        flips.add(flipped)
    assert flips == {False, True}


def test_limit_keeps_first_images(tmp_path, fake):
    fake.synthia(tmp_path / "syn")
    ds = Synthia(tmp_path / "syn", limit=2)
    assert [s.name for s in ds.samples] == ["RGB/0000000.png", "RGB/0000001.png"]
