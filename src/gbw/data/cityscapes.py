"""Cityscapes (train 2,975 / val 500), the real target domain of every recipe.

Layout (mmseg / DAFormer): ``data/cityscapes/leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png``
and ``data/cityscapes/gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png``. The reference code
bases read ``<id>_gtFine_labelTrainIds.png``, written by cityscapesscripts from the polygon JSON
files; ``gbw data prepare cityscapes`` writes the same file from ``_gtFine_labelIds.png`` with the
official id -> trainId table, which gives identical pixels (both encodings draw the same polygons
in the same order, only the fill value differs).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from gbw.data.classes import EVAL_SUBSETS
from gbw.data.real import RealDataset, _list_dirs, _list_files

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
PANOPTIC_LABEL_SUFFIX = "_gtFine_panopticTrainIds.png"


class Cityscapes(RealDataset):
    """Cityscapes fine annotations, labels as trainIds (0..18, 255 = ignore)."""

    NAME = "cityscapes"
    TITLE = "Cityscapes"
    DEFAULT_ROOT = "data/cityscapes"
    SPLITS = ("train", "val")
    EXPECTED_COUNTS: ClassVar[dict[str, int]] = {"train": 2975, "val": 500}
    IMAGE_SIZE = (2048, 1024)
    MAX_ID = 33  # labelIds 0..33; "license plate" (-1) is never drawn into the label images
    # The official labelId -> trainId table (cityscapesscripts/helpers/labels.py); GTA5 shares it.
    ID_TO_TRAIN_ID: ClassVar[dict[int, int]] = {
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
    EVAL_CLASSES: ClassVar[dict[str, tuple[int, ...]]] = dict(EVAL_SUBSETS)
    LAYOUT_HINT = (
        "layout data/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/"
        "<id>_leftImg8bit.png and <id>_gtFine_labelIds.png"
    )
    HAS_INSTANCES = True  # <id>_gtFine_instanceIds.png (panoptic maps: gbw.data.panoptic)

    @classmethod
    def image_dir(cls, split: str) -> str:
        return f"leftImg8bit/{split}"

    @classmethod
    def label_dir(cls, split: str) -> str:
        return f"gtFine/{split}"

    @classmethod
    def list_images(cls, root: Path, split: str) -> list[Path]:
        base = root / cls.image_dir(split)
        return [
            base / city / name
            for city in _list_dirs(base)
            for name in _list_files(base / city, IMAGE_SUFFIX)
        ]

    @classmethod
    def raw_label_for(cls, root: Path, split: str, image: Path) -> Path:
        stem = image.name[: -len(IMAGE_SUFFIX)]
        return root / cls.label_dir(split) / image.parent.name / f"{stem}{LABEL_SUFFIX}"

    @classmethod
    def prepared_label_for(cls, raw_label: Path) -> Path:
        return raw_label.with_name(raw_label.name[: -len(LABEL_SUFFIX)] + TRAIN_ID_LABEL_SUFFIX)

    @classmethod
    def list_raw_labels(cls, root: Path, split: str) -> list[Path]:
        base = root / cls.label_dir(split)
        return [
            base / city / name
            for city in _list_dirs(base)
            for name in _list_files(base / city, LABEL_SUFFIX)
        ]

    @classmethod
    def prepared_panoptic_for(cls, raw_label: Path) -> Path:
        return raw_label.with_name(raw_label.name[: -len(LABEL_SUFFIX)] + PANOPTIC_LABEL_SUFFIX)

    @classmethod
    def panoptic_source_for(cls, raw_label: Path) -> Path:
        return raw_label.with_name(raw_label.name[: -len(LABEL_SUFFIX)] + INSTANCE_SUFFIX)

    @classmethod
    def make_panoptic(cls, source: Path) -> np.ndarray:
        """Panoptic ids from ``_gtFine_instanceIds.png`` with cityscapesscripts'
        createPanopticImgs rules (:func:`gbw.data.panoptic.panoptic_from_cityscapes`)."""
        from gbw.data.io import read_png_unchanged
        from gbw.data.panoptic import panoptic_from_cityscapes

        ids = read_png_unchanged(source)
        if ids.ndim != 2 or ids.dtype not in (np.uint8, np.uint16, np.int32):
            raise ValueError(
                f"{source}: expected a single-channel 16-bit instance id image, got "
                f"{ids.dtype} {ids.shape}"
            )
        return panoptic_from_cityscapes(ids, source)
