"""Cityscapes class metadata shared by every domain (GTA5, SYNTHIA, the embedded benchmark).

All label maps in gbw are in Cityscapes *trainIds* (0..18, 255 = ignore), so one model head
and one metric serve every dataset.
"""

from __future__ import annotations

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_CLASSES = len(CITYSCAPES_CLASSES)

# The official Cityscapes colours, indexed by trainId.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

# Classes with instances ("things"): person .. bicycle.
THING_CLASSES: tuple[int, ...] = tuple(range(11, 19))

# SYNTHIA->Cityscapes evaluation subsets (trainIds). SYNTHIA has no terrain, truck, train;
# the 13-class metric also drops wall, fence and pole.
SYNTHIA_16: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
ALL_19: tuple[int, ...] = tuple(range(NUM_CLASSES))

EVAL_SUBSETS: dict[str, tuple[int, ...]] = {"19": ALL_19, "16": SYNTHIA_16, "13": SYNTHIA_13}
