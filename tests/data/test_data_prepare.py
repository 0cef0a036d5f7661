"""`gbw data prepare`: trainId PNGs, class statistics, resuming, idempotence, failures, CLI."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from gbw.data.commands import register
from gbw.data.io import read_label_png
from gbw.data.prepare import (
    journal_path,
    load_class_stats,
    prepare_dataset,
    prepare_split,
    stats_path,
)
from gbw.data.registry import dataset_class


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gbw")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.mark.parametrize("name", ["gta", "synthia", "cityscapes"])
def test_prepare_writes_train_ids_and_counts(tmp_path, fake, name):
    root = tmp_path / name
    raw = getattr(fake, name)(root)
    table = fake.SYNTHIA_TABLE if name == "synthia" else fake.CITYSCAPES_TABLE
    reports = prepare_dataset(name, root, progress=False)
    cls = dataset_class(name)
    assert [r.split for r in reports] == list(cls.SPLITS)
    for report in reports:
        assert report.failures == [] and report.converted == report.total and report.stats_written
        pairs = cls.scan(root, report.split).pairs
        names, counts = load_class_stats(root, name, report.split)
        assert names == [p.name for p in pairs]
        assert counts.dtype == np.int64 and counts.shape == (len(pairs), 19)
        for pair, row in zip(pairs, counts):
            expected = fake.expected(raw[pair.name], table)
            written = read_label_png(pair.prepared_label)
            np.testing.assert_array_equal(written, expected)
            np.testing.assert_array_equal(row, [(expected == c).sum() for c in range(19)])
        assert not journal_path(root, report.split).exists()


def test_second_run_does_no_work(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root)
    prepare_dataset("gta", root, progress=False)
    outputs = [*sorted(root.glob("labels/*_labelTrainIds.png")), stats_path(root)]
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    (report,) = prepare_dataset("gta", root, progress=False)
    assert (report.converted, report.reused, report.stats_written) == (0, 3, False)
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes


def test_killed_run_resumes_where_it_stopped(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root, n=5)
    done = []

    def die_after_two(result):
        done.append(result["name"])
        if len(done) == 2:
            raise KeyboardInterrupt

    cls = dataset_class("gta")
    with pytest.raises(KeyboardInterrupt):
        prepare_split(cls, root, "train", progress=False, on_result=die_after_two)
    journal = journal_path(root).read_text().splitlines()
    assert [json.loads(line)["name"] for line in journal] == done[:1]  # the 2nd died unlogged
    assert not stats_path(root).exists()
    with journal_path(root).open("a") as f:
        f.write('{"name": "images/000')  # a line cut short by the kill is ignored
    stale = root / "labels" / ".00003_labelTrainIds.png.x1y2.tmp"  # a write cut short
    stale.write_bytes(b"partial")
    report = prepare_split(cls, root, "train", progress=False)
    assert (report.reused, report.converted, report.failures) == (1, 4, [])
    names, counts = load_class_stats(root, "gta")
    assert len(names) == 5 and counts.sum() > 0
    assert not journal_path(root).exists()
    assert not stale.exists()


def test_stale_prepared_label_is_redone(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root)
    prepare_dataset("gta", root, progress=False)
    raw = root / "labels" / "00002.png"
    fake.save_palette(raw, np.full((24, 40), 7))  # all road now
    prepared = root / "labels" / "00002_labelTrainIds.png"
    old = prepared.stat().st_mtime_ns
    os.utime(raw, ns=(old + 10**9, old + 10**9))
    (report,) = prepare_dataset("gta", root, progress=False)
    assert (report.converted, report.reused) == (1, 2)
    names, counts = load_class_stats(root, "gta")
    assert counts[names.index("images/00002.png")].tolist() == [24 * 40] + [0] * 18


def test_failures_are_reported_and_statistics_withheld(tmp_path, fake, capsys):
    root = tmp_path / "gta"
    fake.gta(root, n=4)
    (root / "labels" / "00003.png").write_bytes(b"not a png")
    (root / "labels" / "00004.png").unlink()
    code = cli("data", "prepare", "gta", "--root", str(root), "--workers", "1", "--no-progress")
    out = capsys.readouterr().out
    assert code == 1
    assert (
        f"error: {root / 'labels' / '00003.png'}: cannot decode image (corrupt or truncated file)"
        in out
    )
    assert (
        f"error: {root / 'labels' / '00004.png'}: label file not found (expected for image "
        f"{root / 'images' / '00004.png'})"
    ) in out
    assert "gta train: 4 labels, 2 converted, 0 already prepared, 2 failed" in out
    assert not stats_path(root).exists()
    # Fix the tree: only the two broken images are done again.
    fake.save_palette(root / "labels" / "00003.png", np.full((24, 40), 26))
    fake.save_palette(root / "labels" / "00004.png", np.full((24, 40), 26))
    code = cli("data", "prepare", "gta", "--root", str(root), "--no-progress", "--workers", "1")
    out = capsys.readouterr().out
    assert code == 0
    assert "gta train: 4 labels, 2 converted, 2 already prepared, 0 failed" in out
    assert f"class statistics -> {stats_path(root)}" in out


def test_parallel_workers_give_the_same_statistics(tmp_path, fake):
    for workers, name in ((1, "a"), (2, "b")):
        fake.synthia(tmp_path / name, n=6)
        prepare_dataset("synthia", tmp_path / name, workers=workers, progress=False)
    a, b = load_class_stats(tmp_path / "a", "synthia"), load_class_stats(tmp_path / "b", "synthia")
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_wrong_root_exit_code_and_message(tmp_path, capsys):
    code = cli("data", "prepare", "cityscapes", "--root", str(tmp_path), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {tmp_path}: not a Cityscapes root; missing sub-folder(s) ")


def test_daformer_statistics_are_read_too(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root, n=2)
    legacy = [
        {"file": "data/gta/labels/00002_labelTrainIds.png", "0": 5, "13": 7},
        {"file": "data/gta/labels/00001_labelTrainIds.png", "2": 11},
    ]
    (root / "sample_class_stats.json").write_text(json.dumps(legacy))
    names, counts = load_class_stats(root, "gta")
    assert names == ["images/00002.png", "images/00001.png"]
    assert counts[0, 0] == 5 and counts[0, 13] == 7 and counts[1, 2] == 11 and counts.sum() == 23


def test_missing_statistics_message(tmp_path, fake):
    fake.gta(tmp_path / "gta", n=1)
    with pytest.raises(FileNotFoundError) as err:
        load_class_stats(tmp_path / "gta", "gta")
    assert str(err.value) == (
        f"{stats_path(tmp_path / 'gta')}: class statistics not found; run "
        f"`gbw data prepare gta --root {tmp_path / 'gta'}` first"
    )


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        cli("data", "prepare", "--help")
    out = capsys.readouterr().out
    assert "--workers" in out and "resumable" in out.lower() and "data/gta/images" in out
    with pytest.raises(SystemExit):
        cli("data", "check", "--help")
    out = capsys.readouterr().out
    assert "--subset" in out and "--limit" in out
