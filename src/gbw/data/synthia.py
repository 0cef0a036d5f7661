"""SYNTHIA-RAND-CITYSCAPES (9,400 frames at 1280x760), the second synthetic source domain.

Layout (DAFormer): ``data/synthia/RGB/<id>.png`` and ``data/synthia/GT/LABELS/<id>.png``. The
labels are 16-bit, 3-channel PNGs: the class id is the PNG's *first* channel and the instance id
the second. DAFormer reads them with ``cv2.imread(f, cv2.IMREAD_UNCHANGED)[:, :, -1]``; OpenCV
returns BGR, so index -1 is that same first (R) channel. Pillow cannot be used: it decodes 16-bit
RGB as 8-bit, keeping only the high byte of each sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from gbw.data.classes import SYNTHIA_13, SYNTHIA_16
from gbw.data.io import read_png_unchanged
from gbw.data.real import FlatFolderDataset


class Synthia(FlatFolderDataset):
    """SYNTHIA-RAND-CITYSCAPES with Cityscapes trainIds; scored on 16 or 13 classes."""

    NAME = "synthia"
    TITLE = "SYNTHIA-RAND-CITYSCAPES"
    DEFAULT_ROOT = "data/synthia"
    SPLITS = ("train",)
    EXPECTED_COUNTS: ClassVar[dict[str, int]] = {"train": 9400}
    IMAGE_SIZE = (1280, 760)
    MAX_ID = 22  # README of SYNTHIA_RAND_CITYSCAPES: 0 void .. 22 lanemarking
    LABEL_DTYPE = np.uint16
    # SYNTHIA class id -> Cityscapes trainId (RECIPES.md; the README's class list).
    ID_TO_TRAIN_ID: ClassVar[dict[int, int]] = {
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
    # In SYNTHIA's class list but mapped to ignore here. DAFormer's converter maps them (to 9, 14,
    # 16) with the comment "not present in synthia"; if they ever occur, `gbw data check` says so.
    IGNORED_IDS: ClassVar[dict[int, str]] = {
        16: "terrain (DAFormer's converter maps it to trainId 9)",
        18: "truck (DAFormer's converter maps it to trainId 14)",
        20: "train (DAFormer's converter maps it to trainId 16)",
    }
    EVAL_CLASSES: ClassVar[dict[str, tuple[int, ...]]] = {"16": SYNTHIA_16, "13": SYNTHIA_13}
    LAYOUT_HINT = "layout data/synthia/RGB/<id>.png and data/synthia/GT/LABELS/<id>.png"

    IMAGE_DIR = "RGB"
    LABEL_DIR = "GT/LABELS"
    HAS_INSTANCES = True  # the label's second channel (panoptic maps: gbw.data.panoptic)

    @classmethod
    def read_label_channels(cls, path: Path) -> np.ndarray:
        """The label file as (H, W, 3) uint16 in file channel order: class, instance, unused."""
        arr = read_png_unchanged(path)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint16:
            got = f"{arr.shape[2] if arr.ndim == 3 else 1}-channel {arr.dtype.itemsize * 8}-bit"
            raise ValueError(
                f"{path}: expected a 16-bit 3-channel PNG (class id in the first channel), "
                f"got a {got} image"
            )
        return arr

    @classmethod
    def read_raw_label(cls, path: Path) -> np.ndarray:
        return cls.read_label_channels(path)[:, :, 0]

    @classmethod
    def read_instance_ids(cls, path: Path) -> np.ndarray:
        """The instance ids (second channel) of a raw SYNTHIA label file, (H, W) uint16."""
        return cls.read_label_channels(path)[:, :, 1]

    @classmethod
    def panoptic_source_for(cls, raw_label: Path) -> Path:
        return raw_label

    @classmethod
    def make_panoptic(cls, source: Path) -> np.ndarray:
        """Panoptic ids from a raw label: classes from the first channel, instances from the
        second (EDAPS's SYNTHIA rule, :func:`gbw.data.panoptic.panoptic_from_instances`)."""
        from gbw.data.panoptic import panoptic_from_instances

        channels = cls.read_label_channels(source)
        return panoptic_from_instances(cls.to_train_ids(channels[:, :, 0]), channels[:, :, 1])
