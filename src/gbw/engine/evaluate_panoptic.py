"""Panoptic inference and evaluation: the EDAPS protocol on a labelled dataset.

The student model predicts the whole image (EDAPS: full 2048x1024, ``eval.resize: null``,
``eval.mode: whole``): semantic logits bilinearly resized to the label size and argmax;
detections with masks pasted at the input size (nearest-resized to the label size if the
input was resized); the two fused by :func:`gbw.models.panoptic_fusion.fuse_panoptic` with
``eval.fusion`` (score 0.95, stuff area 2048, higher score wins). The panoptic map is scored by
:class:`gbw.metrics.PanopticQuality` (cityscapesscripts' rules) against the dataset's
``"panoptic"`` ground truth (``data.val.panoptic: true``) and the semantic argmax by the
confusion matrix against ``"label"``, in the same pass, sharded over ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from gbw.config import EvalConfig
from gbw.data.classes import THING_CLASSES
from gbw.metrics import ConfusionMatrix, PanopticMetrics, PanopticQuality, SegMetrics


@dataclass
class PanopticResult:
    """PQ/SQ/RQ of the fused maps and IoU of the semantic branch, from one evaluation."""

    panoptic: PanopticMetrics
    semantic: SegMetrics

    @property
    def matrix(self) -> Tensor:
        return self.semantic.matrix

    @property
    def miou(self) -> float:
        return self.semantic.miou

    def as_dict(self, class_names: Sequence[str]) -> dict[str, float]:
        """The semantic metrics (mIoU, IoU/<name>, ...) and the panoptic ones (mPQ, mPQ_things,
        mPQ_stuff, PQ/<name>, ...) in one flat dict."""
        return self.semantic.as_dict(class_names) | self.panoptic.as_dict(class_names)


@torch.no_grad()
def predict_panoptic(
    model: nn.Module,
    image: Tensor,
    cfg: EvalConfig,
    num_classes: int,
    out_size: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """(semantic (B, H, W), panoptic (B, H, W), detections) for images (B, 3, h, w) in [0, 1]
    at ``out_size`` (default: the image size)."""
    from gbw.models.panoptic_fusion import fuse_panoptic

    if cfg.mode != "whole":
        raise ValueError(
            f"panoptic evaluation predicts whole images (EDAPS); set eval.mode=whole, got "
            f"{cfg.mode!r}"
        )
    size = tuple(out_size) if out_size is not None else tuple(image.shape[-2:])
    x = image
    if cfg.resize:
        x = F.interpolate(
            x, size=(cfg.resize[1], cfg.resize[0]), mode="bilinear", align_corners=False
        )
    try:
        out = model(x, detect=True)
    except TypeError as exc:
        raise ValueError(
            "panoptic evaluation needs a panoptic model (edaps_*: forward(..., detect=True)); "
            f"this one failed with: {exc}"
        ) from None
    logits = out["main"].float()
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    semantic = logits.argmax(1)
    f = cfg.fusion
    panoptic = []
    for b, det in enumerate(out["detections"]):
        masks = det["masks"]
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
        panoptic.append(
            fuse_panoptic(
                semantic[b],
                masks,
                det["scores"],
                det["classes"],
                num_classes=num_classes,
                things=THING_CLASSES,
                score_threshold=f.score_threshold,
                stuff_area=f.stuff_area,
                order=f.order,  # type: ignore[arg-type]
            )
        )
    return semantic, torch.stack(panoptic), out["detections"]


def evaluate_panoptic(
    model: nn.Module,
    dataset: Dataset,
    cfg: EvalConfig,
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> PanopticResult:
    """PQ/SQ/RQ and IoU of ``model`` on a dataset whose samples carry ``"panoptic"``."""
    from gbw.data.panoptic import collate_panoptic
    from gbw.engine.evaluate import eval_loader, eval_mode, with_progress

    loader = eval_loader(dataset, cfg, rank, world, num_workers, collate_panoptic)
    pq = PanopticQuality(num_classes, THING_CLASSES, device=device)
    cm = ConfusionMatrix(num_classes, device=device)
    ctx = autocast or contextlib.nullcontext
    with eval_mode(model):
        for batch in with_progress(loader, progress, "eval (panoptic)"):
            if "panoptic" not in batch:
                raise ValueError(
                    "panoptic evaluation needs ground-truth panoptic maps: data.val.panoptic: "
                    "true (real datasets: `gbw data prepare <dataset> --panoptic`)"
                )
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            with ctx():
                semantic, panoptic, _ = predict_panoptic(
                    model, image, cfg, num_classes, label.shape[-2:]
                )
            cm.update(semantic, label)
            pq.update(panoptic, batch["panoptic"].to(device))
    cm.all_reduce()
    pq.all_reduce()
    return PanopticResult(pq.compute(classes), cm.compute(classes))
