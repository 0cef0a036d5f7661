"""DACS: domain adaptation via cross-domain mixed sampling (Tranheden et al., WACV 2021).

Self-training with a mean teacher: target pseudo-labels from an EMA of the student, source
classes pasted onto target images (ClassMix), a strong colour/blur augmentation of the mixed
image, and a cross-entropy on the mixed image weighted by the pseudo-labels' confidence.
DAFormer, HRDA and MIC keep this loop and add to it through three hooks:
:meth:`DACS.segmentation_loss` (HRDA: fused + detail loss), :meth:`DACS.source_loss`
(DAFormer: + ImageNet feature distance) and :meth:`DACS.target_consistency` (MIC: masked
images). GBW weights every loss term, each with its own weights per call as in the authors'
code (``src`` and ``mix`` here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gbw.uda.base import (
    Batch,
    Step,
    UDAMethod,
    check_ce_reduction,
    check_choice,
    check_margins,
    check_range,
)
from gbw.uda.blocks import (
    TEACHER_BN,
    EMATeacher,
    class_mix_masks,
    mix,
    pseudo_labels,
    strong_augment,
)

EMA_FIRST_UPDATES = ("copy", "half")


@dataclass
class DACSConfig:
    """DACS settings; each default is what vikolss/DACS's code does (docs/recipe_options.md)."""

    ema_alpha: float = 0.99  # teacher EMA (DACS 0.99; DAFormer/HRDA/MIC 0.999)
    # the teacher's first EMA update after optimiser step 0: copy = alpha_0 = 0, the student
    # is copied (DACS trainUDA.py update_ema_variables(iteration=i_iter)); half = alpha_0 =
    # 1/2, averaged with the initial weights (DAFormer dacs.py _update_ema(local_iter))
    ema_first_update: str = "copy"
    # batch: the teacher's BatchNorm uses the statistics of the batch it predicts, only the
    # parameters are averaged (every reference: teacher in train mode, dropout off); ema: eval
    # mode with BN running statistics averaged like the parameters (gbw's alternative)
    teacher_bn: str = "batch"
    pseudo_threshold: float = 0.968  # confidence a pseudo-label pixel must reach to count
    pseudo_weighting: str = "fraction"  # fraction of confident pixels as the pixel weight
    # pixel rows/columns whose pseudo-labels are not trusted: top, bottom, left, right
    # (DAFormer: 15 top / 120 bottom at 512x512 crops; HRDA/MIC: 30, 240, 30, 30)
    pseudo_margins: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    mix_per_image: bool = True  # half the classes of each source image (DACS paper); False =
    # DAFormer's code, which draws from the classes of the whole source batch
    # the ignore label is one of the classes ClassMix draws from (DACS trainUDA.py: the
    # filter classes[classes != ignore_label] is commented out; DAFormer get_class_masks
    # too); false: only real classes (the DACS paper's "half of the classes")
    mix_count_ignore: bool = True
    color_jitter_strength: float = 0.25  # DACS transformsgpu.colorJitter s=0.25 (DAFormer 0.2)
    color_jitter_p_skip: float = 0.2  # DAFormer's "p": jitter is applied with prob. 1 - p
    # kornia 0.5.8 (pinned by DAFormer/MIC) applies the four jitter ops in a random order;
    # False applies them in a fixed order, ~2x cheaper (the CPU demo uses it)
    color_jitter_random_order: bool = True
    # bgr: the jitter sees the images in BGR order (DACS transformsgpu.colorJitter gets the
    # BGR network input); rgb: in RGB order (DAFormer/MIC, mmseg's to_rgb=True)
    color_jitter_channels: str = "bgr"
    blur: bool = True  # Gaussian blur with p = 0.5, sigma ~ U(0.15, 1.15)
    mix_loss_weight: float = 1.0
    # cross-entropy reductions (gbw.weighting.losses): source = CrossEntropy2d, the mean over
    # labelled pixels; mixed = CrossEntropyLoss2dPixelWiseWeighted, torch.mean over all pixels
    src_ce_reduction: str = "labelled_mean"
    mix_ce_reduction: str = "all_pixel_mean"
    # logits upsampled with align_corners=True (DACS trainUDA.py interp); false: mmseg's
    align_corners: bool = True

    def __post_init__(self) -> None:
        check_choice(self.ema_first_update, EMA_FIRST_UPDATES, "uda.ema_first_update")
        check_choice(self.teacher_bn, TEACHER_BN, "uda.teacher_bn")
        check_choice(self.color_jitter_channels, ("rgb", "bgr"), "uda.color_jitter_channels")
        self.src_ce_reduction = check_ce_reduction(self.src_ce_reduction, "uda.src_ce_reduction")
        self.mix_ce_reduction = check_ce_reduction(self.mix_ce_reduction, "uda.mix_ce_reduction")
        check_range(self.ema_alpha, "uda.ema_alpha", 0.0, 1.0)
        check_range(self.pseudo_threshold, "uda.pseudo_threshold", 0.0, 1.0)
        check_choice(
            self.pseudo_weighting, ("fraction", "per_pixel", "none"), "uda.pseudo_weighting"
        )
        check_margins(self.pseudo_margins, "uda.pseudo_margins")
        check_range(self.color_jitter_strength, "uda.color_jitter_strength")
        check_range(self.color_jitter_p_skip, "uda.color_jitter_p_skip", 0.0, 1.0)
        check_range(self.mix_loss_weight, "uda.mix_loss_weight")


class DACS(UDAMethod):
    Config = DACSConfig
    name = "dacs"

    def __init__(self, model, cfg: DACSConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, exp, weighting)
        self.teacher = EMATeacher(model, cfg.ema_alpha, bn=cfg.teacher_bn)
        self._gen: torch.Generator | None = None
        self._gen_state: Tensor | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The method's own random stream (mixing, augmentation) on the batch's device."""
        if self._gen is None:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self.exp.seed + 7919)
            if self._gen_state is not None:
                self._gen.set_state(self._gen_state)
        return self._gen

    def pseudo_label(self, image: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher pseudo-labels and pixel weights for target images (B, 3, H, W).

        ``valid`` (B, H, W): the loader's ``valid_pseudo_mask`` (HRDA/MIC draw the untrusted
        margins on the full image before cropping); the weight is zero outside it.
        """
        logits = self.resize_logits(self.teacher(image)["main"].float(), image.shape[-2:])
        labels, weight = pseudo_labels(
            logits,
            self.cfg.pseudo_threshold,
            margins=tuple(self.cfg.pseudo_margins),
            weighting=self.cfg.pseudo_weighting,
        )
        if valid is not None:
            weight = weight * valid.to(weight.dtype)
        return labels, weight

    def mixed_batch(
        self,
        source: Batch,
        target: Batch,
        gen: torch.Generator,
        pseudo: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """ClassMix source classes onto target images, then the strong augmentation.

        ``pseudo``: the target's (labels, weights) if already computed (else the teacher runs).
        """
        c = self.cfg
        if pseudo is None:
            pseudo = self.pseudo_label(target["image"], target.get("valid_pseudo_mask"))
        pl, pw = pseudo
        m = class_mix_masks(
            source["label"],
            gen,
            num_classes=self.num_classes,
            per_image=c.mix_per_image,
            count_ignore=c.mix_count_ignore,
        )
        image = mix(m, source["image"], target["image"])
        label = mix(m, source["label"], pl)
        weight = mix(m, 1.0, pw)
        image = strong_augment(
            image,
            gen,
            jitter_strength=c.color_jitter_strength,
            jitter_p_skip=c.color_jitter_p_skip,
            blur=c.blur,
            random_order=c.color_jitter_random_order,
            channels=c.color_jitter_channels,
        )
        return image, label, weight

    # --- hooks that DAFormer, HRDA and MIC extend ------------------------------------------

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
        """One forward pass and its class-weighted cross-entropy (HRDA adds its detail loss).

        ``reduction``: the term's (``uda.src_ce_reduction`` or ``uda.mix_ce_reduction``).
        ``fused_scale`` multiplies the loss of the network's main output (here: the whole
        loss; HRDA: the fused part only, as MIC's ``mask_lambda``). Returns ``(loss, logs,
        model output)``; the logs hold the unscaled ``<term>.ce``.
        """
        out = self.model(image, return_features=True) if features else self.model(image)
        logits = self.resize_logits(out["main"], label.shape[-2:])
        loss = self.weighting(term).cross_entropy(logits, label, weight, reduction)
        return fused_scale * loss, {f"{term}.ce": loss.detach()}, out

    def source_loss(self, source: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Step 1's loss on the labelled source images (DAFormer adds its feature distance)."""
        loss, logs, _ = self.segmentation_loss(
            "src", source["image"], source["label"], reduction=self.cfg.src_ce_reduction
        )
        return loss, logs

    def target_consistency(
        self, target: Batch, pseudo: tuple[Tensor, Tensor], step: Step, gen: torch.Generator
    ) -> dict[str, Tensor]:
        """Step 5: further target terms, each back-propagated here (MIC's masked image
        consistency); none in DACS."""
        return {}

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        assert target is not None
        opt = step.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        gen = self.generator(source["image"].device)

        # 1. supervised loss on the labelled source images
        loss_src, logs = self.source_loss(source)
        step.backward(loss_src)

        with torch.no_grad():
            # 2. target pseudo-labels from the EMA teacher, weighted by their confidence
            pseudo = self.pseudo_label(target["image"], target.get("valid_pseudo_mask"))
            # 3. source classes pasted onto the target images (ClassMix), strong augmentation
            image, label, weight = self.mixed_batch(source, target, gen, pseudo)

        # 4. confidence-weighted cross-entropy on the mixed images
        loss_mix, mix_logs, _ = self.segmentation_loss(
            "mix", image, label, weight, reduction=self.cfg.mix_ce_reduction
        )
        step.backward(self.cfg.mix_loss_weight * loss_mix)
        logs |= mix_logs

        # 5. further target terms (MIC); then one optimiser step for all the gradients
        logs |= self.target_consistency(target, pseudo, step, gen)
        opt.step()
        logs["diag.pseudo_weight"] = weight.mean()
        return logs

    def after_optimizer_step(self, step: Step) -> None:
        # DACS updates the teacher after optimiser step i with alpha = min(1 - 1/(i+1), alpha)
        # ("copy": the first update copies the student). DAFormer updates it at the start of
        # iteration i + 1 with min(1 - 1/(i+2), alpha), the same as here after step i ("half").
        offset = 1 if self.cfg.ema_first_update == "half" else 0
        self.teacher.update(self._modules["model"], step.index + offset)

    def generators(self) -> list[torch.Generator]:
        return [self._gen] if self._gen is not None else []

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self._gen.get_state()} if self._gen is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self._gen_state = state["generator"]
            if self._gen is not None:
                self._gen.set_state(self._gen_state)
