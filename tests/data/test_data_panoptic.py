"""Panoptic data: `gbw data prepare/check --panoptic` on small fake SYNTHIA and Cityscapes trees
with instances (Cityscapes against cityscapesscripts' own createPanopticImgs), broken files
with their messages, the readers' crops and flips, instance targets and their collate."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gbw.data.check import check_dataset
from gbw.data.cityscapes import Cityscapes
from gbw.data.commands import register
from gbw.data.panoptic import (
    VOID,
    collate_panoptic,
    decode_png16,
    encode_png16,
    from_transform_code,
    instance_targets,
    panoptic_from_instances,
    read_panoptic,
    to_transform_code,
)
from gbw.data.prepare import load_class_stats, prepare_dataset
from gbw.data.sampling import RareClassDataset
from gbw.data.synthia import Synthia
from gbw.data.transforms import TrainTransform

SIZE = (40, 24)  # (W, H)
D = 1000


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gbw")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


# --- fake trees with instances -------------------------------------------------------------

# SYNTHIA ids: 3 road, 2 building, 1 sky, 10 pedestrian, 8 car, 11 bicycle, 16 terrain
# (ignored by gbw); Cityscapes labelIds: 7 road, 11 building, 23 sky, 24 person, 26 car,
# 33 bicycle, 4 static and 29 caravan (both ignoreInEval)


def synthia_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w, h = SIZE
    cls = np.full((h, w), 3, dtype=np.uint16)
    cls[:8] = 1
    cls[8:12, :20] = 2
    cls[0, 0:3] = 16
    inst = rng.integers(0, 50, size=(h, w)).astype(np.uint16)  # noise on stuff: ignored
    for cid, (y, x), iid in (
        (8, (12, 2), 7),
        (8, (14, 20), 3),
        (10, (16, 30), 900),
        (11, (4, 33), 7),
    ):
        cls[y : y + 5, x : x + 6] = cid
        inst[y : y + 5, x : x + 6] = iid
    return cls, inst


def expected_synthia(cls: np.ndarray, inst: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """EDAPS's SYNTHIA rule, pixel by pixel: stuff one segment, each (thing class, instance
    id) pair one instance numbered in increasing instance id per class."""
    out = np.full(cls.shape, VOID, dtype=np.int64)
    for (y, x), c in np.ndenumerate(cls):
        t = table.get(int(c), 255)
        if t == 255:
            continue
        if t < 11:
            out[y, x] = t * D
        else:
            ids = sorted({int(i) for i in inst[table_mask(cls, table, t)]})
            out[y, x] = t * D + ids.index(int(inst[y, x])) + 1
    return out


def table_mask(cls: np.ndarray, table: dict[int, int], t: int) -> np.ndarray:
    return np.vectorize(lambda c: table.get(int(c), 255) == t)(cls)


def build_synthia(root, fake, n: int = 3) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        stem = f"{i:07d}"
        fake.save_rgb(
            root / "RGB" / f"{stem}.png", rng.integers(0, 256, (SIZE[1], SIZE[0], 3), np.uint8)
        )
        cls, inst = synthia_scene(rng)
        fake.write_synthia_label(root / "GT" / "LABELS" / f"{stem}.png", cls, inst)
        out[f"RGB/{stem}.png"] = (cls, inst)
    return out


def cityscapes_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds uint8, instanceIds uint16) as json2labelImg / json2instanceImg draw them."""
    w, h = SIZE
    label = np.full((h, w), 7, dtype=np.uint8)
    label[:6] = 23
    label[6:10, :25] = 11
    label[0:2, 30:40] = 4  # static: ignored in evaluation
    inst = label.astype(np.uint16)
    objects = [(26, 0, (12, 2)), (26, 1, (12, 16)), (24, 0, (18, 30)), (33, 5, (3, 2))]
    for lab, i, (y, x) in objects:
        label[y : y + 4, x : x + 6] = lab
        inst[y : y + 4, x : x + 6] = lab * 1000 + i
    label[20:24, 0:8] = 26  # a car group: crowd, stored as the labelId
    inst[20:24, 0:8] = 26
    label[20:24, 10:14] = 29  # a caravan instance: hasInstances but ignoreInEval -> void
    inst[20:24, 10:14] = 29000
    label[23, 39] = 24  # a one-pixel person
    inst[23, 39] = 24007
    return label, inst


def save_uint16(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path)  # 16-bit grey, as Cityscapes ships them


def build_cityscapes(root, fake, counts=None) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (counts or {"train": 2, "val": 2}).items():
        for i in range(n):
            city = ("aachen", "bochum")[i % 2]
            stem = f"{city}_{i:06d}_000019"
            fake.save_rgb(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                rng.integers(0, 256, (SIZE[1], SIZE[0], 3), np.uint8),
            )
            label, inst = cityscapes_scene(rng)
            gt = root / "gtFine" / split / city
            fake.save_gray(gt / f"{stem}_gtFine_labelIds.png", label)
            save_uint16(gt / f"{stem}_gtFine_instanceIds.png", inst)
            out[(split, stem)] = (label, inst)
    return out


# --- SYNTHIA ------------------------------------------------------------------------------


def test_synthia_prepare_panoptic_writes_the_reference_rule(tmp_path, fake):
    root = tmp_path / "syn"
    raw = build_synthia(root, fake)
    before = prepare_dataset("synthia", root, progress=False)
    _, counts = load_class_stats(root, "synthia")
    (report,) = prepare_dataset("synthia", root, progress=False, panoptic=True)
    assert report.failures == [] and report.converted == 3  # the maps were missing
    np.testing.assert_array_equal(load_class_stats(root, "synthia")[1], counts)  # RCS unchanged
    assert before[0].converted == 3
    for pair in Synthia.scan(root, "train").pairs:
        cls, inst = raw[pair.name]
        expected = expected_synthia(cls, inst, fake.SYNTHIA_TABLE)
        got = read_panoptic(pair.prepared_panoptic)
        np.testing.assert_array_equal(got, expected)
        assert {13 * D + 1, 13 * D + 2, 11 * D + 1, 18 * D + 1} <= set(np.unique(got).tolist())
        assert got[13, 3] == 13 * D + 2 and got[15, 21] == 13 * D + 1  # instance id 7 > 3
    # a second run does no work; the panoptic files do not show up as labels
    (again,) = prepare_dataset("synthia", root, progress=False, panoptic=True)
    assert (again.converted, again.reused) == (0, 3)
    assert Synthia.scan(root, "train").orphan_labels == []
    assert check_dataset("synthia", root, subset=True, expected_size=SIZE, panoptic=True).ok


def test_panoptic_from_instances_numbers_per_class():
    cls = np.array([[13, 13, 13, 0], [11, 11, 255, 0]])
    inst = np.array([[9, 2, 2, 5], [9, 4, 1, 5]])
    np.testing.assert_array_equal(
        panoptic_from_instances(cls, inst),
        [[13 * D + 2, 13 * D + 1, 13 * D + 1, 0], [11 * D + 2, 11 * D + 1, VOID, 0]],
    )


def test_synthia_reader_crops_and_flips_panoptic_with_the_label(tmp_path, fake):
    root = tmp_path / "syn"
    build_synthia(root, fake)
    prepare_dataset("synthia", root, progress=False, panoptic=True)
    full = Synthia(root, with_panoptic=True)
    t = TrainTransform(crop_size=(16, 16), cat_max_ratio=1.0, flip_prob=0.5, seed=3)
    ds = Synthia(root, with_panoptic=True, transform=t)
    flipped = 0
    for _ in range(6):
        sample = ds[1]
        pan, label = sample["panoptic"], sample["label"]
        assert pan.dtype == torch.int64 and pan.shape == label.shape == (16, 16)
        # the label is the panoptic map's classes, pixel for pixel
        assert torch.equal(torch.where(pan == VOID, 255, pan // D), label)
        # and the map is a crop of the full one (maybe mirrored)
        whole = full[1]["panoptic"].numpy()
        hits = [
            (y, x, f)
            for f in (False, True)
            for y in range(whole.shape[0] - 15)
            for x in range(whole.shape[1] - 15)
            if np.array_equal((whole[:, ::-1] if f else whole)[y : y + 16, x : x + 16], pan.numpy())
        ]
        assert hits
        flipped += any(f for *_, f in hits) and not any(not f for *_, f in hits)
    assert flipped > 0
    # a crop larger than the image pads the panoptic map with void
    big = Synthia(
        root, with_panoptic=True, transform=TrainTransform(crop_size=(32, 48), flip_prob=0)
    )
    sample = big[0]
    assert (sample["panoptic"][24:] == VOID).all() and (sample["label"][24:] == 255).all()
    assert (sample["panoptic"][:, 40:] == VOID).all()
    # rare-class sampling re-crops the same decoded arrays, panoptic map included
    rcs = RareClassDataset(ds, min_pixels=5, min_crop_ratio=1.0)
    sample = rcs[(0, 13)]
    assert "panoptic" in sample and int(sample["rcs_class"]) == 13


def test_reader_needs_prepared_maps_and_labels(tmp_path, fake):
    root = tmp_path / "syn"
    build_synthia(root, fake)
    with pytest.raises(
        FileNotFoundError,
        match=r"0000000_panopticTrainIds\.png: panoptic map "
        r"not found \(3 of 3 missing\); run `gbw data prepare synthia --panoptic",
    ):
        Synthia(root, with_panoptic=True)
    prepare_dataset("synthia", root, progress=False, panoptic=True)
    with pytest.raises(ValueError, match="needs with_labels=True"):
        Synthia(root, with_panoptic=True, with_labels=False)
    from gbw.data.gta import GTA5

    fake.gta(tmp_path / "gta")
    with pytest.raises(ValueError, match="GTA5 has no instance annotations"):
        GTA5(tmp_path / "gta", with_panoptic=True)


# --- Cityscapes ---------------------------------------------------------------------------


def test_cityscapes_prepare_panoptic_equals_create_panoptic_imgs(tmp_path, fake):
    """Each segment of cityscapesscripts' own converter (with trainIds) has the gbw id its
    rules give: instance labelId*1000+i -> trainId*1000 + i+1, crowd and stuff trainId*1000,
    pixels outside every segment void."""
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    root = tmp_path / "cs"
    build_cityscapes(root, fake)
    reports = prepare_dataset("cityscapes", root, progress=False, panoptic=True)
    assert all(r.failures == [] for r in reports)
    out = tmp_path / "official"
    out.mkdir()
    convert2panoptic(str(root / "gtFine"), str(out), useTrainId=True, setNames=["train", "val"])
    checked = 0
    for split in ("train", "val"):
        meta = json.loads((out / f"cityscapes_panoptic_{split}_trainId.json").read_text())
        for ann in meta["annotations"]:
            png = out / f"cityscapes_panoptic_{split}_trainId" / ann["file_name"]
            rgb = np.asarray(Image.open(png)).astype(np.int64)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
            city = ann["image_id"].split("_")[0]
            ours = read_panoptic(
                root / "gtFine" / split / city / f"{ann['image_id']}_gtFine_panopticTrainIds.png"
            )
            expected = np.full(ids.shape, VOID, dtype=np.int64)
            for seg in ann["segments_info"]:
                t, sid = seg["category_id"], seg["id"]
                k = sid % 1000 + 1 if sid >= 1000 and not seg["iscrowd"] else 0
                expected[ids == sid] = t * D + k
            np.testing.assert_array_equal(ours, expected)
            assert {13 * D + 1, 13 * D + 2, 13 * D, 11 * D + 1, 18 * D + 6} <= set(
                np.unique(ours).tolist()
            )
            assert ours[22, 12] == VOID and ours[23, 39] == 11 * D + 8  # caravan; the 1-px person
            checked += 1
    assert checked == 4
    assert check_dataset("cityscapes", root, subset=True, expected_size=SIZE, panoptic=True).ok


def test_cityscapes_prepare_reports_broken_instance_files(tmp_path, fake, capsys):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "cs"
    build_cityscapes(root, fake, counts={"train": 4, "val": 1})
    gt = root / "gtFine" / "train"
    missing = gt / "bochum" / "bochum_000001_000019_gtFine_instanceIds.png"
    missing.unlink()
    unknown = gt / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"
    _, inst = cityscapes_scene(np.random.default_rng(1))
    inst[0, 0] = 40  # no such labelId
    save_uint16(unknown, inst)
    other = gt / "aachen" / "aachen_000002_000019_gtFine_instanceIds.png"
    inst = inst.copy()
    inst[0, 0] = 23
    inst[12:16, 2:8] = 24000  # a person where the labelIds say car
    save_uint16(other, inst)
    code = cli(
        "data",
        "prepare",
        "cityscapes",
        "--root",
        str(root),
        "--panoptic",
        "--no-progress",
        "--workers",
        "1",
    )
    out = capsys.readouterr().out
    assert code == 1, out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("error:")]
    assert sorted(lines) == sorted(
        [
            f"error: {missing}: file not found",
            f"error: {unknown}: instance id 40 has no Cityscapes label (labelId 40)",
            f"error: {other}: the classes of its panoptic map differ from the trainId label at "
            "24 pixel(s); the two annotation files do not belong together",
        ]
    )
    assert "class statistics not written" in out


def test_cityscapes_panoptic_needs_cityscapesscripts(tmp_path, fake, monkeypatch, capsys):
    root = tmp_path / "cs"
    build_cityscapes(root, fake, counts={"train": 1, "val": 1})
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)  # not installed
    code = cli("data", "prepare", "cityscapes", "--root", str(root), "--panoptic", "--no-progress")
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'gbw[cityscapes]'" in err and "createPanopticImgs" in err
    assert not list(root.rglob("*_panopticTrainIds.png"))
    code = cli("data", "prepare", "gta", "--root", str(tmp_path), "--panoptic", "--no-progress")
    assert code == 2
    assert "GTA5 has no instance annotations; --panoptic is for synthia and cityscapes" in (
        capsys.readouterr().err
    )


def test_check_reports_broken_panoptic_maps(tmp_path, fake):
    root = tmp_path / "syn"
    build_synthia(root, fake, n=6)
    prepare_dataset("synthia", root, progress=False, panoptic=True)
    labels = root / "GT" / "LABELS"
    truncated = labels / "0000000_panopticTrainIds.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    eight_bit = labels / "0000001_panopticTrainIds.png"
    fake.save_gray(eight_bit, np.zeros((24, 40)))
    small = labels / "0000002_panopticTrainIds.png"
    save_uint16(small, np.zeros((23, 40)))
    bad_class = labels / "0000003_panopticTrainIds.png"
    pan = read_panoptic(bad_class)
    pan[0, 0] = 25 * D + 1
    save_uint16(bad_class, np.where(pan == VOID, 65535, pan))
    wrong = labels / "0000004_panopticTrainIds.png"
    pan = read_panoptic(wrong)
    pan[20:24, :] = 2 * D  # building where the label says road
    save_uint16(wrong, np.where(pan == VOID, 65535, pan))
    (labels / "0000005_panopticTrainIds.png").unlink()
    report = check_dataset("synthia", root, subset=True, expected_size=SIZE)
    assert report.problems == [
        f"{truncated}: cannot decode image (corrupt or truncated file)",
        f"{eight_bit}: expected a single-channel 16-bit panoptic PNG, got a single-channel 8-bit "
        "image; delete it and run `gbw data prepare ... --panoptic` again",
        f"{small}: size 40x23 does not match image 40x24",
        f"{bad_class}: panoptic value 25001 has class 25, expected trainIds 0..18 (or 65535 for "
        "void)",
        f"{wrong}: classes differ from the label at 160 pixel(s); run `gbw data prepare "
        "--panoptic --force` again",
    ]
    assert f"{root}: 5 of 6 train panoptic maps prepared; run `gbw data prepare synthia " in (
        "\n".join(report.notes)
    )
    strict = check_dataset("synthia", root, subset=True, expected_size=SIZE, panoptic=True)
    assert strict.problems[-1] == (
        f"{labels / '0000005_panopticTrainIds.png'}: panoptic map not found (expected for image "
        f"{root / 'RGB' / '0000005.png'}); run `gbw data prepare synthia --panoptic`"
    )


# --- formats, instance targets, collate -----------------------------------------------------


def test_png16_and_transform_codes_round_trip():
    pan = np.array([[0, 13 * D + 1, VOID], [18 * D + 999, 10 * D, 11 * D]], dtype=np.int64)
    code = encode_png16(pan)
    assert code.dtype == np.uint16 and code[0, 2] == 65535
    np.testing.assert_array_equal(decode_png16(code), pan)
    t = to_transform_code(pan)
    assert t[0, 2] == 0 and t[0, 0] == 1  # void is the padding value 0; road is 1
    np.testing.assert_array_equal(from_transform_code(t), pan)


def test_instance_targets_follow_the_reference():
    pan = torch.full((10, 12), 0, dtype=torch.long)  # road
    pan[1:4, 2:7] = 13 * D + 1  # car: rows 1-3, columns 2-6
    pan[5:9, 0:2] = 11 * D + 2  # person
    pan[6:9, 8:11] = 13 * D  # a car crowd region: not an instance
    pan[9, 3:9] = 18 * D + 1  # a one-row bicycle: degenerate box, dropped
    pan[0, 11] = 12 * D + 1  # a one-pixel rider: dropped
    pan[5:7, 4:6] = VOID
    t = instance_targets(pan)
    assert t["ids"].tolist() == [11 * D + 2, 13 * D + 1]
    assert t["classes"].tolist() == [0, 2]  # thing index: person 0, car 2 (trainId - 11)
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 5, 1, 8], [2, 1, 6, 3]]))
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 10, 12)
    assert torch.equal(t["masks"][1].bool(), pan == 13 * D + 1)
    empty = instance_targets(torch.zeros(4, 4, dtype=torch.long))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 4, 4)
    assert empty["classes"].dtype == torch.int64


def test_collate_keeps_variable_instances_as_lists():
    def sample(n: int) -> dict:
        pan = torch.zeros(8, 8, dtype=torch.long)
        for i in range(n):
            pan[2 * i : 2 * i + 2, 0:3] = 13 * D + i + 1  # n cars of 2x3 pixels
        s = {"image": torch.rand(3, 8, 8), "label": torch.zeros(8, 8, dtype=torch.long)}
        s["panoptic"], s["name"] = pan, f"s{n}"
        s["instances"] = instance_targets(pan)
        return s

    batch = collate_panoptic([sample(0), sample(3)])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["panoptic"].shape == (2, 8, 8)
    assert batch["name"] == ["s0", "s3"]
    assert [len(t["boxes"]) for t in batch["instances"]] == [0, 3]
    assert batch["instances"][1]["masks"].shape == (3, 8, 8)


def test_cityscapes_reader(tmp_path, fake):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "cs"
    raw = build_cityscapes(root, fake, counts={"train": 1, "val": 1})
    prepare_dataset("cityscapes", root, progress=False, panoptic=True)
    ds = Cityscapes(root, "val", with_panoptic=True)
    sample = ds[0]
    label, _ = raw[("val", "aachen_000000_000019")]
    assert sample["panoptic"].shape == (24, 40)
    assert torch.equal(
        torch.where(sample["panoptic"] == VOID, 255, sample["panoptic"] // D), sample["label"]
    )
    assert int(sample["panoptic"][20, 0]) == 13 * D  # crowd keeps its class
    assert label[20, 0] == 26
