"""A tiny experiment file for sweeps (a sweep starts from a YAML) on the quick MiniCity copy
of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def tiny_yaml(minicity_root, tmp_path):
    """``tiny_yaml(**sections)``: a YAML file for a few-step CPU run on quick MiniCity with the
    tiny network; keyword arguments update its top-level sections."""

    def write(**sections) -> Path:
        cfg = {
            "method": "source_only",
            "model": {
                "name": "tinyseg",
                "kwargs": {"widths": [8, 8, 16, 16], "aspp_channels": 8, "decoder_channels": 8},
            },
            "data": {
                "minicity_size": "quick",
                "batch_size": 2,
                "num_workers": 0,
                **{s: {"root": minicity_root} for s in ("source", "target", "val")},
            },
            "train": {
                "accelerator": "cpu",
                "progress": False,
                "max_iters": 4,
                "log_every": 2,
                "ckpt_every": 2,
            },
            "eval": {"batch_size": 10, "subset": 10},
            "optim": {"name": "adamw", "lr": 0.002, "head_lr_mult": 1.0},
        }
        for key, value in sections.items():
            cfg[key] = cfg.get(key, {}) | value if isinstance(value, dict) else value
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
