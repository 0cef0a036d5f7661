"""Tiny fake trees of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes in their real layouts.

The files have the real formats: RGB PNG images, GTA5 labels as 8-bit *palette* PNGs whose
indices are labelIds, Cityscapes ``_gtFine_labelIds.png`` as 8-bit grey PNGs, SYNTHIA labels as
16-bit 3-channel PNGs with the class id in the first channel and an instance id in the second.
The SYNTHIA writer below encodes PNG bytes itself (zlib + CRC, no image library), so the reader
under test cannot agree with it by sharing a channel-order bug.

Tests reach the builders through the ``fake`` fixture: ``fake.gta(root, n=3)`` etc. Each builder
returns {sample name: raw id array} so tests can compute expected trainIds independently.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

# Independent copies of RECIPES.md's tables (not imported from gbw, on purpose).
CITYSCAPES_TABLE = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
SYNTHIA_TABLE = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    19: 15,
    12: 17,
    11: 18,
}


def expected_train_ids(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Reference mapping, one pixel at a time (slow on purpose: independent of the LUT)."""
    out = np.empty(raw.shape, dtype=np.uint8)
    for idx, value in np.ndenumerate(raw):
        out[idx] = table.get(int(value), 255)
    return out


def png16_rgb_bytes(channels: np.ndarray) -> bytes:
    """Encode (H, W, 3) uint16 as a 16-bit RGB PNG; channel 0 is the file's first (R) sample."""
    h, w, c = channels.shape
    assert c == 3 and channels.dtype == np.uint16

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = channels.astype(">u2").reshape(h, w * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 = RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_synthia_label(path: Path, class_ids: np.ndarray, instance_ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    third = np.full(class_ids.shape, 7, dtype=np.uint16)  # unused channel, non-zero on purpose
    stacked = np.stack([class_ids, instance_ids, third], axis=-1).astype(np.uint16)
    path.write_bytes(png16_rgb_bytes(stacked))


def random_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path)


def save_palette(path: Path, ids: np.ndarray) -> None:
    """GTA5-style label: a 'P' image whose indices are the ids (with a Cityscapes-like palette)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    palette = np.random.default_rng(1).integers(0, 256, size=768, dtype=np.uint8)
    img.putpalette(palette.tolist())
    img.save(path)


def save_gray(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def raw_ids(rng: np.random.Generator, width: int, height: int, max_id: int) -> np.ndarray:
    """Blocks of random ids 0..max_id, plus every id once in the first row (full coverage)."""
    blocks = rng.integers(0, max_id + 1, size=(height // 4 + 1, width // 4 + 1))
    ids = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:height, :width]
    ids[0, : min(width, max_id + 1)] = np.arange(min(width, max_id + 1))
    return ids


def build_gta(root: Path, n: int = 3, size: tuple[int, int] = (40, 24), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(1, n + 1):
        stem = f"{i:05d}"
        save_rgb(root / "images" / f"{stem}.png", random_image(rng, *size))
        ids = raw_ids(rng, *size, max_id=33)
        save_palette(root / "labels" / f"{stem}.png", ids)
        out[f"images/{stem}.png"] = ids
    return out


def build_synthia(root: Path, n: int = 3, size: tuple[int, int] = (40, 24), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        stem = f"{i:07d}"
        save_rgb(root / "RGB" / f"{stem}.png", random_image(rng, *size))
        ids = raw_ids(rng, *size, max_id=22)
        # Instance ids: large 16-bit values, and values that are valid class ids too, so that
        # reading the wrong channel (or only one byte) cannot pass the mapping test.
        instance = rng.integers(0, 23, size=ids.shape) + 300 * rng.integers(0, 100, size=ids.shape)
        write_synthia_label(root / "GT" / "LABELS" / f"{stem}.png", ids, instance)
        out[f"RGB/{stem}.png"] = ids
    return out


def build_cityscapes(
    root: Path,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = (40, 24),
    seed: int = 0,
) -> dict:
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 3, "val": 2}
    out = {}
    for split, n in counts.items():
        for i in range(n):
            city = ("aachen", "bochum")[i % 2]
            stem = f"{city}_{i:06d}_000019"
            image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            save_rgb(image, random_image(rng, *size))
            ids = raw_ids(rng, *size, max_id=33)
            save_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            # The other gtFine files exist in the real release and must be ignored.
            save_gray(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", ids)
            (root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json").write_text("{}")
            out[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = ids
    return out


@pytest.fixture
def fake() -> SimpleNamespace:
    """Builders and helpers for fake dataset trees (see the module docstring)."""
    return SimpleNamespace(
        gta=build_gta,
        synthia=build_synthia,
        cityscapes=build_cityscapes,
        expected=expected_train_ids,
        CITYSCAPES_TABLE=CITYSCAPES_TABLE,
        SYNTHIA_TABLE=SYNTHIA_TABLE,
        write_synthia_label=write_synthia_label,
        png16_rgb_bytes=png16_rgb_bytes,
        save_rgb=save_rgb,
        save_palette=save_palette,
        save_gray=save_gray,
    )
