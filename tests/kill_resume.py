"""Kill a training run part-way and compare its resumed end state with an uninterrupted run.

One place for the pattern the engine and recipe tests share. Importable as ``kill_resume``
because ``tests/conftest.py`` puts this folder on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gbw.engine.checkpoint import load_checkpoint
from gbw.engine.trainer import train


def train_killed_at(monkeypatch: pytest.MonkeyPatch, method_cls: type, exp: Any, step: int) -> None:
    """Train ``exp`` until ``method_cls.training_step`` is called for iteration ``step``, where a
    simulated kill (KeyboardInterrupt) stops it; the method class is restored afterwards."""
    original = method_cls.training_step

    def killed(self, source, target, s):
        if s.index == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, source, target, s)

    monkeypatch.setattr(method_cls, "training_step", killed)
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        train(exp)
    monkeypatch.setattr(method_cls, "training_step", original)


def last_checkpoint(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt")


def assert_same_method_state(run_a: Path, run_b: Path, prefix: str = "") -> tuple[dict, dict]:
    """Both runs' last checkpoints hold the same method state, tensor for tensor (and, with
    ``prefix``, some entry of that name). Returns the two checkpoints."""
    a, b = last_checkpoint(run_a), last_checkpoint(run_b)
    assert a["method"].keys() == b["method"].keys()
    if prefix:
        assert any(k.startswith(prefix) for k in a["method"]), prefix
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    return a, b
