"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minicity_root(tmp_path_factory) -> str:
    """A quick MiniCity copy, generated once per test session."""
    from gbw.data.minicity import ensure_minicity

    root = tmp_path_factory.mktemp("minicity")
    ensure_minicity(root, seed=0, size="quick")
    return str(root)


@pytest.fixture
def train_two_processes() -> Callable[[Path, list[str]], subprocess.CompletedProcess]:
    """``run(config, overrides)``: ``gbw train`` with 2 CPU processes (DDP over gloo), the way
    a user starts it; fails the test with the end of stderr when the command fails."""

    def run(config: Path, overrides: list[str]) -> subprocess.CompletedProcess:
        ddp = [
            "train.accelerator=cpu",
            "train.progress=false",
            "train.devices=2",
            "train.strategy=ddp",
        ]
        res = subprocess.run(
            [sys.executable, "-m", "gbw.cli", "train", str(config), *ddp, *overrides],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    return run
