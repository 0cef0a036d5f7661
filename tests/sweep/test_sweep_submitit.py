"""``--launcher slurm`` through submitit's local executor (never a real cluster): the same
runs as jobs, resumable, reported like a local sweep."""

from __future__ import annotations

import json

import pytest

from gbw.cli import main

pytest.importorskip("submitit")


def test_submitit_local_executor_runs_the_sweep(tiny_yaml, tmp_path, capsys):
    cfg = tiny_yaml()
    out = tmp_path / "sw"
    args = [str(cfg), "--seeds", "1,2", "--out", str(out), "--launcher", "slurm"]
    args += ["--submitit-cluster", "local", "--slurm-gpus", "0", "--slurm-time", "10"]
    assert main(["sweep", *args, "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "submitted 2 runs as local jobs" in text
    for name in ("s1", "s2"):
        assert (out / "runs" / name / "metrics.json").exists()
        assert "=== finished" in (out / "logs" / f"{name}.log").read_text()
    assert any((out / "submitit").iterdir())  # submitit's own job files
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert all(r["job"] and r["status"] == "finished" for r in runs)  # job ids, for scancel
    data = json.loads((out / "sweep.json").read_text())
    assert [s["seeds"] for s in data["settings"]] == [[1, 2]]
    assert main(["sweep", *args]) == 0  # nothing left to submit
    assert "2 runs - 2 finished (skipped)" in capsys.readouterr().out
