"""MIC: masked image consistency (Hoyer et al., CVPR 2023, https://arxiv.org/abs/2212.01322;
code lhoyer/MIC, ``seg/mmseg/models/uda/masking_consistency_module.py``,
``seg/mmseg/models/utils/masking_transforms.py``).

One more target term on top of HRDA (``uda.base: hrda``, the paper's main setting) or DAFormer
(``uda.base: daformer``): the target image gets its own colour augmentation
(``mask_mode='separatetrgaug'``), 70% of its 64x64 blocks are blanked out (``block``
mask generator, ratio 0.7; MIC uses 32x32 blocks for DAFormer's half-resolution crops; blanked
pixels are 0 after the network's normalisation, as MIC masks normalised images), and
the student must predict on the masked image the pseudo-labels the EMA teacher produced from
the *unmasked* target image, with the same confidence weights (``mask_alpha='same'``,
``mask_pseudo_threshold='same'``: MIC's teacher *is* the DACS teacher). Loss weight
``mask_lambda = 1``; its own backward, after the mixed loss.

With HRDA the masked loss is HRDA's fused + detail loss, so GBW weights two more terms:
``masked`` and ``masked_hr``. As MIC's code (``masked_loss['decode.loss_seg'] *=
self.mask_lambda``), ``mask_lambda`` scales only the fused part of that loss by default
(``uda.mask_lambda_scope: fused``; ``all`` scales the whole term, detail part included; the
same for the recipe's ``mask_lambda = 1``). The masked images get their colour jitter and
blur from one ``strong_transform`` call on the whole batch in MIC: one jitter order and one
blur sigma for all of them (``uda.mask_aug_per_image: false``; ``true`` draws them per
image, as the mixed images get them). The masked term's cross-entropy reduction is the mixed
term's (``uda.mix_ce_reduction``, mmseg's mean over all pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gbw.models.hrda import HRDAModel
from gbw.uda.base import Batch, Step, check_choice, check_range
from gbw.uda.blocks import block_mask, strong_augment
from gbw.uda.hrda import HRDA, HRDAConfig

BASES = ("hrda", "daformer")
MASK_LAMBDA_SCOPES = ("fused", "all")


@dataclass
class MICConfig(HRDAConfig):
    """HRDA (or DAFormer) settings plus masked image consistency."""

    base: str = "hrda"  # hrda (HRDA network) | daformer (single-resolution DAFormer network)
    mask_block_size: int = 64  # side of the square blocks in input pixels (DAFormer: 32)
    mask_ratio: float = 0.7  # share of blocks masked out
    mask_lambda: float = 1.0  # weight of the masked loss
    # fused: mask_lambda scales the fused part of HRDA's masked loss only (MIC's code scales
    # decode.loss_seg, not decode.hr.loss_seg); all: the whole masked term
    mask_lambda_scope: str = "fused"
    mask_color_aug: bool = True  # own colour jitter + blur of the image before masking
    # false: one jitter order and one blur sigma for the whole masked batch (MIC calls
    # strong_transform once on it); true: drawn per image like the mixed images'
    mask_aug_per_image: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.mask_lambda_scope, MASK_LAMBDA_SCOPES, "uda.mask_lambda_scope")
        check_choice(self.base, BASES, "uda.base")
        check_range(self.mask_ratio, "uda.mask_ratio", 0.0, 1.0, high_open=True)
        check_range(self.mask_block_size, "uda.mask_block_size", 1, integer=True)
        check_range(self.mask_lambda, "uda.mask_lambda")


class MIC(HRDA):
    """MIC on HRDA or on DAFormer (``uda.base``): HRDA's loop, whose detail terms vanish on a
    single-resolution network, plus step 5, the masked image consistency."""

    Config = MICConfig
    name = "mic"

    def __init__(self, model, cfg: MICConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        if cfg.base == "daformer" and isinstance(model, HRDAModel):
            raise ValueError(
                "uda.base=daformer needs a single-resolution network (model.name "
                f"daformer_mitb5), got the HRDA network {exp.model.name!r}; use uda.base=hrda"
            )
        super().__init__(model, cfg, exp, weighting)

    def needs_multi_resolution(self, cfg: Any) -> bool:
        return cfg.base == "hrda"

    def mask_fill(self) -> Tensor | None:
        """The colour of masked pixels: the one the network's input normalisation maps to 0.

        MIC multiplies the *normalised* image by the mask, so masked pixels are 0 after
        normalisation, the ImageNet mean colour. gbw's images are RGB in [0, 1] and the network
        normalises them, so the masked pixels are set to that mean instead of black. ``None``
        (black) for a network without an :class:`~gbw.models.base.InputNormalization`.
        """
        core = getattr(self.net, "base", self.net)
        norm = getattr(core, "normalize", None)
        if norm is None:
            return None
        fill = -norm.bias / norm.weight  # y = weight * x + bias = 0
        return fill.flip(1) if norm.bgr else fill

    def masked_images(self, image: Tensor, gen: torch.Generator) -> Tensor:
        """The target images, colour-augmented on their own draws, with random blocks blanked."""
        c = self.cfg
        if c.mask_color_aug:
            # MIC draws new jitter and blur parameters, and always allows the blur
            image = strong_augment(
                image,
                gen,
                jitter_strength=c.color_jitter_strength,
                jitter_p_skip=c.color_jitter_p_skip,
                blur=True,
                random_order=c.color_jitter_random_order,
                same_order_and_sigma=not c.mask_aug_per_image,
                channels=c.color_jitter_channels,
            )
        keep = block_mask(
            image.shape,
            gen,
            block_size=c.mask_block_size,
            ratio=c.mask_ratio,
            device=image.device,
            dtype=image.dtype,
        )
        fill = self.mask_fill()
        if fill is None:
            return image * keep
        return image * keep + fill.to(image.dtype) * (1 - keep)

    def target_consistency(
        self, target: Batch, pseudo: tuple[Tensor, Tensor], step: Step, gen: torch.Generator
    ) -> dict[str, Tensor]:
        # 5. masked image consistency: predict the unmasked image's pseudo-labels from the
        # masked image, with the same confidence weights
        labels, weights = pseudo
        with torch.no_grad():
            image = self.masked_images(target["image"], gen)
        c = self.cfg
        fused_only = c.mask_lambda_scope == "fused"
        loss, logs, _ = self.segmentation_loss(
            "masked",
            image,
            labels,
            weights,
            reduction=c.mix_ce_reduction,
            fused_scale=c.mask_lambda if fused_only else 1.0,
        )
        step.backward(loss if fused_only else c.mask_lambda * loss)
        return logs
