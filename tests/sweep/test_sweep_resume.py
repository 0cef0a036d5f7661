"""A sweep killed mid-way: the rerun skips the finished run, resumes the interrupted one from
its last checkpoint and ends with the results of an uninterrupted sweep; no worker outlives
the killed sweep."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gbw.cli import main


def _lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_sweep_resumes_and_matches_an_uninterrupted_one(
    tiny_yaml, tmp_path, capsys, monkeypatch, sig
):
    # one thread in every sweep of this test: CPU results depend on the thread count
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the second run is killed right after its first checkpoint (step 10 of 40)
    cfg = tiny_yaml(train={"max_iters": 40, "ckpt_every": 10, "log_every": 5})
    args = [str(cfg), "--seeds", "1", "--grid", "weighting.name=none,gbw", "--jobs", "1"]
    out = tmp_path / "killed"
    first, second = out / "runs/name=none-s1", out / "runs/name=gbw-s1"
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gbw.cli", "sweep", *args, "--out", str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while not (second / "checkpoints/last.ckpt").exists():
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()
        assert time.monotonic() < deadline, "the second run never wrote a checkpoint"
        time.sleep(0.02)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    log.close()
    assert code == (128 + sig if sig == signal.SIGTERM else -sig)
    assert (first / "metrics.json").exists() and not (second / "metrics.json").exists()
    # the worker died with the sweep: nobody holds the run's lock any more
    lock = out / ".locks/name=gbw-s1.lock"
    deadline = time.monotonic() + 30
    while not _lock_is_free(lock):
        assert time.monotonic() < deadline, "a worker outlived the killed sweep"
        time.sleep(0.1)
    # the manifest is rewritten as runs end, so even a SIGKILL leaves it up to date
    status = [r["status"] for r in json.loads((out / "manifest.json").read_text())["runs"]]
    if sig == signal.SIGTERM:
        assert "run the same command again to continue" in (tmp_path / "sweep.log").read_text()
        assert status == ["finished", "interrupted"]
    else:
        assert status == ["finished", "pending"]
    stamp = (first / "metrics.json").stat().st_mtime_ns

    assert main(["sweep", *args, "--out", str(out)]) == 0
    assert "2 runs - 1 finished (skipped), 1 to resume, 0 new" in capsys.readouterr().out
    assert (first / "metrics.json").stat().st_mtime_ns == stamp  # not trained again
    resumed_from = json.loads((second / "meta.json").read_text())["resumed_from_step"]
    assert resumed_from in (10, 20, 30)
    assert (out / "logs/name=gbw-s1.log").read_text().count("attempt started") == 2

    ref = tmp_path / "reference"
    assert main(["sweep", *args, "--out", str(ref)]) == 0
    for run in ("name=none-s1", "name=gbw-s1"):
        a = json.loads((out / "runs" / run / "metrics.json").read_text())
        b = json.loads((ref / "runs" / run / "metrics.json").read_text())
        assert a == b, run  # CPU training and resuming are bit-reproducible
