"""``gbw demo --task panoptic`` end to end on the quick MiniCity v2 (its instance maps): four
runs from configs/edaps/minicity[_gbw].yaml, the PQ/SQ/RQ table with things and stuff, verdict
lines, reuse of finished runs."""

from __future__ import annotations

import pytest
import torch

from gbw.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_panoptic_demo_quick(minicity_root, tmp_path, capsys):
    from gbw.data.minicity import EVAL_CLASSES

    argv = [
        "demo", "--task", "panoptic", "--quick", "--jobs", "1",
        "--data-root", minicity_root, "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for run in ("source_only-none", "source_only-gbw", "self_training-none", "self_training-gbw"):
        assert f"{run}-s1" in out
    text = (tmp_path / "out" / "panoptic" / "results.md").read_text()
    assert "| class | kind | source_only PQ w/o | source_only PQ GBW | Δ |" in text
    assert "| car | thing |" in text and "| road | stuff |" in text
    assert "| **mean, things** |" in text and "| **mean, stuff** |" in text
    assert "Found for source_only:" in text and "Found for self_training:" in text
    assert "mPQ Δ =" in text and "stuff area >= 18 px" in text
    rows = (tmp_path / "out" / "panoptic" / "results.csv").read_text().splitlines()
    assert rows[0] == "setting,weighting,seed,class,train_id,PQ,SQ,RQ,mPQ"
    assert len(rows) == 1 + 4 * len(EVAL_CLASSES)
    assert main(argv) == 0  # a second demo reuses every finished run
    assert capsys.readouterr().out.count("reused)") == 4
