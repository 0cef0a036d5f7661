"""What every UDA method is: an ``nn.Module`` with a ``training_step`` that reads like its paper.

The engine owns devices, DDP, precision, optimiser steps' scheduling and checkpoints. A method
owns its networks (``self.model`` and any discriminator or teacher), says which ones are
optimised and how (:meth:`configure_optimizers`), and writes one training iteration:
forward passes, losses, ``step.backward(loss)`` calls and optimiser steps. Every loss term
that takes class weights gets its own strategy from ``self.weighting(term)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.weighting import ClassWeighting, Focal, check_reduction

if TYPE_CHECKING:  # types only: the config module validates method settings, so sits above
    from gbw.config import ExperimentConfig, OptimConfig

Batch = dict[str, Any]  # "image" (B,3,H,W) in [0,1], "label" (B,H,W) when labelled


@dataclass
class Step:
    """What a method may use during one iteration (handed in by the engine)."""

    index: int | Tensor  # 0-based iteration number (a 0-d device tensor in CUDA-graph mode)
    backward: Callable[[Tensor], None]  # precision- and DDP-aware backward
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    max_iters: int = 1


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the module's parameter groups (head at ``lr * head_lr_mult``)."""
    if hasattr(module, "param_groups"):
        groups = module.param_groups(cfg.lr, cfg.head_lr_mult)
    else:
        groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": cfg.lr}]
    groups = [g for g in groups if len(list(g["params"])) > 0]
    fused = {"fused": True} if cfg.fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused
        )
    raise ValueError(f"optim.name must be sgd, adamw or adam, got {cfg.name!r}")


class ReusedWeighting(ClassWeighting):
    """The weights that another term computed at its last call, reused without a solve.

    ``uda.share_weights`` (HRDA, MIC): the detail-crop term reuses the weights of the fused
    term of the same forward pass, so there is one GBW solve per domain instead of one per
    loss call. Logs nothing of its own (the owner's weights are logged under its name).
    Focal loss has no class weights; a reused focal term is the owner's focal loss.
    """

    name = "reused"

    def __init__(self, owner: ClassWeighting, owner_term: str) -> None:
        super().__init__(owner.num_classes, owner.ignore_index)
        self.owner = owner
        self.owner_term = owner_term

    def weights(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        self._check_classes(logits)
        if self.owner.last_weights is None:  # a Python check on an attribute, not a tensor
            raise RuntimeError(
                f"this term reuses the class weights of term {self.owner_term!r}, which has not "
                "computed any yet: compute that term's loss first"
            )
        return self.owner.last_weights

    def cross_entropy(
        self,
        logits: Tensor,
        target: Tensor,
        pixel_weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        if isinstance(self.owner, Focal):
            return self.owner.cross_entropy(logits, target, pixel_weight, reduction)
        return super().cross_entropy(logits, target, pixel_weight, reduction)

    def log_dict(self) -> dict[str, Tensor]:
        return {}

    def __repr__(self) -> str:
        return f"ReusedWeighting(of={self.owner_term!r})"


#: Reductions a recipe's cross-entropy terms may use (``gbw.weighting.losses``): the mean over
#: labelled pixels (DACS ``CrossEntropy2d``, ADVENT ``cross_entropy_2d``, AdaptSegNet
#: ``CrossEntropy2d``), over all pixels (mmseg's ``CrossEntropyLoss`` in DAFormer, HRDA, MIC
#: and the authors' GBW code; DACS's pixel-weighted mixed loss), or PyTorch's weighted mean.
CE_REDUCTIONS = ("labelled_mean", "all_pixel_mean", "mean")


def check_ce_reduction(value: str, key: str) -> str:
    """The canonical name of a recipe's cross-entropy reduction (``valid_mean`` is accepted as
    the older name of ``labelled_mean``), or a ValueError naming ``key``."""
    try:
        name = check_reduction(value, key)
    except ValueError:
        name = ""
    if name not in CE_REDUCTIONS:
        raise ValueError(f"{key} must be one of {CE_REDUCTIONS}, got {value!r}")
    return name


def check_choice(value: object, allowed: tuple, key: str) -> None:
    """A ValueError naming ``key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")


def check_range(
    value: object,
    key: str,
    low: float = 0.0,
    high: float = math.inf,
    *,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """A ValueError naming ``key`` unless ``value`` is a number in ``[low, high]`` (or
    ``[low, high)``), an integer if asked; method settings check themselves this way in their
    dataclass's ``__post_init__``, so a bad ``uda.*`` value fails when the config is loaded."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and (not integer or float(value).is_integer()) and math.isfinite(float(value))
    ok = ok and low <= float(value) and (float(value) < high if high_open else float(value) <= high)
    if not ok:
        top = "" if math.isinf(high) else f", {high:g}{')' if high_open else ']'}"
        span = f"in [{low:g}{top}" if top else f">= {low:g}"
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{key} must be {kind} {span}, got {value!r}")


def check_margins(value: object, key: str) -> None:
    """Four non-negative integers (top, bottom, left, right)."""
    ok = isinstance(value, list | tuple) and len(value) == 4
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok:
        raise ValueError(
            f"{key} must be 4 non-negative integers (top, bottom, left, right), got {value!r}"
        )


def resize_to(logits: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of logits to a label's size.

    ``align_corners=False`` is mmseg's (DAFormer, HRDA, MIC); the DeepLabV2-era references
    upsample with ``nn.Upsample(..., mode='bilinear', align_corners=True)`` (ADVENT
    ``train_UDA.py``, AdaptSegNet ``train_gta2cityscapes_multi.py``, DACS ``trainUDA.py``),
    which their recipes' ``uda.align_corners: true`` reproduces.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class UDAMethod(nn.Module):
    """Base class. Subclasses set ``Config`` (a dataclass) and implement ``training_step``."""

    Config: type = dict
    name = "base"
    uses_target = True

    def __init__(
        self,
        model: nn.Module,
        cfg: Any,
        exp: ExperimentConfig,
        weighting: Callable[[str], ClassWeighting],
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.exp = exp
        self.num_classes = exp.model.num_classes
        self._make_weighting = weighting
        self.weightings: dict[str, ClassWeighting] = {}

    def weighting(
        self, term: str, *, reuse: str | None = None, num_classes: int | None = None
    ) -> ClassWeighting:
        """The class-weighting strategy of one loss term (created on first use, then kept).

        ``reuse=<other term>`` makes this term apply the weights the other term computed at
        its last call (:class:`ReusedWeighting`) instead of computing its own.
        ``num_classes``: a term over other classes than the model's (EDAPS's RoI classes).
        """
        if term not in self.weightings:
            if reuse is not None:
                self.weightings[term] = ReusedWeighting(self.weighting(reuse), reuse)
            elif num_classes is not None:
                self.weightings[term] = self._make_weighting(term, num_classes=num_classes)
            else:
                self.weightings[term] = self._make_weighting(term)
        return self.weightings[term]

    def resize_logits(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """:func:`resize_to` with the recipe's ``uda.align_corners`` (False without one)."""
        return resize_to(logits, size, bool(getattr(self.cfg, "align_corners", False)))

    @property
    def net(self) -> nn.Module:
        """The raw segmentation network, for helpers that are not a forward pass (the engine
        shadows ``self.model`` with its precision/DDP wrapper, which forward must go through)."""
        return self._modules["model"]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by the name of the attribute holding the module they optimise."""
        return {"model": build_optimizer(self.model, self.exp.optim)}

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_optimizer_step(self, step: Step) -> None:
        """Hook after the optimisers stepped (EMA teachers update here)."""

    def eval_model(self) -> nn.Module:
        """The network that is evaluated and exported (the student, as DAFormer reports)."""
        return self.model

    def extra_state(self) -> dict[str, Any]:
        """Non-module state to checkpoint (e.g. random generator states)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def generators(self) -> list[torch.Generator]:
        """The method's own random generators in use (registered with a captured CUDA graph)."""
        return []

    def weighting_logs(self) -> dict[str, Tensor]:
        """Per-term diagnostics of the class weightings, keyed ``<term>/<what>``."""
        out = {}
        for term, w in self.weightings.items():
            for k, v in w.log_dict().items():
                out[f"{term}/{k}"] = v
        return out
