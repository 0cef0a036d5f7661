"""Inference (whole image or sliding window) and evaluation over a labelled dataset.

Protocols (RECIPES.md): AdaptSegNet/ADVENT/DAFormer feed Cityscapes at 1024x512 and upsample
the logits to the 2048x1024 labels (``eval.resize=[1024, 512]``, mode ``whole``); HRDA/MIC
slide a 1024x1024 window with stride 512 over the full 2048x1024 image (mode ``slide``). The
logits are upsampled bilinearly with ``eval.align_corners``: False as mmseg (DAFormer, HRDA,
MIC), True as ADVENT ``eval_UDA.py``, AdaptSegNet ``evaluate_cityscapes.py`` and DACS
``evaluateUDA.py`` (``nn.Upsample(..., align_corners=True)``; the DeepLabV2-era configs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from gbw.config import EvalConfig
from gbw.metrics import ConfusionMatrix, SegMetrics


def _up(logits: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def slide_logits(
    model: nn.Module,
    image: Tensor,
    crop: Sequence[int],
    stride: Sequence[int],
    num_classes: int,
    align_corners: bool = False,
) -> Tensor:
    """Average of window logits (each upsampled to its window) over a grid of crops.

    Windows are ``crop`` (h, w) every ``stride`` pixels, the last one shifted back to end at the
    border (mmseg's ``slide_inference``); an image smaller than the crop is one window.
    """
    b, _, h, w = image.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y1 = min(r * sh, h - ch)
            x1 = min(c * sw, w - cw)
            win = image[:, :, y1 : y1 + ch, x1 : x1 + cw]
            logits = _up(model(win)["main"].float(), (ch, cw), align_corners)
            out[:, :, y1 : y1 + ch, x1 : x1 + cw] += logits
            count[:, :, y1 : y1 + ch, x1 : x1 + cw] += 1
    return out / count


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: Tensor,
    cfg: EvalConfig,
    num_classes: int,
    out_size: Sequence[int] | None = None,
) -> Tensor:
    """Logits (B, C, *out_size) for images (B, 3, H, W) in [0, 1] under the eval protocol."""
    out_size = tuple(out_size) if out_size is not None else tuple(image.shape[-2:])
    if cfg.resize:
        image = F.interpolate(
            image, size=(cfg.resize[1], cfg.resize[0]), mode="bilinear", align_corners=False
        )
    if cfg.mode == "whole":
        logits = model(image)["main"].float()
    elif cfg.mode == "slide":
        logits = slide_logits(model, image, cfg.crop, cfg.stride, num_classes, cfg.align_corners)
    else:
        raise ValueError(f"eval.mode must be 'whole' or 'slide', got {cfg.mode!r}")
    return _up(logits, out_size, cfg.align_corners)


def evaluate(
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
    on_prediction: Callable[[list[str], Tensor], None] | None = None,
) -> SegMetrics:
    """Confusion-matrix metrics of ``model`` on a labelled dataset (sharded over ranks).

    ``on_prediction(names, pred)`` sees every batch's predictions (B, H, W) at label size,
    e.g. to write them for the official Cityscapes evaluator (``gbw eval --official``).
    """
    loader = eval_loader(dataset, cfg, rank, world, num_workers, _collate)
    cm = ConfusionMatrix(num_classes, device=device)
    ctx = autocast or contextlib.nullcontext
    with eval_mode(model):
        for batch in with_progress(loader, progress, "eval"):
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            with ctx():
                logits = predict_logits(model, image, cfg, num_classes, label.shape[-2:])
            pred = logits.argmax(1)
            cm.update(pred, label)
            if on_prediction is not None:
                on_prediction(list(batch["name"]), pred)
    cm.all_reduce()
    return cm.compute(classes)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, its own mode again after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def with_progress(loader: Iterable, progress: bool, desc: str) -> Iterable:
    """``loader``, behind a tqdm bar when ``progress``."""
    if not progress:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def eval_loader(
    dataset: Dataset,
    cfg: EvalConfig,
    rank: int,
    world: int,
    num_workers: int,
    collate: Callable[[list[dict]], dict],
) -> DataLoader:
    """This rank's share of the first ``eval.subset`` images (all when 0), in batches."""
    n = len(dataset) if not cfg.subset else min(cfg.subset, len(dataset))  # type: ignore[arg-type]
    shard = Subset(dataset, list(range(rank, n, world)))
    return DataLoader(shard, batch_size=cfg.batch_size, num_workers=num_workers, collate_fn=collate)


def _collate(samples: list[dict]) -> dict:
    out = {
        "image": torch.stack([s["image"] for s in samples]),
        "name": [s["name"] for s in samples],
    }
    if "label" in samples[0]:
        out["label"] = torch.stack([s["label"] for s in samples])
    return out
