"""GTA5 ("Playing for Data", 24,966 frames), a synthetic source domain.

Layout (DAFormer): ``data/gta/images/<id>.png`` (RGB) and ``data/gta/labels/<id>.png`` (8-bit
palette PNGs whose *indices* are Cityscapes labelIds; read as indices, as DAFormer's converter
does with ``np.asarray(Image.open(f))``). Prepared labels: ``labels/<id>_labelTrainIds.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from gbw.data.cityscapes import Cityscapes
from gbw.data.real import TRAIN_ID_SUFFIX, RealDataset, _list_files


class GTA5(RealDataset):
    """GTA5 with Cityscapes trainIds; the id table is Cityscapes' own."""

    NAME = "gta"
    TITLE = "GTA5"
    DEFAULT_ROOT = "data/gta"
    SPLITS = ("train",)
    EXPECTED_COUNTS: ClassVar[dict[str, int]] = {"train": 24966}
    # Most frames are 1914x1052; the size is not enforced, only image/label agreement.
    IMAGE_SIZE = None
    TYPICAL_SIZE = (1914, 1052)
    MAX_ID = 33
    ID_TO_TRAIN_ID: ClassVar[dict[int, int]] = Cityscapes.ID_TO_TRAIN_ID
    LAYOUT_HINT = "layout data/gta/images/<id>.png and data/gta/labels/<id>.png"

    @classmethod
    def image_dir(cls, split: str) -> str:
        return "images"

    @classmethod
    def label_dir(cls, split: str) -> str:
        return "labels"

    @classmethod
    def list_images(cls, root: Path, split: str) -> list[Path]:
        base = root / cls.image_dir(split)
        return [base / n for n in _list_files(base, ".png")]

    @classmethod
    def raw_label_for(cls, root: Path, split: str, image: Path) -> Path:
        return root / cls.label_dir(split) / image.name

    @classmethod
    def list_raw_labels(cls, root: Path, split: str) -> list[Path]:
        base = root / cls.label_dir(split)
        return [base / n for n in _list_files(base, ".png") if not n.endswith(TRAIN_ID_SUFFIX)]
