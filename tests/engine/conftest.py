"""Shared fixtures: tiny experiment configs (the quick MiniCity copy is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from gbw.config import ExperimentConfig, load_config
from tiny_networks import tinyseg


@pytest.fixture
def tiny_config():
    """``tiny_config(root, out_dir, *overrides)``: see :func:`make_tiny_config`."""
    return make_tiny_config


def make_tiny_config(root: str, out_dir: str, *extra: str) -> ExperimentConfig:
    """A few-step CPU experiment on quick MiniCity with the tiny network."""
    return load_config(
        None,
        [
            f"out_dir={out_dir}",
            "name=tiny",
            *tinyseg(),
            "data.minicity_size=quick",
            "data.batch_size=2",
            "data.num_workers=0",
            *([f"data.{s}.root={root}" for s in ("source", "target", "val")] if root else []),
            "train.accelerator=cpu",
            "train.progress=false",
            "train.log_every=2",
            "eval.batch_size=10",
            "eval.subset=10",
            "optim.name=adamw",
            "optim.lr=0.002",
            "optim.head_lr_mult=1.0",
            *extra,
        ],
    )
