"""Test helpers shared by several folders: a tiny gbw weight file (no training) and photo-like
images. Importable as ``weight_files`` (``tests/`` is on sys.path through its conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gbw.engine.weights import WeightFile, save_weight_file
from gbw.models import build_model

TINY = {"widths": [8, 8, 16, 16], "aspp_channels": 8, "decoder_channels": 8}


def tiny_weights(path: Path, **protocol) -> Path:
    """A random TinySeg as a gbw weight file with the given eval protocol (no training)."""
    torch.manual_seed(0)
    model = build_model("tinyseg", 19, **TINY)
    for m in model.modules():  # spread the logits so that masks show several classes
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, 0, 0.5)
    wf = WeightFile(
        model={"name": "tinyseg", "num_classes": 19, "kwargs": TINY},
        state_dict=model.state_dict(),
        eval={"mode": "whole", **protocol},
    )
    return save_weight_file(path, wf)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like image: smooth colour gradients plus a little noise (compresses well)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6, size=3)
    img = np.stack(
        [127 + 120 * np.sin(xx / (w / 3) + yy / (h / 2) + p) for p in phase], axis=-1
    ) + rng.normal(0, 3, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
