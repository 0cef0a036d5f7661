"""HRDA's multi-resolution network: context and detail crops fused by a learned scale attention.

HRDA (Hoyer et al., ECCV 2022, https://arxiv.org/abs/2204.13132) trains on a large, downscaled
*context* crop and a small *detail* crop at full resolution inside it, both through the same
segmentation network, and fuses the two predictions with a class-wise *scale attention*
predicted from the context features. Read from lhoyer/HRDA (``mmseg/models/segmentors/
hrda_encoder_decoder.py``, ``mmseg/models/decode_heads/hrda_head.py``, config
``configs/hrda/gtaHR2csHR_hrda.py``):

* scales ``[0.5, 1]``: the context is the input (a 1024x1024 crop) bilinearly downscaled x0.5;
  the detail crop is 512x512 at full resolution, its top-left corner drawn uniformly among
  positions divisible by 8 (``crop_coord_divisible=8``, so that the crop falls on whole
  pixels of both logit grids: stride 4 at full resolution, 8 at half);
* scale attention: a DAFormer decoder whose ASPP fusion is replaced by a 1x1 ConvModule
  (conv, BN, ReLU), 256 channels, one output per class (``attention_classwise=True``), then a
  sigmoid; it sees the *context* features, and its gradient is not stopped;
* fusion (``HRDAHead.forward``): the attention is zeroed outside the detail crop,
  ``fused = up(a) * detail_inserted + up((1 - a) * context)`` with ``up`` the bilinear x2
  upsampling to the full-resolution logit grid and ``detail_inserted`` the detail logits
  pasted into a zero map. Outside the detail crop the fused logits are the context logits;
* inference (pseudo-labels and evaluation): the context is the whole input at x0.5, the
  detail prediction a sliding window of detail-crop size with stride half of it over the whole
  input at full resolution (``hr_slide_inference=True``, windows batched), fused with the
  unmasked attention. Evaluation adds an outer 1024x1024 window with stride 512 over the
  2048x1024 image (``eval.mode=slide``, :func:`gbw.engine.evaluate.slide_logits`).

Host synchronisation: the detail crop's position is a device tensor; cropping is
``index_select`` and pasting ``index_copy`` with index vectors built from it, so a training
step never reads the position on the host (see ``shared/design/PERFORMANCE.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gbw.models.base import SegmentationModel, SegOutput, StateDictSource
from gbw.models.daformer_head import DAFormerHead, _conv_bn_relu


class ScaleAttentionHead(DAFormerHead):
    """HRDA's scale attention: the DAFormer decoder with a 1x1 ConvModule as fusion.

    ``HRDAHead`` builds it from the segmentation head's config with ``channels`` and
    ``embed_dims`` set to ``attention_embed_dim`` (256) and the ``aspp`` fusion replaced by
    ``dict(type='conv', kernel_size=1, act_cfg=ReLU, norm_cfg=BN)``; dropout (0.1) and the
    1x1 classifier are kept. Outputs logits; the sigmoid is applied by :class:`HRDAModel`.
    Parameter count for MiT-B5 features and 19 classes: 530,707.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 128, 320, 512),
        num_outputs: int = 19,
        *,
        embed_dim: int = 256,
        channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            in_channels,
            num_outputs,
            embed_dim=embed_dim,
            channels=channels,
            dilations=(1,),
            dropout=dropout,
        )
        self.fuse = _conv_bn_relu(len(in_channels) * embed_dim, channels, 1)


def crop_at(x: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    """``x[..., y:y+h, x:x+w]`` for a device tensor ``offset = (y, x)``, without a host read.

    Works for images (B, C, H, W) and labels (B, H, W).
    """
    rows = offset[0] + torch.arange(int(size[0]), device=x.device)
    cols = offset[1] + torch.arange(int(size[1]), device=x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def paste_at(x: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    """A zero map of spatial ``size`` with ``x`` (B, C, h, w) at ``offset = (y, x)`` (device
    tensor); differentiable in ``x`` (the backward is an ``index_select``)."""
    b, c, h, w = x.shape
    rows = offset[0] + torch.arange(h, device=x.device)
    cols = offset[1] + torch.arange(w, device=x.device)
    out = x.new_zeros(b, c, int(size[0]), w).index_copy(2, rows, x)
    return x.new_zeros(b, c, int(size[0]), int(size[1])).index_copy(3, cols, out)


def _box_mask(size: Sequence[int], offset: Tensor, extent: Sequence[int], device: Any) -> Tensor:
    """(1, 1, H, W) float mask, 1 inside the box ``offset .. offset + extent``."""
    rows = torch.arange(int(size[0]), device=device)
    cols = torch.arange(int(size[1]), device=device)
    inside_r = (rows >= offset[0]) & (rows < offset[0] + int(extent[0]))
    inside_c = (cols >= offset[1]) & (cols < offset[1] + int(extent[1]))
    return (inside_r[:, None] & inside_c[None, :]).float()[None, None]


class HRDAModel(SegmentationModel):
    """A segmentation network run on a context crop and a detail crop, fused by scale attention.

    Args:
        base: the single-scale network (DAFormer); it must return ``"features"`` with
            ``return_features=True``.
        feature_channels: channels of the base's feature levels (MiT-B5: 64, 128, 320, 512).
        num_classes: output classes.
        context_scale: downscaling of the context (HRDA: 0.5).
        detail_crop: (h, w) of the detail crop in input pixels (HRDA: 512 x 512).
        crop_divisible: the detail crop's coordinates are multiples of this (HRDA: 8); must be
            a multiple of ``output_stride / context_scale``.
        detail_slide: at inference, predict the detail with an overlapping sliding window of
            ``detail_crop`` (HRDA); False runs the base once on the full-resolution input.
        attention_classwise: one attention map per class (HRDA) instead of one in total.
        attention_embed_dim: width of the attention head (256).
        attention_dropout: dropout before its classifier (0.1, as the DAFormer head).

    ``forward(x, detail_offset=offset)`` is the training pass (``offset`` from
    :meth:`random_detail_offset`) and returns ``"main"`` (fused logits at 1/4 of ``x``),
    ``"detail"`` (logits of the detail crop, 1/4 of its size), ``"attention"`` and, with
    ``return_features``, ``"features"`` (the context's). Without an offset it is HRDA's
    inference (pseudo-labels, evaluation).
    """

    def __init__(
        self,
        base: SegmentationModel,
        feature_channels: Sequence[int],
        num_classes: int = 19,
        *,
        context_scale: float = 0.5,
        detail_crop: Sequence[int] = (512, 512),
        crop_divisible: int = 8,
        detail_slide: bool = True,
        attention_classwise: bool = True,
        attention_embed_dim: int = 256,
        attention_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 < context_scale <= 1 or (1 / context_scale) != round(1 / context_scale):
            raise ValueError(f"context_scale must be 1/k for an integer k, got {context_scale}")
        self.num_classes = num_classes
        self.output_stride = base.output_stride
        self.base = base
        self.context_scale = float(context_scale)
        self.detail_crop = (int(detail_crop[0]), int(detail_crop[1]))
        self.crop_divisible = int(crop_divisible)
        self.detail_slide = detail_slide
        # the context logits have this stride in input pixels (8 for DAFormer at x0.5)
        self.context_stride = round(self.output_stride / self.context_scale)
        if self.crop_divisible % self.context_stride:
            raise ValueError(
                f"crop_divisible={crop_divisible} must be a multiple of output_stride / "
                f"context_scale = {self.context_stride}, so that the detail crop falls on whole "
                "pixels of the context logits"
            )
        if any(s % self.crop_divisible for s in self.detail_crop):
            raise ValueError(
                f"detail_crop={list(detail_crop)} must be a multiple of crop_divisible="
                f"{crop_divisible}"
            )
        self.scale_attention = ScaleAttentionHead(
            feature_channels,
            num_classes if attention_classwise else 1,
            embed_dim=attention_embed_dim,
            channels=attention_embed_dim,
            dropout=attention_dropout,
        )

    # --- optimiser groups ----------------------------------------------------------------

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """The base network's groups plus the attention head at the head learning rate.

        HRDA's optimiser config matches ``head`` in parameter names (``decode_head.
        scale_attention.*`` included) for ``lr_mult=10``; the attention head keeps weight decay.
        """
        groups = self.base.param_groups(lr, head_lr_mult)
        params = [p for p in self.scale_attention.parameters() if p.requires_grad]
        if params:
            groups.append(
                {
                    "params": params,
                    "lr": lr * head_lr_mult,
                    "lr_mult": head_lr_mult,
                    "name": "scale_attention",
                }
            )
        return groups

    def no_weight_decay_names(self) -> set[str]:
        return {f"base.{n}" for n in self.base.no_weight_decay_names()}

    # --- the detail crop -----------------------------------------------------------------

    def random_detail_offset(
        self, size: Sequence[int], generator: torch.Generator | None, device: Any = None
    ) -> Tensor:
        """A (2,) int64 device tensor ``(y, x)``: the detail crop's top-left corner in a
        context crop of ``size``, uniform over ``0, d, 2d, ...`` (``d = crop_divisible``).

        HRDA's ``get_crop_bbox`` draws ``randint(0, (margin + 1) // d) * d`` per axis
        (``margin = size - crop``), so the last position is never ``margin`` itself when
        ``margin`` is a multiple of ``d``; reproduced here.
        """
        h, w = int(size[-2]), int(size[-1])
        ch, cw = self.detail_crop
        if h < ch or w < cw:
            raise ValueError(f"context crop {h}x{w} is smaller than the detail crop {ch}x{cw}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        d = self.crop_divisible
        ny, nx = max((h - ch + 1) // d, 1), max((w - cw + 1) // d, 1)
        y = torch.randint(ny, (1,), generator=generator, device=device)
        x = torch.randint(nx, (1,), generator=generator, device=device)
        return torch.cat([y, x]) * d

    # --- forward passes -------------------------------------------------------------------

    def _check_size(self, h: int, w: int) -> None:
        if h % self.context_stride or w % self.context_stride:
            raise ValueError(
                f"HRDA needs input sides divisible by {self.context_stride} (output stride "
                f"{self.output_stride} at scale {self.context_scale}), got {h}x{w}"
            )

    def _context(self, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """Context logits, context features and the (sigmoid) scale attention."""
        small = F.interpolate(
            x, scale_factor=self.context_scale, mode="bilinear", align_corners=False
        )
        out = self.base(small, return_features=True)
        attention = torch.sigmoid(self.scale_attention(out["features"]))
        return out["main"], out["features"], attention

    def _fuse(self, context: Tensor, attention: Tensor, detail: Tensor) -> Tensor:
        size = detail.shape[-2:]
        up_context = F.interpolate(
            (1 - attention) * context, size=size, mode="bilinear", align_corners=False
        )
        up_attention = F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
        return up_attention * detail + up_context

    def _slide_detail(self, x: Tensor) -> Tensor:
        """Detail logits over the whole input: overlapping windows (stride half the crop),
        batched in one pass, averaged where they overlap."""
        b, _, h, w = x.shape
        q = self.output_stride
        ch, cw = min(self.detail_crop[0], h), min(self.detail_crop[1], w)
        sh, sw = max(ch // 2, 1), max(cw // 2, 1)
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
                boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
        windows = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes], dim=0)
        logits = self.base(windows)["main"]
        hq, wq = h // q, w // q
        out = logits.new_zeros(b, logits.shape[1], hq, wq)
        count = logits.new_zeros(1, 1, hq, wq)
        for i, (y1, y2, x1, x2) in enumerate(boxes):
            pad = (x1 // q, wq - x2 // q, y1 // q, hq - y2 // q)
            out = out + F.pad(logits[i * b : (i + 1) * b], pad)
            count = count + F.pad(count.new_ones(1, 1, (y2 - y1) // q, (x2 - x1) // q), pad)
        return out / count

    def forward(
        self, x: Tensor, return_features: bool = False, detail_offset: Tensor | None = None
    ) -> SegOutput:
        h, w = x.shape[-2:]
        self._check_size(h, w)
        q = self.output_stride
        context, features, attention = self._context(x)
        if detail_offset is None:
            # inference: detail prediction everywhere, attention unmasked
            if self.detail_slide:
                detail = self._slide_detail(x)
            else:
                detail = F.interpolate(
                    self.base(x)["main"],
                    size=(h // q, w // q),
                    mode="bilinear",
                    align_corners=False,
                )
            fused = self._fuse(context, attention, detail)
        else:
            # training: the detail crop at full resolution, attention only inside it
            detail = self.base(crop_at(x, detail_offset, self.detail_crop))["main"]
            extent = [s // self.context_stride for s in self.detail_crop]
            attention = attention * _box_mask(
                attention.shape[-2:], detail_offset // self.context_stride, extent, x.device
            ).to(attention.dtype)
            inserted = paste_at(detail, detail_offset // q, (h // q, w // q))
            fused = self._fuse(context, attention, inserted)
        out: dict[str, Any] = {"main": fused, "detail": detail, "attention": attention}
        if return_features:
            out["features"] = features
        return out  # type: ignore[return-value]


def build_hrda_daformer(
    num_classes: int = 19,
    weights: StateDictSource | None = None,
    *,
    context_scale: float = 0.5,
    detail_crop: Sequence[int] = (512, 512),
    crop_divisible: int = 8,
    detail_slide: bool = True,
    attention_classwise: bool = True,
    attention_embed_dim: int = 256,
    **daformer_kwargs: Any,
) -> HRDAModel:
    """HRDA around a DAFormer (MiT encoder + DAFormer head); ``weights`` = the MiT ImageNet file,
    ``daformer_kwargs`` go to :class:`gbw.models.daformer.DAFormer` (``encoder``, ``backend``,
    ``fused_attention``, ``embed_dim``, ``channels``, ``dropout``)."""
    from gbw.models.daformer import build_daformer

    base = build_daformer(num_classes, weights=weights, **daformer_kwargs)
    return HRDAModel(
        base,
        base.backbone.out_channels,
        num_classes,
        context_scale=context_scale,
        detail_crop=detail_crop,
        crop_divisible=crop_divisible,
        detail_slide=detail_slide,
        attention_classwise=attention_classwise,
        attention_embed_dim=attention_embed_dim,
        attention_dropout=float(daformer_kwargs.get("dropout", 0.1)),
    )
