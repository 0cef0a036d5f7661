"""DACS: domain adaptation via cross-domain mixed sampling (Tranheden et al., WACV 2021).

Self-training with a mean teacher: target pseudo-labels from an EMA of the student, source
classes pasted onto target images (ClassMix), a strong colour/blur augmentation of the mixed
image, and a cross-entropy on the mixed image weighted by the pseudo-labels' confidence.
DAFormer, HRDA and MIC keep this loop and add to it. GBW weights both loss terms, each with
its own weights per call as in the authors' code (``src`` and ``mix``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gbw.uda.base import Batch, Step, UDAMethod, resize_to
from gbw.uda.blocks import EMATeacher, class_mix_masks, mix, pseudo_labels, strong_augment


@dataclass
class DACSConfig:
    ema_alpha: float = 0.99  # teacher EMA (DACS 0.99; DAFormer/HRDA/MIC 0.999)
    pseudo_threshold: float = 0.968  # confidence a pseudo-label pixel must reach to count
    pseudo_weighting: str = "fraction"  # fraction of confident pixels as the pixel weight
    # pixel rows/columns whose pseudo-labels are not trusted: top, bottom, left, right
    # (DAFormer: 15 top / 120 bottom at 512x512 crops; HRDA/MIC: 30, 240, 30, 30)
    pseudo_margins: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    mix_per_image: bool = True  # half the classes of each source image (DACS paper); False =
    # DAFormer's code, which draws from the classes of the whole source batch
    color_jitter_strength: float = 0.2
    color_jitter_p_skip: float = 0.2  # DAFormer's "p": jitter is applied with prob. 1 - p
    blur: bool = True  # Gaussian blur with p = 0.5, sigma ~ U(0.15, 1.15)
    mix_loss_weight: float = 1.0


class DACS(UDAMethod):
    Config = DACSConfig
    name = "dacs"

    def __init__(self, model, cfg: DACSConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, exp, weighting)
        self.teacher = EMATeacher(model, cfg.ema_alpha)
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

    def pseudo_label(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher pseudo-labels and pixel weights for target images (B, 3, H, W)."""
        logits = resize_to(self.teacher(image)["main"].float(), image.shape[-2:])
        return pseudo_labels(
            logits,
            self.cfg.pseudo_threshold,
            margins=tuple(self.cfg.pseudo_margins),
            weighting=self.cfg.pseudo_weighting,
        )

    def mixed_batch(
        self, source: Batch, target: Batch, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """ClassMix source classes onto target images, then the strong augmentation."""
        c = self.cfg
        pl, pw = self.pseudo_label(target["image"])
        m = class_mix_masks(
            source["label"], gen, num_classes=self.num_classes, per_image=c.mix_per_image
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
        )
        return image, label, weight

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        assert target is not None
        opt = step.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        gen = self.generator(source["image"].device)

        # 1. supervised loss on the labelled source images
        logits = resize_to(self.model(source["image"])["main"], source["label"].shape[-2:])
        loss_src = self.weighting("src").cross_entropy(logits, source["label"])
        step.backward(loss_src)

        # 2. pseudo-labelled, class-mixed target images, weighted by the teacher's confidence
        with torch.no_grad():
            image, label, weight = self.mixed_batch(source, target, gen)
        logits = resize_to(self.model(image)["main"], label.shape[-2:])
        loss_mix = self.weighting("mix").cross_entropy(logits, label, weight)
        step.backward(self.cfg.mix_loss_weight * loss_mix)

        opt.step()
        return {
            "src.ce": loss_src.detach(),
            "mix.ce": loss_mix.detach(),
            "diag.pseudo_weight": weight.mean(),
        }

    def after_optimizer_step(self, step: Step) -> None:
        # DAFormer updates the teacher at the start of iteration i with alpha_i; doing it
        # after step i-1's optimiser step is the same update.
        self.teacher.update(self._modules["model"], step.index + 1)

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self._gen.get_state()} if self._gen is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self._gen_state = state["generator"]
            if self._gen is not None:
                self._gen.set_state(self._gen_state)
