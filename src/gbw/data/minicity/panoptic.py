"""MiniCity's panoptic maps: ids in memory, the 16-bit PNG on disk, and the transform-safe code.

In memory (``MiniCity(..., with_panoptic=True)`` samples) a panoptic map is an int64 (H, W)
array in the Cityscapes convention: ``trainId * 1000 + k`` (k = 1, 2, ...) for the pixels of
the k-th instance of a thing class (trainIds 11-18), ``trainId * 1000`` for a stuff class and
``255 * 1000`` for void (the target's ego-vehicle bonnet).

On disk (``<split>/panoptic/00000.png``) the map is a single-channel **16-bit PNG** holding the
same number, except void, which does not fit 16 bits and is stored as ``VOID_CODE = 65535``.
Thing ids stay below 19,000, so the file is lossless; any 16-bit PNG reader shows the ids as
they are (``value // 1000`` = trainId, ``value % 1000`` = instance number).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gbw.data.classes import IGNORE_INDEX, NUM_CLASSES, THING_CLASSES

LABEL_DIVISOR = 1000
VOID = IGNORE_INDEX * LABEL_DIVISOR  # 255000: the in-memory id of void pixels
VOID_CODE = 65535  # the same pixels in the 16-bit PNG
MAX_INSTANCES = LABEL_DIVISOR - 1  # per class and image

_IS_THING = np.zeros(256, bool)
_IS_THING[list(THING_CLASSES)] = True


def panoptic_from_instances(label: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """Panoptic ids (int64) from a trainId map and a map of instance numbers (0 = none).

    Instance numbers may be any positive ints (the renderer's drawing order); within each
    thing class they are renumbered 1, 2, ... in increasing order, counting only instances
    that kept at least one visible pixel of that class. Raises if a thing pixel has no
    instance, so an object drawn without an instance number cannot slip through.
    """
    label = np.asarray(label)
    out = label.astype(np.int64) * LABEL_DIVISOR
    thing = _IS_THING[label]
    if not thing.any():
        return out
    ids = inst[thing]
    if (ids <= 0).any():
        bad = np.unique(label[thing][ids <= 0]).tolist()
        raise ValueError(f"thing pixels without an instance number (trainIds {bad})")
    classes = label[thing].astype(np.int64)
    # Renumber the (class, instance) pairs: sorted by class, then by instance number.
    key = classes * (int(ids.max()) + 1) + ids
    uniq, inverse = np.unique(key, return_inverse=True)
    cls_of = uniq // (int(ids.max()) + 1)
    first = np.searchsorted(cls_of, cls_of, side="left")  # index of the class's first pair
    k = np.arange(uniq.size) - first + 1
    if k.max() > MAX_INSTANCES:
        raise ValueError(f"more than {MAX_INSTANCES} instances of one class in an image")
    out[thing] += k[inverse]
    return out


def encode_png16(panoptic: np.ndarray) -> np.ndarray:
    """In-memory ids -> the uint16 values of the PNG (void -> ``VOID_CODE``)."""
    out = np.where(panoptic == VOID, VOID_CODE, panoptic)
    if out.min() < 0 or out.max() > VOID_CODE:
        raise ValueError("panoptic ids out of range for the 16-bit MiniCity format")
    return out.astype(np.uint16)


def decode_png16(values: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """The uint16 values of a MiniCity panoptic PNG -> in-memory int64 ids."""
    if values.dtype != np.uint16 or values.ndim != 2:
        raise ValueError(
            f"{path}: expected a single-channel 16-bit panoptic PNG, got {values.dtype} "
            f"{values.shape}"
        )
    out = values.astype(np.int64)
    void = out == VOID_CODE
    cls = out // LABEL_DIVISOR
    if (~void & (cls >= NUM_CLASSES)).any():
        raise ValueError(f"{path}: panoptic value with trainId >= {NUM_CLASSES} (not MiniCity)")
    out[void] = VOID
    return out


# The transforms pad extra masks with 0, which would read as "road"; during a transform the
# map travels as ``id + 1`` (void = 0), so padding becomes void.


def to_transform_code(panoptic: np.ndarray) -> np.ndarray:
    """In-memory ids -> uint16 ``id + 1`` with void = 0 (what :meth:`TrainTransform.apply` pads)."""
    return np.where(panoptic == VOID, 0, panoptic + 1).astype(np.uint16)


def from_transform_code(code: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_transform_code`."""
    code = code.astype(np.int64)
    return np.where(code == 0, VOID, code - 1)


def semantic_of(panoptic: np.ndarray) -> np.ndarray:
    """The trainId map of a panoptic map (void -> 255)."""
    return (np.asarray(panoptic) // LABEL_DIVISOR).astype(np.int64)
