"""The DAFormer network: MiT encoder + DAFormer decoder (Hoyer et al., CVPR 2022), also the
segmentation network of HRDA and MIC.

Input RGB in [0, 1], ImageNet mean/std normalisation inside (DAFormer's ``img_norm_cfg``).
Logits at 1/4 of the input. Optimiser groups follow DAFormer's AdamW config
(``configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py``:
lr 6e-5, weight decay 0.01, ``paramwise_cfg.custom_keys``: ``head`` lr x10, ``norm``
decay x0): the decoder at 10x lr, the encoder's LayerNorm parameters without weight decay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from gbw.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputNormalization,
    SegmentationModel,
    SegOutput,
    StateDictSource,
)
from gbw.models.daformer_head import DAFormerHead
from gbw.models.mit import Backend, MiTConfig, MiTEncoder, load_mit_weights

log = logging.getLogger(__name__)


class DAFormer(SegmentationModel):
    """MiT encoder + DAFormer head.

    Args:
        num_classes: output classes.
        encoder: MiT variant (``"b5"`` in DAFormer/HRDA/MIC; ``"tiny"`` for tests), a
            :class:`~gbw.models.mit.MiTConfig` or a dict of its fields.
        backend: ``"smp"`` or ``"hf"`` (:mod:`gbw.models.mit`).
        fused_attention: use ``F.scaled_dot_product_attention`` in the encoder.
        embed_dim, channels, dilations, dropout: decoder options (DAFormer: 256, 256,
            (1, 6, 12, 18), 0.1).
    """

    output_stride = 4
    head_prefixes = ("decode_head",)

    def __init__(
        self,
        num_classes: int = 19,
        *,
        encoder: str | MiTConfig | dict[str, Any] = "b5",
        backend: Backend = "smp",
        fused_attention: bool = False,
        embed_dim: int = 256,
        channels: int = 256,
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
        self.backbone = MiTEncoder(encoder, backend=backend, fused_attention=fused_attention)
        self.decode_head = DAFormerHead(
            self.backbone.out_channels,
            num_classes,
            embed_dim=embed_dim,
            channels=channels,
            dilations=dilations,
            dropout=dropout,
        )

    def forward(self, x: Tensor, return_features: bool = False) -> SegOutput:
        feats = self.backbone(self.normalize(x))
        out: SegOutput = {"main": self.decode_head(feats)}
        if return_features:
            out["features"] = feats
        return out

    def no_weight_decay_names(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay_names()}


def build_daformer(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> DAFormer:
    """A DAFormer whose MiT encoder starts from ``weights`` (a local SegFormer ImageNet-1k
    ``mit_b*.pth``; None = random init); ``kwargs`` go to :class:`DAFormer`."""
    model = DAFormer(num_classes, **kwargs)
    if weights is not None:
        log.info(load_mit_weights(model.backbone, weights).summary())
    return model
