"""AdaptSegNet: multi-level adversarial adaptation in the output space (Tsai et al., CVPR 2018,
https://arxiv.org/abs/1802.10349, github.com/wasidennis/AdaptSegNet).

A fully-convolutional discriminator learns to tell the segmentation network's softmax maps of
source images from those of target images; the network is trained to fool it on target images.
Multi-level: a second discriminator does the same for the auxiliary classifier on conv4
(DeepLabV2 ``layer5``), whose source loss also enters with weight 0.1.

Per iteration (``train_gta2cityscapes_multi.py``), all networks stepped once at the end:

1. source: ``CE(main) + 0.1 * CE(aux)``, logits upsampled to the label size first;
2. target: discriminators frozen, ``0.001 * BCE(D_main(p_main), source) + 0.0002 *
   BCE(D_aux(p_aux), source)`` on the upsampled softmax maps ``p`` (labels: source 0, target 1);
3. discriminators: ``BCE(D(p_src), source) / 2`` and ``BCE(D(p_trg), target) / 2`` on detached
   maps, for each level.

Class weighting: GBW (or any strategy) weights the two source cross-entropy terms, each with its
own weights (``src``, ``src_aux``). The adversarial terms have no per-class loss to weight: the
discriminator judges a whole patch of the softmax map at once, so there is no ``l_c`` of the
paper's Eq. 1 to take a gradient of (ADVENT, :mod:`gbw.uda.advent`, has one: the entropy).

This module also holds what ADVENT and MinEnt share with AdaptSegNet: the multi-level source
loss (:class:`MultiLevelMethod`) and the discriminator training (:class:`AdaptSegNet`, of which
:class:`gbw.uda.advent.AdvEnt` only changes the discriminator's input).

Several GPUs: in step 2 the discriminators are called *unwrapped* (``self._modules[name]``,
parameters frozen), because a DDP-wrapped module whose parameters get no gradient in a backward
pass stalls DDP's gradient reduction; step 3 calls the DDP wrappers, one backward per forward,
so their gradients are averaged over the processes. Freezing toggles ``requires_grad`` on the
raw parameters, which the DDP wrapper shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.models.discriminator import FCDiscriminator
from gbw.uda.base import (
    Batch,
    Step,
    UDAMethod,
    build_optimizer,
    check_ce_reduction,
    check_choice,
    check_range,
)

LEVELS = ("main", "aux")
# Loss-term names (each its own class-weighting strategy) and log prefixes, by output level.
SOURCE_TERMS = {"main": "src", "aux": "src_aux"}
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0  # the discriminators' domain labels (AdaptSegNet, ADVENT)
GANS = ("vanilla", "ls")


@dataclass
class MultiLevelConfig:
    """Settings of the DeepLabV2 multi-level source loss (AdaptSegNet, ADVENT, MinEnt)."""

    # Train the auxiliary conv4 classifier too (ADVENT ``MULTI_LEVEL``, AdaptSegNet "multi");
    # needs a model with an "aux" output (``model.kwargs.aux: true``).
    multi_level: bool = True
    lambda_seg_main: float = 1.0  # ADVENT LAMBDA_SEG_MAIN
    lambda_seg_aux: float = 0.1  # ADVENT LAMBDA_SEG_AUX, AdaptSegNet LAMBDA_SEG
    # labelled_mean: CE averaged over labelled pixels (ADVENT utils/loss.py cross_entropy_2d,
    # AdaptSegNet utils/loss.py CrossEntropy2d); all_pixel_mean: over all pixels, ignored ones
    # as zeros (mmseg, the GBW authors' code); mean: PyTorch's weighted mean
    ce_reduction: str = "labelled_mean"
    # logits upsampled to the input size with align_corners=True (ADVENT train_UDA.py and
    # AdaptSegNet pytorch_0.4/train_gta2cityscapes_multi.py nn.Upsample; the original script,
    # for PyTorch < 0.4, had align_corners=True behaviour); false: mmseg's
    align_corners: bool = True

    def __post_init__(self) -> None:
        self.ce_reduction = check_ce_reduction(self.ce_reduction, "uda.ce_reduction")
        check_range(self.lambda_seg_main, "uda.lambda_seg_main")
        check_range(self.lambda_seg_aux, "uda.lambda_seg_aux")


@dataclass
class AdaptSegNetConfig(MultiLevelConfig):
    lambda_adv_main: float = 0.001  # LAMBDA_ADV_TARGET2 (ADVENT LAMBDA_ADV_MAIN)
    lambda_adv_aux: float = 0.0002  # LAMBDA_ADV_TARGET1 (ADVENT LAMBDA_ADV_AUX)
    disc_lr: float = 1e-4  # LEARNING_RATE_D; the engine's poly schedule applies to it too
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # Adam, both refs
    disc_ndf: int = 64  # width of the discriminator's first layer (64 in both papers)
    # vanilla: BCE on the discriminator logits (the papers); ls: least squares on the raw
    # outputs (AdaptSegNet ``--gan LS``; the AdvSeg of lhoyer/MIC's mmseg port uses it).
    gan: str = "vanilla"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.lambda_adv_main, "uda.lambda_adv_main")
        check_range(self.lambda_adv_aux, "uda.lambda_adv_aux")
        check_range(self.disc_lr, "uda.disc_lr")
        if len(self.disc_betas) != 2:
            raise ValueError(f"uda.disc_betas must be 2 numbers in [0, 1), got {self.disc_betas}")
        for b in self.disc_betas:
            check_range(b, "uda.disc_betas[]", 0.0, 1.0, high_open=True)
        check_range(self.disc_ndf, "uda.disc_ndf", 1, integer=True)
        check_choice(self.gan, GANS, "uda.gan")


def gan_loss(logits: Tensor, domain: float, kind: str = "vanilla") -> Tensor:
    """Discriminator loss of patch logits against a constant domain label (0 source, 1 target).

    ``torch.full_like`` builds the label on the logits' device (no host copy per call, unlike
    the references' ``FloatTensor(...).fill_().cuda()``).
    """
    logits = logits.float()
    label = torch.full_like(logits, domain)
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, label)
    if kind == "ls":
        return F.mse_loss(logits, label)
    raise ValueError(f"uda.gan must be one of {GANS}, got {kind!r}")


@contextlib.contextmanager
def frozen(modules: list[nn.Module]) -> Iterator[None]:
    """Parameters of ``modules`` take no gradient inside the block (ADVENT/AdaptSegNet's
    ``requires_grad = False`` while the segmentation network learns to fool them)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class MultiLevelMethod(UDAMethod):
    """Shared by AdaptSegNet, ADVENT and MinEnt: upsampled multi-level outputs and step 1,
    the weighted source cross-entropy on the main and (multi-level) auxiliary outputs."""

    Config = MultiLevelConfig

    def __init__(self, model, cfg: MultiLevelConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, exp, weighting)
        self.levels: tuple[str, ...] = LEVELS if cfg.multi_level else LEVELS[:1]

    def outputs(self, image: Tensor) -> dict[str, Tensor]:
        """Logits of every trained level, upsampled to the input size (as the references'
        ``interp``: the losses and discriminators work at full input resolution)."""
        out = self.model(image)
        has_aux = "aux" in out
        if self.cfg.multi_level and not has_aux:
            raise ValueError(
                f"method {self.name!r} with uda.multi_level=true needs a model with an auxiliary "
                "classifier: set model.kwargs.aux=true (or uda.multi_level=false)"
            )
        if not self.cfg.multi_level and has_aux:
            # Its parameters would get no gradient: wasted work, and DDP stalls on them.
            raise ValueError(
                f"method {self.name!r} with uda.multi_level=false: the model has an auxiliary "
                "classifier that would never be trained; set model.kwargs.aux=false"
            )
        return {level: self.resize_logits(out[level], image.shape[-2:]) for level in self.levels}

    def source_step(self, source: Batch, step: Step) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Step 1: ``lambda_seg_main * CE(main) + lambda_seg_aux * CE(aux)`` on source, backward.

        Returns the upsampled source logits by level and the logs ``src.ce``/``src_aux.ce``.
        """
        label = source["label"]
        logits = self.outputs(source["image"])
        weight = {"main": self.cfg.lambda_seg_main, "aux": self.cfg.lambda_seg_aux}
        losses = {
            level: self.weighting(SOURCE_TERMS[level]).cross_entropy(
                self.resize_logits(logits[level], label.shape[-2:]),
                label,
                reduction=self.cfg.ce_reduction,
            )
            for level in self.levels
        }
        step.backward(sum(weight[level] * losses[level] for level in self.levels))
        logs = {f"{SOURCE_TERMS[level]}.ce": loss.detach() for level, loss in losses.items()}
        return logits, logs


class AdaptSegNet(MultiLevelMethod):
    """Output-space adversarial adaptation; :class:`gbw.uda.advent.AdvEnt` changes only what
    the discriminators see (:meth:`discriminator_input`, :meth:`map_weights`)."""

    Config = AdaptSegNetConfig
    name = "adaptsegnet"

    def __init__(self, model, cfg: AdaptSegNetConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, exp, weighting)
        # Registered as attributes so that the engine wraps each one with its optimiser.
        for level in self.levels:
            setattr(self, f"disc_{level}", FCDiscriminator(self.num_classes, cfg.disc_ndf))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """SGD for the segmentation network, Adam(1e-4, betas 0.9/0.99, no weight decay) per
        discriminator; the engine's poly schedule scales every optimiser's initial rate, as
        ADVENT's ``adjust_learning_rate_discriminator`` (same power and length)."""
        d_optim = replace(
            self.exp.optim,
            name="adam",
            lr=self.cfg.disc_lr,
            betas=list(self.cfg.disc_betas),
            weight_decay=0.0,
        )
        optimizers = super().configure_optimizers()
        for level in self.levels:
            optimizers[f"disc_{level}"] = build_optimizer(self._modules[f"disc_{level}"], d_optim)
        return optimizers

    # --- what the discriminators judge (ADVENT overrides both) --------------------------------
    def map_weights(self, level: str, target_logits: Tensor) -> Tensor | None:
        """Per-class weights of the discriminator's input channels (none for softmax maps)."""
        return None

    def discriminator_input(self, logits: Tensor, weights: Tensor | None) -> Tensor:
        """The softmax map of upsampled logits."""
        return F.softmax(logits.float(), dim=1)

    # --- the algorithm ------------------------------------------------------------------------
    def _raw_disc(self, level: str) -> nn.Module:
        return self._modules[f"disc_{level}"]

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        assert target is not None
        c = self.cfg
        for opt in step.optimizers.values():
            opt.zero_grad(set_to_none=True)

        # 1. segmentation loss on the labelled source images
        src_logits, logs = self.source_step(source, step)

        # 2. adversarial loss: target maps should look like source ones to the frozen
        #    discriminators (called unwrapped: no DDP reduction for parameters without grads)
        trg_logits = self.outputs(target["image"])
        weights = {level: self.map_weights(level, trg_logits[level]) for level in self.levels}
        trg_maps = {
            level: self.discriminator_input(trg_logits[level], weights[level])
            for level in self.levels
        }
        lambda_adv = {"main": c.lambda_adv_main, "aux": c.lambda_adv_aux}
        with frozen([self._raw_disc(level) for level in self.levels]):
            adv = {
                level: gan_loss(
                    self._raw_disc(level)(self._disc_dtype(level, trg_maps[level])),
                    SOURCE_LABEL,
                    c.gan,
                )
                for level in self.levels
            }
            step.backward(sum(lambda_adv[level] * adv[level] for level in self.levels))
        logs |= {f"adv_trg.{level}": loss.detach() for level, loss in adv.items()}

        # 3. discriminators: source maps -> "source", target maps -> "target", each loss / 2;
        #    one backward per forward (what DDP expects of a wrapped module)
        for level in self.levels:
            disc = getattr(self, f"disc_{level}")
            src_map = self.discriminator_input(src_logits[level].detach(), weights[level])
            loss_src = gan_loss(disc(src_map), SOURCE_LABEL, c.gan)
            step.backward(loss_src / 2)
            loss_trg = gan_loss(disc(trg_maps[level].detach()), TARGET_LABEL, c.gan)
            step.backward(loss_trg / 2)
            prefix = "disc" if level == "main" else f"disc_{level}"
            logs[f"{prefix}.src"] = loss_src.detach()
            logs[f"{prefix}.trg"] = loss_trg.detach()

        # 4. one step of every network
        for opt in step.optimizers.values():
            opt.step()
        return logs

    def _disc_dtype(self, level: str, x: Tensor) -> Tensor:
        # The unwrapped discriminator skips Fabric's input casting; match its parameters
        # (a no-op in fp32 and under bf16 autocast, needed for "bf16-true" precision).
        return x.to(next(self._raw_disc(level).parameters()).dtype)
