"""Semantic + instance predictions -> one panoptic map (EDAPS's Panoptic-DeepLab-style merge).

EDAPS (Saha et al., ICCV 2023; code susaha/edaps, ``tools/panoptic_deeplab/post_processing``:
``get_cityscapes_instance_format_for_maskrcnn`` then ``merge_semantic_and_instance``) fuses
its two decoders at test time:

1. detections with a score ``>= score_threshold`` (0.95) are pasted into an instance map;
2. each pasted instance keeps only the pixels whose *semantic* prediction is a thing class;
   its class is the majority vote of the semantic prediction there (the detector's class is
   not used) and its id ``trainId * label_divisor + k``, ``k = 1, 2, ...`` per class;
3. every stuff class of the semantic prediction, on the pixels no instance covers, becomes
   one segment ``trainId * label_divisor`` if it has at least ``stuff_area`` (2048) pixels;
4. everything else is void (``void_label * label_divisor``): thing pixels without an
   instance, stuff pixels under an instance mask, stuff classes below the area.

Paste order (``order``):

* ``"score"`` (default): higher score wins where masks overlap.
* ``"reference"``: EDAPS's loop, class by class (thing index 0..7) and within a class in
  descending score; each mask overwrites the earlier ones, so a lower score can win and a
  later class always does.

Deliberate differences from the reference:

* Void stays void. The reference's evaluator writes predicted void as id 0, which is road's
  stuff id (``panoptic[panoptic == void_label] = 0`` in ``CityscapesPanopticEvaluator``), so
  void pixels join the road segment and count in its IoU. gbw does not copy this.
* The majority vote breaks ties towards the smaller trainId (the reference's
  ``torch.mode`` leaves ties unspecified).
* Semantic values outside ``[0, num_classes)`` (e.g. an ignore label) are void.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

THINGS: tuple[int, ...] = tuple(range(11, 19))
FusionOrder = Literal["score", "reference"]


def paste_instances(
    masks: Tensor,
    scores: Tensor,
    classes: Tensor | None = None,
    *,
    score_threshold: float = 0.95,
    order: FusionOrder = "score",
) -> Tensor:
    """The instance map: ``(H, W)`` int64, 0 = no instance, ``j`` = the ``j``-th instance
    pasted (in the order of ``order``), from ``(N, H, W)`` bool masks and ``(N,)`` scores.

    ``classes`` (``(N,)`` detector classes) is needed for ``order="reference"`` only.
    """
    if masks.ndim != 3 or scores.shape != masks.shape[:1]:
        raise ValueError(
            f"masks must be (N, H, W) and scores (N,), got {tuple(masks.shape)} and "
            f"{tuple(scores.shape)}"
        )
    keep = (scores >= score_threshold).nonzero().flatten()
    if order == "score":
        # paste in ascending score, each overwriting: the highest score ends on top. The
        # instances are numbered by descending score (rank 1 = best).
        rank = torch.argsort(scores[keep], descending=True, stable=True)
        ordered = keep[rank]
        paint = ordered.flip(0)
        number = torch.arange(len(ordered), 0, -1, device=masks.device)
    elif order == "reference":
        if classes is None or classes.shape != scores.shape:
            raise ValueError("order='reference' needs the detector classes (N,)")
        # class by class, descending score within a class; later masks overwrite earlier ones
        by_score = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        paint = by_score[torch.argsort(classes[by_score], stable=True)]
        number = torch.arange(1, len(paint) + 1, device=masks.device)
    else:
        raise ValueError(f"order must be 'score' or 'reference', got {order!r}")
    out = torch.zeros(masks.shape[1:], dtype=torch.long, device=masks.device)
    for i, n in zip(paint.tolist(), number.tolist()):
        out[masks[i].bool()] = n
    return out


def merge_semantic_and_instances(
    semantic: Tensor,
    instances: Tensor,
    *,
    num_classes: int = 19,
    things: Sequence[int] = THINGS,
    label_divisor: int = 1000,
    void_label: int = 255,
    stuff_area: int = 2048,
) -> Tensor:
    """Steps 2-4 of the module docstring: ``(H, W)`` semantic trainIds and an instance map
    (0 = none, ``1..K`` = instances in numbering order) -> ``(H, W)`` int64 panoptic ids."""
    if semantic.shape != instances.shape or semantic.ndim != 2:
        raise ValueError(
            f"semantic and instances must be (H, W) maps of one shape, got "
            f"{tuple(semantic.shape)} and {tuple(instances.shape)}"
        )
    dev = semantic.device
    c = num_classes
    sem = semantic.long()
    valid = (sem >= 0) & (sem < c)
    sem_slot = torch.where(valid, sem, c)  # slot c: void / out of range
    is_thing = torch.zeros(c + 1, dtype=torch.bool, device=dev)
    is_thing[list(things)] = True
    thing_px = is_thing[sem_slot]
    ins = instances.long()
    k_max = int(ins.max()) if ins.numel() else 0
    covered = ins > 0
    pan = torch.full_like(sem, void_label * label_divisor)
    if k_max > 0:
        # majority vote of the semantic classes on each instance's thing pixels
        sel = covered & thing_px
        votes = torch.bincount(
            (ins[sel] * (c + 1) + sem_slot[sel]), minlength=(k_max + 1) * (c + 1)
        ).view(k_max + 1, c + 1)
        cls = votes.argmax(1)  # first maximum: the smaller trainId on ties
        alive = votes.sum(1) > 0
        alive[0] = False
        # k = 1, 2, ... per class, in numbering order
        onehot = torch.nn.functional.one_hot(cls, c + 1) * alive[:, None]
        k = (onehot.cumsum(0) * onehot).sum(1)
        ids = torch.where(alive, cls * label_divisor + k, void_label * label_divisor)
        pan = torch.where(sel, ids[ins], pan)
    # stuff on the pixels no instance covers, if large enough
    free = ~covered & valid & ~thing_px
    area = torch.bincount(sem_slot[free], minlength=c + 1)
    keep = (area >= stuff_area) & ~is_thing
    keep[c] = False
    return torch.where(free & keep[sem_slot], sem * label_divisor, pan)


def fuse_panoptic(
    semantic: Tensor,
    masks: Tensor,
    scores: Tensor,
    classes: Tensor | None = None,
    *,
    num_classes: int = 19,
    things: Sequence[int] = THINGS,
    label_divisor: int = 1000,
    void_label: int = 255,
    score_threshold: float = 0.95,
    stuff_area: int = 2048,
    order: FusionOrder = "score",
) -> Tensor:
    """The whole fusion of the module docstring for one image.

    Args:
        semantic: ``(H, W)`` trainIds (argmax of the semantic logits at full resolution).
        masks: ``(N, H, W)`` bool detection masks at the same size (thresholded at 0.5).
        scores: ``(N,)`` detection scores.
        classes: ``(N,)`` detector classes, for ``order="reference"``.
    Returns:
        ``(H, W)`` int64 panoptic ids (``trainId * label_divisor + k``, void
        ``void_label * label_divisor``).
    """
    if masks.shape[1:] != semantic.shape:
        raise ValueError(
            f"masks {tuple(masks.shape[1:])} and semantic {tuple(semantic.shape)} differ in size"
        )
    instances = paste_instances(
        masks, scores, classes, score_threshold=score_threshold, order=order
    )
    return merge_semantic_and_instances(
        semantic,
        instances,
        num_classes=num_classes,
        things=things,
        label_divisor=label_divisor,
        void_label=void_label,
        stuff_area=stuff_area,
    )
