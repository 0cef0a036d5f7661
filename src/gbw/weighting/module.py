"""``GBWCrossEntropy``: GBW as a drop-in ``nn.Module`` for an existing training loop."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gbw.weighting.losses import check_reduction
from gbw.weighting.strategies import GBW


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def match_logits_to_labels(
    logits: Tensor, target: Tensor, *, upsample: bool = True, align_corners: bool = False
) -> Tensor:
    """``logits`` at the labels' resolution, or a ValueError naming both shapes.

    (B, C, h, w) logits smaller than (B, H, W) labels (``h <= H`` and ``w <= W``) are
    bilinearly upsampled to (H, W) when ``upsample`` is set; logits larger than the labels in
    any side, a different batch size, labels that are not (B, H, W), or (N, C) logits with
    labels that are not (N,) are refused: resizing them silently would hide a wrong pairing
    of predictions and labels.
    """
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"logits and labels must be tensors, got {type(logits).__name__} and "
            f"{type(target).__name__}"
        )
    if logits.dim() == 2:
        if target.dim() != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"logits of shape {_shape(logits)} need labels of shape ({logits.shape[0]},), "
                f"got labels of shape {_shape(target)}"
            )
        return logits
    if logits.dim() != 4 or target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            "logits must be (B, C, h, w) with labels (B, H, W) of the same batch size, got "
            f"logits {_shape(logits)} and labels {_shape(target)}"
        )
    (h, w), (height, width) = logits.shape[-2:], target.shape[-2:]
    if (h, w) == (height, width):
        return logits
    if h > height or w > width:
        raise ValueError(
            f"logits {_shape(logits)} are larger than the labels {_shape(target)}; only "
            "smaller logits are upsampled to the labels' size"
        )
    if not upsample:
        raise ValueError(
            f"logits {_shape(logits)} do not match the labels {_shape(target)} and upsample=False"
        )
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=align_corners)


class GBWCrossEntropy(nn.Module):
    """Cross-entropy with GBW class weights recomputed at every call.

    Replaces ``nn.CrossEntropyLoss(ignore_index=255)`` in two lines::

        criterion = gbw.GBWCrossEntropy(num_classes=19)
        loss = criterion(logits, labels)        # logits (B, C, h, w), labels (B, H, W)

    The default ``reduction="mean"`` is PyTorch's: with uniform weights the loss and its
    gradients equal ``nn.CrossEntropyLoss(ignore_index=255)``'s (the mean over labelled
    pixels); with weights v it is ``nn.CrossEntropyLoss(weight=v, ignore_index=255)``, the
    weighted mean ``sum_i v_{y_i} CE_i / sum_i v_{y_i}``. ``reduction="all_pixel_mean"`` is the
    reduction of the authors' code (mmseg's: the mean over all pixels, ignored ones as zeros,
    not divided by ``sum(v)``); ``"labelled_mean"``, ``"sum"`` and ``"none"`` as in
    :func:`gbw.weighted_cross_entropy`.

    Logits smaller than the labels are bilinearly upsampled to the labels' size first
    (``upsample=True``, ``align_corners`` as given), as segmentation losses do; larger logits
    or labels of another shape raise a ValueError naming both shapes. The weights of the last
    call are in ``criterion.last_weights``. The other arguments are those of :class:`gbw.GBW`.
    """

    def __init__(
        self,
        num_classes: int,
        lam: float = 1.0,
        variant: str = "class",
        scale: str = "none",
        present_only: bool = False,
        ignore_index: int = 255,
        *,
        reduction: str = "mean",
        upsample: bool = True,
        align_corners: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__()
        self.weighting = GBW(num_classes, lam, variant, scale, present_only, ignore_index, **kwargs)
        self.reduction = check_reduction(reduction)
        self.upsample = upsample
        self.align_corners = align_corners

    def forward(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        logits = match_logits_to_labels(
            logits, target, upsample=self.upsample, align_corners=self.align_corners
        )
        return self.weighting.cross_entropy(logits, target, pixel_weight, self.reduction)

    @property
    def last_weights(self) -> Tensor | None:
        return self.weighting.last_weights

    def extra_repr(self) -> str:
        return f"{self.weighting!r}, reduction={self.reduction!r}"
