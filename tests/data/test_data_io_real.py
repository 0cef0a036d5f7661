"""Decoding of the real datasets' file formats (16-bit SYNTHIA labels above all)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gbw.data.io import (
    decode_rgb,
    read_label_png,
    read_png_unchanged,
    read_rgb,
    write_png_unchanged,
)


def test_16bit_rgb_png_comes_back_in_file_channel_order(tmp_path, fake):
    rng = np.random.default_rng(0)
    channels = rng.integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)
    path = tmp_path / "label.png"
    path.write_bytes(fake.png16_rgb_bytes(channels))  # independent encoder, R = channels[..., 0]
    got = read_png_unchanged(path)
    assert got.dtype == np.uint16 and got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got, channels)


def test_pillow_cannot_read_16bit_rgb_which_is_why_opencv_is_used(tmp_path, fake):
    channels = np.full((2, 2, 3), 0x0102, dtype=np.uint16)
    path = tmp_path / "label.png"
    path.write_bytes(fake.png16_rgb_bytes(channels))
    assert np.asarray(Image.open(path).convert("RGB"))[0, 0, 0] != 0x0102  # truncated to 8 bits


def test_write_png_unchanged_round_trips_16bit_3_channel(tmp_path):
    arr = np.arange(4 * 6 * 3, dtype=np.uint16).reshape(4, 6, 3) * 997
    write_png_unchanged(tmp_path / "a.png", arr)
    np.testing.assert_array_equal(read_png_unchanged(tmp_path / "a.png"), arr)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_decode_rgb_matches_pillow(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode_rgb(tmp_path / "x.png"), img)
    np.testing.assert_array_equal(decode_rgb(tmp_path / "x.png"), read_rgb(tmp_path / "x.png"))


def test_decode_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ValueError) as err:
        decode_rgb(bad)
    assert str(err.value) == f"{bad}: cannot decode image (corrupt or truncated file)"
    with pytest.raises(ValueError) as err:
        read_label_png(bad)
    assert str(err.value) == f"{bad}: cannot decode image (corrupt or truncated file)"
    with pytest.raises(FileNotFoundError) as err:
        decode_rgb(tmp_path / "nope.png")
    assert str(err.value) == f"{tmp_path / 'nope.png'}: file not found"


def test_palette_label_reads_indices_not_colours(tmp_path, fake):
    ids = np.array([[7, 8], [33, 0]], dtype=np.uint8)
    fake.save_palette(tmp_path / "l.png", ids)
    got = read_label_png(tmp_path / "l.png")
    assert got.ndim == 2
    np.testing.assert_array_equal(got, ids)
