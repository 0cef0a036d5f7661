"""docs/own_data.md, run as written on a generated tree: its files, then every gbw command."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from gbw.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "own_data.md"
RAW_IDS = (0, 1, 2, 3, 4, 7)  # unlabelled, road, building, vegetation, hedge, car


def doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def generate_tree(root: Path, split: str, n: int, seed: int) -> None:
    """Street-like scenes: bands of raw ids with matching colours plus noise."""
    rng = np.random.default_rng(seed)
    colours = {
        0: (0, 0, 0),
        1: (128, 64, 128),
        2: (70, 70, 70),
        3: (107, 142, 35),
        4: (90, 150, 40),
        7: (0, 0, 142),
    }
    for i in range(n):
        h, w = 72, 96
        ids = np.zeros((h, w), dtype=np.uint8)
        ids[: h // 3] = 2
        ids[h // 3 : h // 2] = rng.choice([3, 4])
        ids[h // 2 :] = 1
        x = int(rng.integers(0, w - 30))
        ids[h // 2 : h // 2 + 14, x : x + 30] = 7
        ids[:2] = 0
        img = np.stack([np.vectorize(lambda v, c=c: colours[v][c])(ids) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        rel = f"street/{split}_{i:04d}"
        (root / "images" / split / "street").mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / "street").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / split / f"{rel}.jpg", quality=95)
        Image.fromarray(ids, mode="L").save(root / "labels" / split / f"{rel}.png")


def test_the_worked_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for block in doc_blocks("yaml"):  # the files, at the paths their first line names
        first, _, body = block.partition("\n")
        path = tmp_path / first.removeprefix("# file: ").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    assert (tmp_path / "my_data/labels_map.yaml").is_file()
    assert (tmp_path / "my_data/train.yaml").is_file()
    generate_tree(tmp_path / "my_data", "train", 6, seed=0)
    generate_tree(tmp_path / "my_data", "val", 3, seed=1)
    commands = [
        shlex.split(line)
        for block in doc_blocks("bash")
        for line in block.splitlines()
        if line.startswith("gbw ")
    ]
    assert [c[1] for c in commands] == ["data", "data", "train", "eval", "predict"]
    for argv in commands:
        args = argv[1:]
        if args[0] == "train":  # quick on 2 CPU cores; the YAML stays as documented
            args += ["data.num_workers=0", "train.progress=false", "train.accelerator=cpu"]
        if args[0] in ("eval", "predict"):
            args.append("--cpu")
        assert main(args) == 0, (args, capsys.readouterr())
        out = capsys.readouterr().out
        if args[:2] == ["data", "check"]:
            assert "OK:" in out and "road" in out and "car" in out
    stats = json.loads((tmp_path / "my_data/gbw_class_stats_train.json").read_text())
    assert stats["classes"] == ["road", "building", "vegetation", "car"]
    assert len(stats["names"]) == 6 and all(len(row) == 4 for row in stats["counts"])
    run = tmp_path / "runs/my_first_run"
    assert "rare-class sampling" in (run / "rare_class_sampling.txt").read_text()
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert set(k for k in metrics if k.startswith("IoU/")) == {
        "IoU/road",
        "IoU/building",
        "IoU/vegetation",
        "IoU/car",
    }
    masks = sorted((tmp_path / "my_predictions").rglob("*.png"))
    assert [m.relative_to(tmp_path / "my_predictions").as_posix() for m in masks][:2] == [
        "street/val_0000_color.png",
        "street/val_0000_overlay.png",
    ]
    palette = {(128, 64, 128), (70, 70, 70), (107, 142, 35), (0, 0, 142)}
    colours = {tuple(c) for c in np.asarray(Image.open(masks[0])).reshape(-1, 3)}
    assert colours <= palette


def test_check_reports_every_bad_file(tmp_path, capsys):
    root = tmp_path / "d"
    generate_tree(root, "train", 3, seed=0)
    (tmp_path / "map.yaml").write_text("classes: [road, building]\nids: {1: 0, 2: 1}\n")
    (root / "labels/train/street/train_0001.png").unlink()  # image without label
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels/train/street/extra.png")
    (root / "images/train/street/train_0002.jpg").write_bytes(b"garbage")
    args = [
        "data",
        "check",
        "folder",
        "--root",
        str(root),
        "--labels-map",
        str(tmp_path / "map.yaml"),
        "--split",
        "train",
        "--workers",
        "1",
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "train_0001.jpg: no label PNG" in out
    assert "extra.png: label has no image" in out
    assert "train_0002.jpg: cannot decode image" in out
    assert "raw id 3 is not in" in out and "raw id 7 is not in" in out
    (tmp_path / "bad.yaml").write_text("classes: [road]\nids: {1: 4}\n")
    args[args.index(str(tmp_path / "map.yaml"))] = str(tmp_path / "bad.yaml")
    assert main(args) == 2
    assert "ids: 1: 4 is not a trainId (0..0, or 255 = ignore)" in capsys.readouterr().err
