"""Class-weighting strategies: one object per weighted loss term, chosen by config.

Every UDA loss term calls ``strategy.cross_entropy(logits, target, pixel_weight)`` or
``strategy.entropy(logits, valid_mask)`` and never knows which strategy it got
(ARCHITECTURE.md principle 2). Strategies:

* :class:`NoWeighting` - v = 1.
* :class:`GBW` - the paper: v from the per-class loss gradients at the logits, exact QP,
  recomputed from scratch on every call (no momentum, as the authors).
* :class:`LossBasedWeighting` (LBW) - the same QP fed with the per-class *loss values*.
* :class:`InverseFrequency` - fixed weights from source-set statistics: image-level (IF)
  or pixel-level (PF) inverse class frequency.
* :class:`Focal` - unweighted focal loss (FL).

Diagnostics of the last call stay on the device (no host sync); :meth:`log_dict` hands them
to the logger, which decides when to read them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gbw.weighting._checks import (
    check_lam,
    check_pixel_weight,
    check_target,
    check_variant,
    flatten_logits,
)
from gbw.weighting.fused import check_fused, gbw_pass, resolve
from gbw.weighting.losses import (
    cross_entropy_from_probs,
    focal_loss,
    log_softmax,
    weighted_cross_entropy,
    weighted_entropy,
)
from gbw.weighting.qp import solve_class_weights_with_status
from gbw.weighting.signals import (
    _all_reduce_,
    _distributed,
    class_grad_sqnorms,
    entropy_grad_sqnorms,
)

SCALES = ("none", "mean")


class ClassWeighting:
    """Base class: per-class weights for one loss term, and the weighted losses."""

    name = "base"

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.last_weights: Tensor | None = None

    # --- to override -------------------------------------------------------------------
    def weights(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        """(C,) detached class weights for a cross-entropy term."""
        return self._ones(logits)

    def entropy_weights(
        self, logits: Tensor, valid_mask: Tensor | None = None, *, normalize: bool = False
    ) -> Tensor:
        """(C,) detached class weights for an entropy term (``normalize``: the term is divided
        by log C, as ADVENT's; gradient-based strategies scale their signal to match)."""
        return self._ones(logits)

    # --- losses ------------------------------------------------------------------------
    def cross_entropy(
        self,
        logits: Tensor,
        target: Tensor,
        pixel_weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Cross-entropy weighted by this strategy; ``reduction`` as in
        :func:`gbw.weighted_cross_entropy` (PyTorch's ``"mean"`` by default; the recipes pass
        their reference code's reduction by name)."""
        v = self.weights(logits, target, pixel_weight)
        return weighted_cross_entropy(logits, target, v, pixel_weight, self.ignore_index, reduction)

    def entropy(
        self, logits: Tensor, valid_mask: Tensor | None = None, *, normalize: bool = False
    ) -> Tensor:
        """Entropy loss weighted by this strategy."""
        v = self.entropy_weights(logits, valid_mask, normalize=normalize)
        return weighted_entropy(logits, v, valid_mask, normalize=normalize)

    def log_dict(self) -> dict[str, Tensor]:
        """Tensors worth logging after the last call (per-class entries are (C,) tensors)."""
        return {} if self.last_weights is None else {"weights": self.last_weights}

    def _ones(self, logits: Tensor) -> Tensor:
        self._check_classes(logits)
        v = torch.ones(self.num_classes, device=logits.device, dtype=torch.float32)
        self.last_weights = v
        return v

    def _check_classes(self, logits: Tensor) -> None:
        flatten_logits(logits)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_classes} classes but logits "
                f"have {logits.shape[1]} channels"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"


class NoWeighting(ClassWeighting):
    """Uniform weights v = 1: the plain losses."""

    name = "none"

    def log_dict(self) -> dict[str, Tensor]:
        return {}  # constant ones: nothing to log


class _QPWeighting(ClassWeighting):
    """Shared machinery of GBW and LBW: signal -> optional scaling -> exact QP -> weights."""

    def __init__(
        self,
        num_classes: int,
        lam: float = 1.0,
        *,
        scale: str = "none",
        present_only: bool = False,
        ignore_index: int = 255,
        sync: bool = True,
    ) -> None:
        super().__init__(num_classes, ignore_index)
        check_lam(lam)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.lam = float(lam)
        self.scale = scale
        self.present_only = present_only
        self.sync = sync
        self.last_g: Tensor | None = None
        self.last_counts: Tensor | None = None
        self.calls = 0
        self.fallbacks: Tensor | None = None  # device counter: no host sync to update it

    def _solve(self, g: Tensor, present: Tensor) -> Tensor:
        """QP on the signal; ``present`` marks the classes that have pixels in this batch."""
        if self.scale == "mean":
            # g / mean over present classes: makes lam scale-free (METHOD.md section 2).
            n = present.sum().clamp_min(1)
            mean = torch.where(present, g, 0).sum() / n
            g = torch.where(mean > 0, g / mean.clamp_min(torch.finfo(g.dtype).tiny), g)
        v, fell_back = solve_class_weights_with_status(
            g, self.lam, present=present if self.present_only else None
        )
        v = v.float()
        self.last_g, self.last_weights = g.detach(), v.detach()
        fb = fell_back.long().reshape(())
        if self.fallbacks is None or self.fallbacks.device != fb.device:
            self.fallbacks = torch.zeros_like(fb)
        # in place, so that a step captured in a CUDA graph keeps counting on every replay
        self.fallbacks.add_(fb)
        self.calls += 1
        return v

    def log_dict(self) -> dict[str, Tensor]:
        out = super().log_dict()
        if self.last_g is not None:
            out["g"] = self.last_g
            out["max_weight"] = self.last_weights.max()
            out["fallbacks"] = self.fallbacks
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, lam={self.lam}, "
            f"scale={self.scale!r}, present_only={self.present_only})"
        )


class GBW(_QPWeighting):
    """Gradient-based class weighting (Alcover-Couso et al.; paper Sec. 3.2, Eq. 8-12).

    Args:
        num_classes: C.
        lam: lambda of Eq. 11 (paper's best: 1).
        variant: ``"class"`` (paper Eq. 8) or ``"channel"`` (authors' code), see
            :mod:`gbw.weighting.signals`.
        scale: ``"none"`` (authors) or ``"mean"`` (g divided by its mean over present classes
            before the QP; lam becomes scale-free).
        present_only: only classes present in the batch take part in the QP (sum = their
            number); absent classes get the neutral weight 1.
        count_offset: added to n_c (authors: 1).
        use_pixel_weight: pixel weights enter g (Eq. 12). The authors' code does not.
        sync: all-reduce the signal across ranks (identical weights on every GPU).
        fused: how :meth:`cross_entropy` computes weights and loss: ``"auto"`` (the measured
            default of the device), ``True``/``"on"``, ``False``/``"off"`` (unfused), or an
            implementation, ``"torch"`` or ``"triton"`` (see :mod:`gbw.weighting.fused`).

    Example (two lines in an existing loop)::

        gbw = GBW(num_classes=19)
        loss = gbw.cross_entropy(logits, labels)   # instead of F.cross_entropy(...)
    """

    name = "gbw"

    def __init__(
        self,
        num_classes: int,
        lam: float = 1.0,
        variant: str = "class",
        scale: str = "none",
        present_only: bool = False,
        ignore_index: int = 255,
        *,
        count_offset: float = 0,
        use_pixel_weight: bool = True,
        sync: bool = True,
        fused: bool | str = "auto",
    ) -> None:
        super().__init__(
            num_classes,
            lam,
            scale=scale,
            present_only=present_only,
            ignore_index=ignore_index,
            sync=sync,
        )
        check_variant(variant)
        self.variant = variant
        self.count_offset = count_offset
        self.use_pixel_weight = use_pixel_weight
        self.fused = check_fused(fused)

    @classmethod
    def authors(cls, num_classes: int = 19, lam: float = 1.0, **kwargs: Any) -> GBW:
        """The configuration of the authors' public code (METHOD.md section 1)."""
        return cls(
            num_classes,
            lam,
            variant="channel",
            scale="none",
            count_offset=1,
            use_pixel_weight=False,
            **kwargs,
        )

    def _weights(
        self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None, probs: Tensor | None
    ) -> Tensor:
        self._check_classes(logits)
        g, counts = class_grad_sqnorms(
            logits,
            target,
            ignore_index=self.ignore_index,
            pixel_weight=pixel_weight if self.use_pixel_weight else None,
            variant=self.variant,
            count_offset=self.count_offset,
            probs=probs,
            sync=self.sync,
            return_counts=True,
        )
        self.last_counts = counts
        return self._solve(g, counts > 0)

    def weights(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        return self._weights(logits, target, pixel_weight, None)

    def entropy_weights(
        self, logits: Tensor, valid_mask: Tensor | None = None, *, normalize: bool = False
    ) -> Tensor:
        self._check_classes(logits)
        g = entropy_grad_sqnorms(
            logits,
            valid_mask=valid_mask,
            variant=self.variant,
            normalize=normalize,
            sync=self.sync,
        )
        return self._solve(g, torch.ones_like(g, dtype=torch.bool))

    def cross_entropy(
        self,
        logits: Tensor,
        target: Tensor,
        pixel_weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        impl = resolve(self.fused, logits)
        if impl != "off":  # one pass over the logits for weights and loss (gbw.weighting.fused)
            self._check_classes(logits)
            g, self.last_counts, fp = gbw_pass(
                logits,
                target,
                ignore_index=self.ignore_index,
                pixel_weight=pixel_weight,
                use_pixel_weight=self.use_pixel_weight,
                variant=self.variant,
                count_offset=self.count_offset,
                sync=self.sync,
                impl=impl,
            )
            v = self._solve(g, self.last_counts > 0)
            return fp.loss(logits, target, v, pixel_weight, reduction)
        # One softmax serves the weights and the loss (value and backward), so GBW costs
        # little more than the plain loss (benchmarks/gbw_overhead.py).
        z = flatten_logits(logits)
        y = check_target(target, logits, self.ignore_index)
        logp = log_softmax(z.detach())
        yc = torch.where(y != self.ignore_index, y, 0).long()
        logp_y = logp.gather(1, yc.unsqueeze(1)).squeeze(1)
        p = logp.exp_()  # in place: log-probabilities are not needed any more
        del logp
        v = self._weights(logits, target, pixel_weight, p)
        return cross_entropy_from_probs(
            logits, target, p, logp_y, v, pixel_weight, self.ignore_index, reduction
        )

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", variant={self.variant!r})"


class LossBasedWeighting(_QPWeighting):
    """LBW baseline (paper Table 4b): the GBW QP fed with per-class mean losses instead of
    their gradient norms, ``g_c = sum_{i: y_i=c} w_i CE_i / n_c`` (entropy terms: the mean
    per-class entropy term)."""

    name = "lbw"

    def weights(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        self._check_classes(logits)
        z = flatten_logits(logits)
        y = check_target(target, logits, self.ignore_index)
        logp = log_softmax(z.detach())
        valid = y != self.ignore_index
        yc = torch.where(valid, y, 0).long()
        ce = -logp.gather(1, yc.unsqueeze(1)).squeeze(1)
        if pixel_weight is not None:
            ce = ce * check_pixel_weight(pixel_weight, logits).to(ce.dtype)
        ce = torch.where(valid, ce, 0)
        stats = torch.zeros(2, self.num_classes, dtype=ce.dtype, device=ce.device)
        stats[0].index_add_(0, yc.flatten(), ce.flatten())
        stats[1].index_add_(0, yc.flatten(), valid.flatten().to(ce.dtype))
        if _distributed(self.sync):
            stats = _all_reduce_(stats, None)
        g = stats[0] / stats[1].clamp_min(1)
        self.last_counts = stats[1]
        return self._solve(g, stats[1] > 0)

    def entropy_weights(
        self, logits: Tensor, valid_mask: Tensor | None = None, *, normalize: bool = False
    ) -> Tensor:
        self._check_classes(logits)
        z = flatten_logits(logits)
        logp = log_softmax(z.detach())
        ent = -(logp.exp() * logp)
        if valid_mask is None:
            stats = torch.cat([ent.sum((0, 2)), ent.new_full((1,), ent.shape[0] * ent.shape[2])])
        else:
            m = valid_mask.reshape(z.shape[0], 1, -1)
            stats = torch.cat([torch.where(m, ent, 0).sum((0, 2)), m.sum().to(ent.dtype)[None]])
        if _distributed(self.sync):
            stats = _all_reduce_(stats, None)
        g = stats[:-1] / stats[-1].clamp_min(1)
        if normalize and self.num_classes > 1:
            g = g / math.log(self.num_classes)
        return self._solve(g, torch.ones_like(g, dtype=torch.bool))


class InverseFrequency(ClassWeighting):
    """Fixed inverse-frequency weights from source-set statistics (paper Table 4b: IF, PF).

    Args:
        class_stats: (N_images, C) per-image class pixel counts (``gbw data prepare`` writes
            them), or a (C,) vector of frequencies.
        level: ``"image"`` (IF: share of images containing the class) or ``"pixel"`` (PF: share
            of pixels). With a (C,) vector the level only names the log entry.

    Weights are 1/f_c normalised to mean 1 over the classes seen in the statistics; classes
    never seen get the neutral weight 1.
    """

    def __init__(
        self, class_stats: Tensor | np.ndarray, level: str = "image", ignore_index: int = 255
    ) -> None:
        if level not in ("image", "pixel"):
            raise ValueError(f"level must be 'image' or 'pixel', got {level!r}")
        stats = torch.as_tensor(np.asarray(class_stats), dtype=torch.float64)
        if stats.dim() not in (1, 2) or not torch.isfinite(stats).all() or (stats < 0).any():
            raise ValueError(
                "class_stats must be a (N_images, C) matrix of pixel counts or a (C,) vector of "
                f"frequencies, finite and >= 0; got shape {tuple(stats.shape)}"
            )
        if stats.dim() == 2:
            freq = (stats > 0).double().mean(0) if level == "image" else stats.sum(0)
        else:
            freq = stats
        freq = freq / freq.sum().clamp_min(1e-300)
        super().__init__(stats.shape[-1], ignore_index)
        seen = freq > 0
        inv = torch.where(seen, 1.0 / freq.clamp_min(1e-300), 0)
        inv = inv / (inv.sum() / seen.sum().clamp_min(1))
        self.name = "if" if level == "image" else "pf"
        self.level = level
        self.frequencies = freq.float()
        self.fixed_weights = torch.where(seen, inv, 1.0).float()

    def weights(self, logits: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        self._check_classes(logits)
        v = self.fixed_weights.to(logits.device)
        self.fixed_weights = v  # move once, then reuse
        self.last_weights = v
        return v

    def entropy_weights(
        self, logits: Tensor, valid_mask: Tensor | None = None, *, normalize: bool = False
    ) -> Tensor:
        return self.weights(logits, None)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"InverseFrequency(num_classes={self.num_classes}, level={self.level!r})"


class Focal(ClassWeighting):
    """Focal loss (paper Table 4b, FL): unweighted classes, down-weighted easy pixels."""

    name = "focal"

    def log_dict(self) -> dict[str, Tensor]:
        return {}  # classes are not weighted

    def __init__(self, num_classes: int, gamma: float = 2.0, ignore_index: int = 255) -> None:
        super().__init__(num_classes, ignore_index)
        self.gamma = gamma

    def cross_entropy(
        self,
        logits: Tensor,
        target: Tensor,
        pixel_weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        self._ones(logits)
        return focal_loss(
            logits, target, self.gamma, None, pixel_weight, self.ignore_index, reduction
        )


WEIGHTINGS = ("none", "gbw", "gbw_authors", "lbw", "if", "pf", "focal")


def make_weighting(
    name: str, num_classes: int, *, class_stats: Any = None, ignore_index: int = 255, **kwargs: Any
) -> ClassWeighting:
    """Build a strategy by config name: none | gbw | gbw_authors | lbw | if | pf | focal.

    ``kwargs`` go to the strategy (e.g. ``lam``, ``variant``, ``scale`` for gbw; ``gamma`` for
    focal). ``if``/``pf`` need ``class_stats``.
    """
    if name == "none":
        return NoWeighting(num_classes, ignore_index)
    if name == "gbw":
        return GBW(num_classes, ignore_index=ignore_index, **kwargs)
    if name == "gbw_authors":
        return GBW.authors(num_classes, ignore_index=ignore_index, **kwargs)
    if name == "lbw":
        return LossBasedWeighting(num_classes, ignore_index=ignore_index, **kwargs)
    if name in ("if", "pf"):
        if class_stats is None:
            raise ValueError(f"weighting {name!r} needs class_stats (run `gbw data prepare`)")
        w = InverseFrequency(class_stats, "image" if name == "if" else "pixel", ignore_index)
        if w.num_classes != num_classes:
            raise ValueError(f"class_stats has {w.num_classes} classes, expected {num_classes}")
        return w
    if name == "focal":
        return Focal(num_classes, ignore_index=ignore_index, **kwargs)
    raise ValueError(f"unknown weighting {name!r}; expected one of {WEIGHTINGS}")
