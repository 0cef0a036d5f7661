"""HRDA: context-aware high-resolution domain adaptation (Hoyer et al., ECCV 2022,
https://arxiv.org/abs/2204.13132; code lhoyer/HRDA).

The DAFormer loop (:class:`gbw.uda.daformer.DAFormer`) with HRDA's multi-resolution network
(:class:`gbw.models.hrda.HRDAModel`) in every forward pass:

* every segmentation loss (source, mixed target, MIC's masked target) is
  ``(1 - hr_loss_weight) * CE(fused) + hr_loss_weight * CE(detail)``: the fused logits over
  the whole context crop, and the detail-crop logits against the labels cropped to it
  (``HRDAHead.losses``: ``loss_seg *= 1 - 0.1``, ``hr.loss_seg *= 0.1``). Each forward pass
  draws its own detail crop;
* pseudo-labels come from the teacher's HRDA inference: context at x0.5 plus a sliding
  window of detail crops over the full-resolution target crop;
* the ImageNet feature distance compares the *context* features (``feature_scale=0.5``);
* the untrusted pseudo-label margins (30, 240, 30, 30) are drawn on the full target image by
  the data loader (``data.target.pseudo_margins``) and cropped with it.

GBW: each loss call has its own strategy, as the authors' code computes weights inside every
cross-entropy call: ``src``, ``src_hr``, ``mix``, ``mix_hr`` (4 solves per iteration; MIC
adds ``masked``, ``masked_hr``). ``uda.share_weights: true`` instead makes each detail term
reuse the weights of its fused term (one solve per domain: ``src``, ``mix``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from gbw.models.hrda import HRDAModel, crop_at
from gbw.uda.base import check_range
from gbw.uda.daformer import DAFormer, DAFormerConfig


@dataclass
class HRDAConfig(DAFormerConfig):
    """DAFormer settings with HRDA's values, plus the detail loss."""

    # margins are drawn on the full image by the loader (data.target.pseudo_margins)
    pseudo_margins: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    hr_loss_weight: float = 0.1  # lambda_d: weight of the detail-crop loss (fused: 1 - it)
    share_weights: bool = False  # detail terms reuse the fused terms' class weights

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.hr_loss_weight, "uda.hr_loss_weight", 0.0, 1.0)


class HRDA(DAFormer):
    """DAFormer whose every segmentation loss is HRDA's fused + detail loss."""

    Config = HRDAConfig
    name = "hrda"

    def __init__(self, model, cfg: HRDAConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        if self.needs_multi_resolution(cfg) and not isinstance(model, HRDAModel):
            raise ValueError(
                f"method {exp.method!r} needs HRDA's multi-resolution network: set model.name to "
                f"hrda_daformer_mitb5 (or hrda_daformer_mit), got {exp.model.name!r}"
            )
        super().__init__(model, cfg, exp, weighting)

    def needs_multi_resolution(self, cfg: Any) -> bool:
        """Whether the network must be an :class:`HRDAModel` (MIC on DAFormer: no)."""
        return True

    def feature_input(self, image: Tensor) -> Tensor:
        # the student's features come from the context pass, so the frozen encoder sees it too
        scale = getattr(self.net, "context_scale", 1.0)
        if scale == 1:
            return image
        return F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)

    def segmentation_loss(
        self,
        term: str,
        image: Tensor,
        label: Tensor,
        weight: Tensor | None = None,
        *,
        reduction: str,
        features: bool = False,
        fused_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        net = self.net
        if not isinstance(net, HRDAModel):  # MIC on a single-resolution DAFormer
            return super().segmentation_loss(
                term,
                image,
                label,
                weight,
                reduction=reduction,
                features=features,
                fused_scale=fused_scale,
            )
        offset = net.random_detail_offset(
            image.shape, self.generator(image.device), device=image.device
        )
        out = self.model(image, return_features=features, detail_offset=offset)
        # a) cross-entropy of the fused prediction over the whole context crop
        fused = self.resize_logits(out["main"], label.shape[-2:])
        loss_fused = self.weighting(term).cross_entropy(fused, label, weight, reduction)
        # b) cross-entropy of the detail crop's own prediction against the cropped labels
        hr_term = f"{term}_hr"
        label_d = crop_at(label, offset, net.detail_crop)
        weight_d = crop_at(weight, offset, net.detail_crop) if weight is not None else None
        detail = self.resize_logits(out["detail"], label_d.shape[-2:])
        strategy = self.weighting(hr_term, reuse=term if self.cfg.share_weights else None)
        loss_detail = strategy.cross_entropy(detail, label_d, weight_d, reduction)
        lam = self.cfg.hr_loss_weight
        # HRDAHead.losses: loss_seg *= 1 - hr_loss_weight, hr.loss_seg *= hr_loss_weight;
        # MIC then scales decode.loss_seg (the fused part) by mask_lambda (fused_scale)
        loss = fused_scale * (1 - lam) * loss_fused + lam * loss_detail
        logs = {f"{term}.ce": loss_fused.detach(), f"{hr_term}.ce": loss_detail.detach()}
        return loss, logs, out
