"""`gbw data check` on good and broken trees, with the exact report lines."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from gbw.data.check import check_dataset
from gbw.data.commands import register
from gbw.data.prepare import prepare_dataset


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gbw")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


SMALL = (40, 24)


@pytest.mark.parametrize("name", ["gta", "synthia", "cityscapes"])
def test_good_trees_pass(tmp_path, fake, name):
    getattr(fake, name)(tmp_path / name)
    report = check_dataset(name, tmp_path / name, subset=True, expected_size=SMALL)
    assert report.ok, report.format()
    assert report.format().endswith(
        "is a complete, readable " + report.format().split(" at ")[0] + " tree"
    )


def test_good_tree_via_cli_exit_code_zero(tmp_path, fake, capsys):
    fake.gta(tmp_path / "gta")
    code = cli("data", "check", "gta", "--root", str(tmp_path / "gta"), "--subset", "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "train: 3 images (expected 24966), 3 image/label pairs checked" in out
    assert out.rstrip().endswith(f"OK: {tmp_path / 'gta'} is a complete, readable GTA5 tree")


def test_broken_gta_tree_lists_every_problem(tmp_path, fake, capsys):
    root = tmp_path / "gta"
    fake.gta(root, n=6)
    labels, images = root / "labels", root / "images"
    (labels / "00001.png").unlink()  # missing label
    fake.save_palette(labels / "00002.png", np.zeros((23, 40)))  # size mismatch
    data = (labels / "00003.png").read_bytes()
    (labels / "00003.png").write_bytes(data[: len(data) // 2])  # corrupt (truncated) PNG
    bad_ids = np.full((24, 40), 7)
    bad_ids[0, 0], bad_ids[5, 5] = 40, 77
    fake.save_palette(labels / "00004.png", bad_ids)  # unknown label ids
    fake.save_palette(labels / "00099.png", np.zeros((24, 40)))  # label without image
    code = cli(
        "data", "check", "gta", "--root", str(root), "--subset", "--no-progress", "--workers", "2"
    )
    out = capsys.readouterr().out
    assert code == 1
    problems = out.split("problems (5):\n")[1].splitlines()
    assert problems == [
        f"  {labels / '00099.png'}: label has no image in {images}",
        f"  {labels / '00001.png'}: label file not found (expected for image "
        f"{images / '00001.png'})",
        f"  {labels / '00002.png'}: size 40x23 does not match image 40x24",
        f"  {labels / '00003.png'}: cannot decode image (corrupt or truncated file)",
        f"  {labels / '00004.png'}: unknown label id(s) 40, 77 (expected GTA5 ids 0..33)",
        f"FAILED: 5 problem(s) in {root}",
    ]


def test_image_size_and_corrupt_image(tmp_path, fake):
    root = tmp_path / "cs"
    fake.cityscapes(root, counts={"train": 2, "val": 1})
    image = root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    image.write_bytes(b"garbage")
    report = check_dataset("cityscapes", root, subset=True)  # default size: 2048x1024
    train_image = root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    assert f"{train_image}: size 40x24, expected 2048x1024" in report.problems
    assert f"{image}: cannot decode image (corrupt or truncated file)" in report.problems
    assert len(report.problems) == 3  # 2 train images of the wrong size + 1 corrupt val image


def test_counts_are_checked_unless_subset(tmp_path, fake):
    root = tmp_path / "syn"
    fake.synthia(root, n=2)
    report = check_dataset("synthia", root, expected_size=SMALL)
    assert report.problems == [
        f"{root / 'RGB'}: found 2 images, expected 9400 (SYNTHIA-RAND-CITYSCAPES train); "
        "pass --subset for a partial copy"
    ]
    assert check_dataset("synthia", root, expected_size=SMALL, expected_counts={"train": 2}).ok
    assert check_dataset("synthia", root, expected_size=SMALL, subset=True).ok


def test_wrong_root(tmp_path, capsys):
    code = cli("data", "check", "synthia", "--root", str(tmp_path / "data"), "--no-progress")
    out = capsys.readouterr().out
    assert code == 1
    assert (
        f"  {tmp_path / 'data'}: folder not found; expected a SYNTHIA-RAND-CITYSCAPES root with "
        "the sub-folders RGB/, GT/LABELS/ (layout data/synthia/RGB/<id>.png and "
        "data/synthia/GT/LABELS/<id>.png)"
    ) in out.splitlines()


def test_synthia_label_format_and_unknown_ids(tmp_path, fake):
    root = tmp_path / "syn"
    fake.synthia(root, n=3)
    fake.save_gray(root / "GT" / "LABELS" / "0000000.png", np.zeros((24, 40)))  # 8-bit
    ids = np.full((24, 40), 3, dtype=np.uint16)
    ids[1, 1] = 300  # > 255: only visible if all 16 bits are read
    fake.write_synthia_label(root / "GT" / "LABELS" / "0000001.png", ids, np.zeros_like(ids))
    report = check_dataset("synthia", root, subset=True, expected_size=SMALL)
    labels = root / "GT" / "LABELS"
    assert report.problems == [
        f"{labels / '0000000.png'}: expected a 16-bit 3-channel PNG (class id in the first "
        "channel), got a 1-channel 8-bit image",
        f"{labels / '0000001.png'}: unknown label id(s) 300 (expected SYNTHIA-RAND-CITYSCAPES "
        "ids 0..22)",
    ]


def test_bad_prepared_label_values(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root, n=2)
    prepare_dataset("gta", root, progress=False)
    prepared = root / "labels" / "00001_labelTrainIds.png"
    values = np.zeros((24, 40))
    values[0, 0] = 19
    fake.save_gray(prepared, values)
    report = check_dataset("gta", root, subset=True)
    assert report.problems == [
        f"{prepared}: value(s) 19 are not trainIds (expected 0..18 or 255); delete it and run "
        "gbw data prepare again"
    ]


def test_limit_checks_fewer_files(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root, n=3)
    (root / "labels" / "00003.png").write_bytes(b"x")
    assert check_dataset("gta", root, subset=True, limit=2).ok
    assert not check_dataset("gta", root, subset=True).ok


def test_notes_are_summarised_not_per_file(tmp_path, fake):
    fake.synthia(tmp_path / "syn", n=3)  # the fake labels use every SYNTHIA id 0..22
    report = check_dataset("synthia", tmp_path / "syn", subset=True, expected_size=SMALL)
    labels = tmp_path / "syn" / "GT" / "LABELS"
    assert report.ok
    assert (
        f"{labels}: id 16 present in 3 label(s), terrain (DAFormer's converter maps it to "
        f"trainId 9); gbw maps it to ignore (255); e.g. {labels / '0000000.png'}"
    ) in report.notes
    fake.gta(tmp_path / "gta", n=3)
    report = check_dataset("gta", tmp_path / "gta", subset=True)
    images = tmp_path / "gta" / "images"
    assert (
        f"{images}: 3 images are not 1914x1052: 40x24 (3); e.g. {images / '00001.png'}"
    ) in report.notes
