"""GTA5 ("Playing for Data", 24,966 frames), a synthetic source domain.

Layout (DAFormer): ``data/gta/images/<id>.png`` (RGB) and ``data/gta/labels/<id>.png`` (8-bit
palette PNGs whose *indices* are Cityscapes labelIds; read as indices, as DAFormer's converter
does with ``np.asarray(Image.open(f))``). Prepared labels: ``labels/<id>_labelTrainIds.png``.
"""

from __future__ import annotations

from typing import ClassVar

from gbw.data.cityscapes import Cityscapes
from gbw.data.real import FlatFolderDataset


class GTA5(FlatFolderDataset):
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

    IMAGE_DIR = "images"
    LABEL_DIR = "labels"
