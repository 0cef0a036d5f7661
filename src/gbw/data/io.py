"""Image reading and atomic writing, with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot decode image ({exc}); is the file truncated?") from exc
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array."""
    return np.asarray(_open(Path(path)).convert("RGB"))


def read_gray(path: str | Path) -> np.ndarray:
    """Read a single-channel label image as an (H, W) array of its stored integer values."""
    img = _open(Path(path))
    arr = np.asarray(img)
    if arr.ndim == 3:
        raise ValueError(f"{path}: expected a single-channel label image, got {arr.shape[2]} channels")
    return arr


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
