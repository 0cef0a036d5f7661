"""Panoptic maps: ids in memory, the 16-bit PNG on disk, the dataset converters, and the
instance targets a Mask R-CNN style detector trains on.

**In memory** a panoptic map is an int64 ``(H, W)`` array (or tensor) in the Cityscapes
convention with trainIds: ``trainId * 1000 + k`` (``k = 1, 2, ...``) for the pixels of the
k-th instance of a thing class (trainIds 11-18), ``trainId * 1000`` for a stuff class and for
a crowd region of a thing class, ``255 * 1000`` for void. Samples of datasets built with
``with_panoptic=True`` carry it as ``"panoptic"``, cropped and flipped with the label.

**On disk** (``gbw data prepare ... --panoptic``; MiniCity v2 uses the same format) it is a
single-channel 16-bit PNG holding the same numbers, except void, which does not fit 16 bits and
is stored as ``VOID_CODE = 65535``. Thing ids stay below 19,000, so the file is lossless and
any 16-bit PNG reader shows the ids as they are.

**Converters** follow the reference tools: SYNTHIA (EDAPS ``synthiascripts/
save_panopitc_gt_labels_for_synthia_as_pickle_files_19cls.py``): the class id is the label
PNG's first channel, the instance id its second; a thing class gets one segment per
(class, instance id) pair, numbered in increasing instance id, a stuff class one segment, and
nothing is crowd. Cityscapes (cityscapesscripts ``createPanopticImgs``): ``_instanceIds.png``
holds ``labelId * 1000 + i`` for instance ``i`` (from 0) of a thing class and ``labelId`` for
stuff and for crowd (group) regions of thing classes; classes ``ignoreInEval`` are void.
gbw's ``k`` is Cityscapes' ``i + 1`` (``k = 0`` means crowd).

**Instance targets** (:func:`instance_targets`) follow EDAPS's ``GenPanopLabelsForMaskFormer``,
which runs after the crop and the flip: one target per thing segment with ``k >= 1`` (crowd
regions are not instances), box ``[x1, y1, x2, y2]`` = the first and last pixel column and row
of the mask (``torchvision.ops.masks_to_boxes``; the reference's ``get_bbox_coord``), and boxes
with ``x1 == x2`` or ``y1 == y2`` (one pixel wide or high, "degenerate") are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gbw.data.classes import IGNORE_INDEX, NUM_CLASSES, THING_CLASSES

LABEL_DIVISOR = 1000
VOID = IGNORE_INDEX * LABEL_DIVISOR  # 255000: the in-memory id of void pixels
VOID_CODE = 65535  # the same pixels in the 16-bit PNG
MAX_INSTANCES = LABEL_DIVISOR - 1  # per class and image
#: thing index (the detector's class, 0..7) -> trainId, EDAPS's ``thing_list_mapids``
THING_TRAIN_IDS: tuple[int, ...] = THING_CLASSES

_IS_THING = np.zeros(256, dtype=bool)
_IS_THING[list(THING_CLASSES)] = True


# --- the 16-bit file and the transform code ------------------------------------------------


def encode_png16(panoptic: np.ndarray) -> np.ndarray:
    """In-memory ids -> the uint16 values of the PNG (void -> ``VOID_CODE``)."""
    out = np.where(panoptic == VOID, VOID_CODE, panoptic)
    if out.size and (out.min() < 0 or out.max() > VOID_CODE):
        raise ValueError("panoptic ids out of range for the 16-bit panoptic PNG")
    return out.astype(np.uint16)


def decode_png16(values: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """The uint16 values of a panoptic PNG -> in-memory int64 ids; checks the classes."""
    if values.dtype != np.uint16 or values.ndim != 2:
        got = f"{values.shape[2]}-channel" if values.ndim == 3 else "single-channel"
        raise ValueError(
            f"{path}: expected a single-channel 16-bit panoptic PNG, got a {got} "
            f"{values.dtype.itemsize * 8}-bit image; delete it and run "
            "`gbw data prepare ... --panoptic` again"
        )
    out = values.astype(np.int64)
    void = out == VOID_CODE
    bad = ~void & (out // LABEL_DIVISOR >= NUM_CLASSES)
    if bad.any():
        raise ValueError(
            f"{path}: panoptic value {int(out[bad][0])} has class {int(out[bad][0]) // 1000}, "
            f"expected trainIds 0..{NUM_CLASSES - 1} (or {VOID_CODE} for void)"
        )
    out[void] = VOID
    return out


def read_panoptic(path: Path | str) -> np.ndarray:
    """A prepared panoptic PNG as in-memory int64 ids (errors name the file)."""
    from gbw.data.io import read_png_unchanged

    return decode_png16(read_png_unchanged(path), path)


def write_panoptic(path: Path | str, panoptic: np.ndarray) -> None:
    """Write in-memory ids as the 16-bit panoptic PNG, atomically."""
    from gbw.data.io import write_png_unchanged

    write_png_unchanged(path, encode_png16(panoptic))


# The training transforms pad extra masks with 0, which would read as road; during a
# transform the map travels as ``id + 1`` (void = 0), so padding becomes void.


def to_transform_code(panoptic: np.ndarray) -> np.ndarray:
    """In-memory ids -> uint16 ``id + 1`` with void = 0 (what ``TrainTransform.apply`` pads)."""
    return np.where(panoptic == VOID, 0, panoptic + 1).astype(np.uint16)


def from_transform_code(code: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_transform_code`."""
    code = code.astype(np.int64)
    return np.where(code == 0, VOID, code - 1)


def semantic_of(panoptic: np.ndarray) -> np.ndarray:
    """The trainId map of a panoptic map (void -> 255), uint8."""
    return (np.asarray(panoptic) // LABEL_DIVISOR).astype(np.uint8)


# --- converters -----------------------------------------------------------------------------


def panoptic_from_instances(train_ids: np.ndarray, instance_ids: np.ndarray) -> np.ndarray:
    """SYNTHIA's rule: trainIds + per-pixel instance ids (any integers) -> panoptic ids.

    Stuff pixels become ``trainId * 1000`` whatever their instance id; each (thing class,
    instance id) pair becomes one instance, numbered ``k = 1, 2, ...`` per class in increasing
    instance id; ignore (255) is void. Nothing is crowd.
    """
    train_ids = np.asarray(train_ids)
    if train_ids.shape != np.asarray(instance_ids).shape:
        raise ValueError(
            f"class map {train_ids.shape} and instance map {np.shape(instance_ids)} differ"
        )
    out = train_ids.astype(np.int64) * LABEL_DIVISOR
    thing = _IS_THING[train_ids]
    if not thing.any():
        return out
    inst = np.asarray(instance_ids).astype(np.int64)[thing]
    inst = inst - inst.min()  # any integers; the order is what counts
    span = int(inst.max()) + 1
    key = train_ids[thing].astype(np.int64) * span + inst
    pairs, inverse = np.unique(key, return_inverse=True)
    cls = pairs // span
    k = np.arange(pairs.size) - np.searchsorted(cls, cls, side="left") + 1
    if k.max() > MAX_INSTANCES:
        worst = int(cls[np.argmax(k)])
        raise ValueError(f"more than {MAX_INSTANCES} instances of trainId {worst} in one image")
    out[thing] += k[inverse]
    return out


def _cityscapes_labels() -> Any:
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise ImportError(
            "panoptic Cityscapes labels follow cityscapesscripts' createPanopticImgs and use its "
            "label table; install it with `pip install 'gbw[cityscapes]'` (or `pip install "
            "cityscapesscripts`)"
        ) from None
    return labels


def cityscapes_panoptic_table() -> np.ndarray:
    """labelId -> (trainId, has instances, ignored in evaluation) from cityscapesscripts'
    label table, as a (256, 3) int64 array (unknown ids: trainId -1)."""
    table = np.full((256, 3), -1, dtype=np.int64)
    for lab in _cityscapes_labels():
        if lab.id >= 0:
            table[lab.id] = (lab.trainId, int(lab.hasInstances), int(lab.ignoreInEval))
    return table


def panoptic_from_cityscapes(instance_ids: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """A Cityscapes ``_instanceIds.png`` array -> panoptic ids (createPanopticImgs' rules).

    ``id < 1000`` is the labelId itself: a stuff segment, or a crowd region of a thing class;
    ``id >= 1000`` is ``labelId * 1000 + i``: instance ``k = i + 1`` of a thing class (of a
    stuff class, a segment of its own). Classes ignored in evaluation become void.
    """
    ids = np.asarray(instance_ids).astype(np.int64)
    table = cityscapes_panoptic_table()
    label_id = np.where(ids >= LABEL_DIVISOR, ids // LABEL_DIVISOR, ids)
    unknown = (label_id < 0) | (label_id > 255)
    if not unknown.any():
        unknown = table[label_id, 0] < 0
    if unknown.any():
        v = int(ids[unknown][0])
        lab = v // LABEL_DIVISOR if v >= LABEL_DIVISOR else v
        raise ValueError(f"{path}: instance id {v} has no Cityscapes label (labelId {lab})")
    train_id, _, ignored = (table[label_id, j] for j in range(3))
    k = np.where(ids >= LABEL_DIVISOR, ids % LABEL_DIVISOR + 1, 0)
    if (k > MAX_INSTANCES).any():
        raise ValueError(f"{path}: instance index 999 or more (the panoptic id has 3 digits)")
    out = train_id * LABEL_DIVISOR + k
    return np.where(ignored.astype(bool) | (train_id == IGNORE_INDEX), VOID, out)


# --- instance targets -----------------------------------------------------------------------


def instance_targets(
    panoptic: Tensor | np.ndarray,
    things: Sequence[int] = THING_CLASSES,
    label_divisor: int = LABEL_DIVISOR,
) -> dict[str, Tensor]:
    """The detector's targets of one (cropped) panoptic map (see the module docstring).

    Returns a dict of tensors, one row per instance, ordered by panoptic id:
        ``boxes``: (N, 4) float32 ``[x1, y1, x2, y2]`` in pixels (first and last column/row);
        ``masks``: (N, H, W) uint8;
        ``classes``: (N,) int64 thing index 0..7 (``things[i]`` is its trainId; torchvision's
        detection heads take ``classes + 1``, 0 being the background);
        ``ids``: (N,) int64 panoptic ids.
    """
    from torchvision.ops import masks_to_boxes

    pan = torch.as_tensor(panoptic)
    if pan.ndim != 2 or pan.is_floating_point():
        raise ValueError(
            f"expected an integer (H, W) panoptic map, got {pan.dtype} {tuple(pan.shape)}"
        )
    pan = pan.long()
    ids = torch.unique(pan)
    cls = ids // label_divisor
    thing_index = torch.full((256,), -1, dtype=torch.long)
    thing_index[list(things)] = torch.arange(len(things))
    index = torch.where((cls >= 0) & (cls < 256), thing_index[cls.clamp(0, 255)], -1)
    ids = ids[(index >= 0) & (ids % label_divisor != 0)]
    masks = pan[None] == ids[:, None, None]
    boxes = masks_to_boxes(masks) if len(ids) else torch.zeros(0, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    ids = ids[keep]
    return {
        "boxes": boxes[keep].float(),
        "masks": masks[keep].to(torch.uint8),
        "classes": thing_index[ids // label_divisor],
        "ids": ids,
    }


def collate_panoptic(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples whose ``"instances"`` differ in number: tensors of one shape are
    stacked, the ``"instances"`` dicts (and anything else) are kept as lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key != "instances" and all(isinstance(v, Tensor) for v in values):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


class WithInstances(torch.utils.data.Dataset):
    """Adds ``"instances"`` (:func:`instance_targets` of the sample's ``"panoptic"``) to each
    sample of a dataset built with ``with_panoptic=True``; batch it with
    :func:`collate_panoptic`. Computed in the loader's workers, after the crop and flip."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        sample = self.dataset[key]
        if "panoptic" not in sample:
            raise KeyError(
                "instance targets need samples with a 'panoptic' map: build the dataset with "
                "with_panoptic=True (data.source.panoptic: true)"
            )
        sample["instances"] = instance_targets(sample["panoptic"])
        return sample
