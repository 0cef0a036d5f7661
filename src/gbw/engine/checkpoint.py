"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds the step, the resolved config, every module's and optimiser's state,
the method's extra state and all random generator states, so that a killed run resumed from
it continues bit-identically on the CPU.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gbw.fileio import atomic_write

FORMAT = "gbw-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a gbw checkpoint."""


def rng_state() -> dict[str, Any]:
    """Host random states (torch CPU, CUDA, numpy, random) as checkpoint-safe values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`gbw.fileio.atomic_write`): a crash or a
    full disk mid-write leaves the previous checkpoint intact; the error names the path."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (no code executed); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({path.stat().st_size} bytes, not a PyTorch zip "
            "archive). The file is truncated or not a checkpoint: resume from an earlier one "
            "(checkpoints/step_*.ckpt)."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({size} bytes; {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). The file is truncated "
            "or not a checkpoint: resume from an earlier one (checkpoints/step_*.ckpt)."
        ) from None
    except Exception as exc:  # weights_only refuses pickled code: name it
        raise CheckpointError(
            f"{path}: refused to load ({type(exc).__name__}: {exc}); only tensors and plain "
            "values are read from checkpoints"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gbw checkpoint (no '{FORMAT}' marker)")
    return state


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The evaluated network's weights from a checkpoint."""
    return state["modules"]["model"]
