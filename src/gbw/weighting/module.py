"""``GBWCrossEntropy``: GBW as a drop-in ``nn.Module`` for an existing training loop."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gbw.weighting.strategies import GBW


class GBWCrossEntropy(nn.Module):
    """Cross-entropy with GBW class weights recomputed at every call.

    Replaces ``nn.CrossEntropyLoss(ignore_index=255)`` in two lines::

        criterion = gbw.GBWCrossEntropy(num_classes=19)
        loss = criterion(logits, labels)        # logits (B, C, h, w), labels (B, H, W)

    Logits smaller than the labels are bilinearly upsampled first (``upsample=True``), as
    segmentation losses do. The weights of the last call are in ``criterion.last_weights``.
    Arguments are those of :class:`gbw.GBW`; ``reduction`` as in
    :func:`gbw.weighted_cross_entropy`.
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
        **kwargs: object,
    ) -> None:
        super().__init__()
        self.weighting = GBW(num_classes, lam, variant, scale, present_only, ignore_index, **kwargs)
        self.reduction = reduction
        self.upsample = upsample

    def forward(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        if self.upsample and logits.dim() == 4 and logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.weighting.cross_entropy(logits, target, pixel_weight, self.reduction)

    @property
    def last_weights(self) -> Tensor | None:
        return self.weighting.last_weights

    def extra_repr(self) -> str:
        return repr(self.weighting)
