"""MiniCity's panoptic maps: ids in memory, the 16-bit PNG on disk, and the transform-safe code.

In memory (``MiniCity(..., with_panoptic=True)`` samples) a panoptic map is an int64 (H, W)
array in the Cityscapes convention: ``trainId * 1000 + k`` (k = 1, 2, ...) for the pixels of
the k-th instance of a thing class (trainIds 11-18), ``trainId * 1000`` for a stuff class and
``255 * 1000`` for void (the target's ego-vehicle bonnet).

On disk (``<split>/panoptic/00000.png``) the map is a single-channel **16-bit PNG** holding the
same number, except void, which does not fit 16 bits and is stored as ``VOID_CODE = 65535``.
Thing ids stay below 19,000, so the file is lossless; any 16-bit PNG reader shows the ids as
they are (``value // 1000`` = trainId, ``value % 1000`` = instance number). The format and
its helpers are gbw's panoptic PNG (:mod:`gbw.data.panoptic`), the same as the prepared
SYNTHIA and Cityscapes panoptic labels; this module adds MiniCity's instance numbering.
"""

from __future__ import annotations

import numpy as np

# The format is gbw's panoptic PNG (gbw.data.panoptic), shared with the prepared real datasets.
from gbw.data.panoptic import (  # noqa: F401  (re-exported for MiniCity's modules)
    _IS_THING,
    LABEL_DIVISOR,
    MAX_INSTANCES,
    VOID,
    VOID_CODE,
    decode_png16,
    encode_png16,
    from_transform_code,
    semantic_of,
    to_transform_code,
)


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
