"""``gbw demo --task panoptic`` end to end with a stand-in for MiniCity v2's interface
(``MiniCity(..., with_panoptic=True)``, tests/uda/panoptic_scenes.py), until MiniCity v2 is
merged: four runs, the PQ/SQ/RQ table with things and stuff, verdict lines, reuse."""

from __future__ import annotations

import panoptic_scenes
import pytest
import torch

import gbw.data.minicity as minicity
from gbw.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_panoptic_demo_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(minicity, "MiniCity", panoptic_scenes.fake_minicity)
    monkeypatch.setattr(minicity, "ensure_minicity", lambda *a, **k: tmp_path / "minicity")
    monkeypatch.setattr(minicity, "EVAL_CLASSES", panoptic_scenes._FakeMiniCity.EVAL_CLASSES)
    argv = ["demo", "--task", "panoptic", "--quick", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for run in ("source_only-none", "source_only-gbw", "self_training-none", "self_training-gbw"):
        assert f"panoptic-{run}-s1" in out
    text = (tmp_path / "out" / "panoptic" / "results.md").read_text()
    assert "| class | kind | source_only PQ w/o | source_only PQ GBW | Δ |" in text
    assert "| car | thing |" in text and "| road | stuff |" in text
    assert "| **mean, things** |" in text and "| **mean, stuff** |" in text
    assert "Found for source_only:" in text and "Found for self_training:" in text
    assert "mPQ Δ =" in text
    rows = (tmp_path / "out" / "panoptic" / "results.csv").read_text().splitlines()
    assert rows[0] == "setting,weighting,seed,class,train_id,PQ,SQ,RQ,mPQ"
    assert len(rows) == 1 + 4 * 5
    assert main(argv) == 0  # a second demo reuses every finished run
    assert capsys.readouterr().out.count("reused)") == 4
