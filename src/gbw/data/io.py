"""Image reading and atomic writing, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gbw.fileio import atomic_write


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
        raise ValueError(
            f"{path}: expected a single-channel label image, got {arr.shape[2]} channels"
        )
    return arr


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG atomically (temp file + rename)."""
    with atomic_write(path, "wb", durable=False) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")


# --- OpenCV decoding -------------------------------------------------------------------------
# Pillow reads a 16-bit RGB PNG (SYNTHIA's labels) as 8-bit RGB, silently keeping only the high
# byte of each sample, so those files must be decoded with OpenCV, as the reference converters
# do. OpenCV's PNG decoder is also somewhat faster than Pillow's for the large RGB images of the
# real datasets. Files are read into memory first so that a missing file raises a clean
# FileNotFoundError instead of an OpenCV warning on stderr.


def _read_bytes(path: Path) -> np.ndarray:
    try:
        return np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected an image file") from None


def _cv2_decode(path: Path, flags: int) -> np.ndarray:
    import cv2

    buf = _read_bytes(path)
    arr = cv2.imdecode(buf, flags) if buf.size else None
    if arr is None:
        raise ValueError(f"{path}: cannot decode image (corrupt or truncated file)")
    return arr


def decode_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array with OpenCV (the fast path)."""
    import cv2

    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 converts in the decoder
    if rgb_flag is not None:
        return _cv2_decode(Path(path), rgb_flag)
    return np.ascontiguousarray(_cv2_decode(Path(path), cv2.IMREAD_COLOR)[:, :, ::-1])


def read_png_unchanged(path: str | Path) -> np.ndarray:
    """Read a PNG with its stored bit depth; colour channels come back in *file order* (R, G, B).

    OpenCV returns colour channels in BGR order; they are reversed here so that index 0 is the
    PNG's first channel. (DAFormer's SYNTHIA converter takes ``cv2.imread(f, -1)[:, :, -1]``,
    which is the same first channel of the file.) Single-channel files come back as (H, W).
    """
    import cv2

    arr = _cv2_decode(Path(path), cv2.IMREAD_UNCHANGED)
    if arr.ndim == 3:
        order = [2, 1, 0] if arr.shape[2] == 3 else [2, 1, 0, 3]  # OpenCV's BGR(A) -> file order
        arr = np.ascontiguousarray(arr[:, :, order])
    return arr


def write_png_unchanged(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8/uint16 (H, W) or (H, W, 3) array, channels in file order, atomically.

    The counterpart of :func:`read_png_unchanged`; used for 16-bit multi-channel PNGs, which
    Pillow cannot write.
    """
    import cv2

    path = Path(path)
    arr = np.ascontiguousarray(array)
    if arr.ndim == 3:
        order = [2, 1, 0] if arr.shape[2] == 3 else [2, 1, 0, 3]  # file order -> OpenCV's BGR(A)
        arr = np.ascontiguousarray(arr[:, :, order])
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(
            f"{path}: OpenCV could not encode a {arr.dtype} array of shape {arr.shape}"
        )
    with atomic_write(path, "wb", durable=False) as f:
        f.write(buf.tobytes())


def read_label_png(path: str | Path) -> np.ndarray:
    """Read an 8-bit label PNG as stored values: palette indices for GTA5's 'P' images, grey
    levels for 'L' images; (H, W), or (H, W, C) for a colour file.

    Unlike :func:`read_gray` the error for an undecodable file does not depend on the decoder's
    wording, so ``gbw data check`` reports are stable.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{path}: cannot decode image (corrupt or truncated file)") from None
