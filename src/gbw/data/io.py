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


# --- photos of any format (``gbw predict``) -----------------------------------------------------


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's IHDR chunk, or None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[12:16] == b"IHDR":
        return data[24]
    return None


def _scale_16_to_8(arr: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 by dividing by 257 and rounding (65535 -> 255, 257 * k -> k)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_photo(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Read any image a user may hand to ``gbw predict`` as (H, W, 3) uint8 RGB.

    Returns the array and a note saying how it was converted (None for 8-bit RGB):
    greyscale and palette images are expanded to RGB, an alpha channel is dropped, CMYK is
    converted, and 16-bit images (PNG, TIFF) are scaled to 8 bits by dividing by 257 with
    rounding. (Pillow alone would keep only the high byte of a 16-bit RGB PNG.) Raises
    ``FileNotFoundError`` or ``ValueError`` naming the file.
    """
    import io

    path = Path(path)
    data = _read_bytes(path).tobytes()
    if _png_bit_depth(data) == 16:
        import cv2

        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"{path}: cannot decode image (corrupt or truncated file)")
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        if arr.ndim == 3 and channels >= 3:  # OpenCV's BGR(A) -> RGB, alpha dropped
            arr = arr[:, :, [2, 1, 0]]
        else:  # grey (+ alpha)
            arr = np.repeat((arr if arr.ndim == 2 else arr[:, :, 0])[:, :, None], 3, axis=2)
        kind = {1: "greyscale", 2: "greyscale+alpha", 3: "RGB", 4: "RGBA"}[channels]
        return _scale_16_to_8(arr), f"16-bit {kind} PNG scaled to 8 bits (/257)"
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: cannot decode image ({exc})") from None
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img), None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        rgb = np.repeat(_scale_16_to_8(grey)[:, :, None], 3, axis=2)
        return rgb, f"16-bit greyscale ({mode}) scaled to 8 bits (/257) and expanded to RGB"
    if mode == "F":
        raise ValueError(f"{path}: floating-point image (mode F); expected 8- or 16-bit colour")
    notes = {
        "L": "greyscale expanded to RGB",
        "LA": "greyscale expanded to RGB, alpha dropped",
        "1": "1-bit image expanded to RGB",
        "P": "palette image converted to RGB",
        "PA": "palette image converted to RGB, alpha dropped",
        "RGBA": "alpha channel dropped",
        "RGBa": "alpha channel dropped",
        "CMYK": "CMYK converted to RGB",
    }
    note = notes.get(mode, f"{mode} image converted to RGB")
    return np.asarray(img.convert("RGB")), note
