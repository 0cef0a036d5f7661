"""The three examples/ scripts run on random tensors and log GBW's class weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_weights(history: list[torch.Tensor], steps: int, classes: int) -> None:
    assert len(history) == steps
    for w in history:
        assert w.shape == (classes,) and torch.isfinite(w).all() and (w > 0).all()
    assert any(not torch.allclose(w, torch.ones(classes), atol=1e-6) for w in history)


def test_smp_unet_loop(capsys):
    history = load("smp_unet_gbw").main(["--steps", "2", "--size", "32", "--classes", "4"])
    check_weights(history, 2, 4)
    assert all(int(w.argmin()) == 0 for w in history)  # the frequent class weighs least
    assert capsys.readouterr().out.count("GBW weights") == 2


def test_segformer_trainer_compute_loss(capsys):
    history = load("segformer_trainer_gbw").main(["--steps", "2", "--size", "32"])
    check_weights(history, 2, 5)
    out = capsys.readouterr().out
    assert "gbw_weight/0" in out  # logged through the Trainer's logger


@pytest.mark.parametrize("device", ["cpu"])
def test_deeplabv3_amp_loop(capsys, device):
    history = load("deeplabv3_amp_gbw").main(["--steps", "2", "--size", "48", "--device", device])
    check_weights(history, 2, 6)
    assert capsys.readouterr().out.count("GBW weights") == 2
