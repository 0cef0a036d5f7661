"""Class-weighted losses. Class weights are explicit tensors (never hidden state) and constants:
no gradient flows through them.

Reductions, by name (per-pixel loss ``l_i = v_{y_i} * w_i * CE_i``, ``v`` the class weights,
``w`` the optional pixel weights, ignored pixels contributing 0):

* ``"mean"`` (default) - PyTorch's: ``sum_i l_i / sum_{i labelled} v_{y_i}``. Without class
  weights this is the mean over the labelled pixels, so ``weighted_cross_entropy(z, y)`` equals
  ``F.cross_entropy(z, y, ignore_index=255)`` and ``weighted_cross_entropy(z, y, v)`` equals
  ``F.cross_entropy(z, y, weight=v, ignore_index=255)``. Pixel weights scale the numerator
  only (like ``weight=`` of ``F.binary_cross_entropy``), so a confidence weight below 1 lowers
  the loss. With no labelled pixel the loss is 0 (PyTorch: NaN).
* ``"labelled_mean"`` - ``sum_i l_i / n_labelled``: the mean over labelled pixels, not divided
  by the class weights (DACS ``CrossEntropy2d``, ADVENT ``cross_entropy_2d`` and AdaptSegNet
  ``CrossEntropy2d`` for their source losses; with weights summing to C the loss keeps the
  plain loss's scale). ``"valid_mean"`` is accepted as an older name of the same reduction.
* ``"all_pixel_mean"`` - ``sum_i l_i / n_pixels``: the mean over *all* pixels, ignored ones
  counting as zeros, not divided by ``sum(v)``. The authors' GBW code and mmseg's
  ``CrossEntropyLoss`` (DAFormer, HRDA, MIC), and DACS's pixel-weighted mixed loss
  (``CrossEntropyLoss2dPixelWiseWeighted``: ``torch.mean(loss * pixelWiseWeight)``).
* ``"sum"``, ``"none"`` (per-pixel, the shape of the target).

For the entropy losses (no labels) "labelled" pixels are those of ``valid_mask`` (all when no
mask is given) and there is no class-weight denominator: ``"mean"`` and ``"labelled_mean"``
average over the valid pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gbw.weighting._checks import check_mask, check_pixel_weight, check_target, flatten_logits

REDUCTIONS = ("mean", "labelled_mean", "all_pixel_mean", "sum", "none")
#: older names that keep their meaning (configs saved in run folders still load)
REDUCTION_ALIASES = {"valid_mean": "labelled_mean"}


def check_reduction(reduction: str, key: str = "reduction") -> str:
    """The canonical name of ``reduction``; a clear error for an unknown one.

    ``"weighted_mean"``, this library's former name of PyTorch's ``"mean"``, is refused with a
    hint rather than aliased: it also divided by the pixel weights.
    """
    name = REDUCTION_ALIASES.get(reduction, reduction)
    if name not in REDUCTIONS:
        hint = " (PyTorch's weighted mean is 'mean')" if reduction == "weighted_mean" else ""
        raise ValueError(f"{key} must be one of {REDUCTIONS}, got {reduction!r}{hint}")
    return name


def _reduce(per_pixel: Tensor, reduction: str, valid: Tensor, weight_sum: Tensor | None) -> Tensor:
    """``weight_sum``: the denominator of ``"mean"`` (sum of the labelled pixels' class
    weights; None = the number of labelled pixels)."""
    name = check_reduction(reduction)
    if name == "none":
        return per_pixel
    if name == "sum":
        return per_pixel.sum()
    if name == "all_pixel_mean":
        return per_pixel.mean()
    if name == "labelled_mean" or weight_sum is None:
        return per_pixel.sum() / valid.sum().clamp_min(1)
    # "mean": PyTorch's convention for class-weighted cross-entropy
    return per_pixel.sum() / weight_sum.clamp_min(torch.finfo(per_pixel.dtype).tiny)


def _check_class_weight(
    class_weight: Tensor | None, num_classes: int, ref: Tensor
) -> Tensor | None:
    if class_weight is None:
        return None
    if not isinstance(class_weight, Tensor) or class_weight.shape != (num_classes,):
        shape = tuple(class_weight.shape) if isinstance(class_weight, Tensor) else class_weight
        raise ValueError(f"class_weight must be a tensor of shape ({num_classes},), got {shape}")
    return class_weight.detach().to(device=ref.device, dtype=ref.dtype)


def log_softmax(logits: Tensor) -> Tensor:
    """log-softmax over the class dim, in float32 for half/bfloat16 logits (as autocast does)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    return F.log_softmax(x, dim=1)


def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | None = None,
    pixel_weight: Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
    *,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with per-class weights v and per-pixel weights w.

    Args:
        logits: (B, C, H, W) or (N, C).
        target: (B, H, W) or (N,) labels in [0, C) or ``ignore_index``.
        class_weight: (C,) weights v (detached). None = all ones.
        pixel_weight: (B, H, W) or (N,) weights w >= 0 (e.g. pseudo-label confidence).
        reduction: ``"mean"`` (PyTorch's: divided by the labelled pixels' summed class
            weights), ``"labelled_mean"`` (divided by the number of labelled pixels),
            ``"all_pixel_mean"`` (the authors' and mmseg's: divided by the number of all
            pixels), ``"sum"`` or ``"none"`` (per-pixel, shape of target); see the module doc.
        log_probs: optional precomputed ``log_softmax(logits, 1)`` (shares work with GBW).

    Example:
        >>> logits, target = torch.randn(2, 19, 8, 8), torch.randint(0, 19, (2, 8, 8))
        >>> loss = weighted_cross_entropy(logits, target, class_weight=torch.ones(19))
    """
    reduction = check_reduction(reduction)
    flatten_logits(logits)
    check_target(target, logits, ignore_index)
    logp = log_softmax(logits) if log_probs is None else log_probs
    v = _check_class_weight(class_weight, logits.shape[1], logp)
    per_pixel = F.nll_loss(
        logp, target.long(), weight=v, ignore_index=ignore_index, reduction="none"
    )
    valid = target != ignore_index
    if pixel_weight is not None:
        check_pixel_weight(pixel_weight, logits)
        per_pixel = per_pixel * pixel_weight.to(per_pixel.dtype)
    weight_sum = None
    if reduction == "mean" and v is not None:
        yc = torch.where(valid, target, 0).long()
        weight_sum = (v[yc] * valid).sum()
    return _reduce(per_pixel, reduction, valid, weight_sum)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Per-pixel weighted CE whose backward reuses the softmax p that GBW already computed.

    d/dz_i [coef_i * CE_i] = coef_i * (p_i - e_{y_i}): one multiply and one scatter, instead
    of autograd's log-softmax backward (which would exponentiate again).
    """

    @staticmethod
    def forward(ctx, logits3, logp_y, probs, yc, coef):  # type: ignore[override]
        ctx.save_for_backward(probs, yc, coef)
        ctx.logits_dtype = logits3.dtype
        return -logp_y * coef

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        probs, yc, coef = ctx.saved_tensors
        c = (grad * coef).unsqueeze(1)
        gz = probs * c
        gz.scatter_add_(1, yc.unsqueeze(1), -c)
        return gz.to(ctx.logits_dtype), None, None, None, None


def cross_entropy_from_probs(
    logits: Tensor,
    target: Tensor,
    probs: Tensor,
    logp_y: Tensor,
    class_weight: Tensor | None = None,
    pixel_weight: Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """:func:`weighted_cross_entropy` from an already computed softmax (shared with GBW).

    ``probs`` is the detached ``softmax(logits, 1)`` flattened to (B, C, L) and ``logp_y``
    the detached log-probability of each pixel's label, (B, L) (0 where ignored). Same value
    and gradient as :func:`weighted_cross_entropy`.
    """
    reduction = check_reduction(reduction)
    z = flatten_logits(logits)
    y = target.reshape(z.shape[0], -1)
    valid = y != ignore_index
    yc = torch.where(valid, y, 0).long()
    class_coef = valid.to(probs.dtype)
    if class_weight is not None:
        class_coef = class_coef * _check_class_weight(class_weight, z.shape[1], probs)[yc]
    coef = class_coef
    if pixel_weight is not None:
        coef = coef * pixel_weight.reshape(y.shape).to(probs.dtype)
    per_pixel = _SoftmaxCrossEntropy.apply(z, logp_y, probs, yc, coef).reshape(target.shape)
    weight_sum = class_coef.sum() if reduction == "mean" and class_weight is not None else None
    return _reduce(per_pixel, reduction, valid, weight_sum)


def weighted_entropy(
    logits: Tensor,
    class_weight: Tensor | None = None,
    valid_mask: Tensor | None = None,
    *,
    normalize: bool = False,
    reduction: str = "mean",
    log_probs: Tensor | None = None,
) -> Tensor:
    """Class-weighted entropy ``sum_c v_c (-p_c log p_c)`` per pixel (AdvEnt/MinEnt, Sec. 3.1).

    ``normalize=True`` divides by log(C), as ADVENT's ``entropy_loss`` (which uses log2 and
    divides by log2(C): the same number). ``valid_mask`` (bool) zeroes pixels out; ``"mean"``
    averages over the valid pixels (all of them without a mask, as ADVENT's ``entropy_loss``),
    ``"all_pixel_mean"`` over all pixels, masked ones counting as zeros.
    """
    reduction = check_reduction(reduction)
    flatten_logits(logits)
    valid = None if valid_mask is None else check_mask(valid_mask, logits)
    logp = log_softmax(logits) if log_probs is None else log_probs
    v = _check_class_weight(class_weight, logits.shape[1], logp)
    ent = -(logp.exp() * logp)
    if v is not None:
        ent = ent * v.view(1, -1, *([1] * (logits.dim() - 2)))
    per_pixel = ent.sum(1)
    if normalize and logits.shape[1] > 1:
        per_pixel = per_pixel / math.log(logits.shape[1])
    mask = torch.ones_like(per_pixel, dtype=torch.bool) if valid is None else valid_mask
    per_pixel = torch.where(mask, per_pixel, 0)
    return _reduce(per_pixel, reduction, mask, None)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    class_weight: Tensor | None = None,
    pixel_weight: Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    """Focal loss ``-(1 - p_y)^gamma log p_y`` (Lin et al., ICCV 2017), the paper's FL baseline.

    Same weights and reductions as :func:`weighted_cross_entropy`; gamma = 0 gives plain CE.
    """
    reduction = check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    flatten_logits(logits)
    check_target(target, logits, ignore_index)
    logp = log_softmax(logits)
    v = _check_class_weight(class_weight, logits.shape[1], logp)
    valid = target != ignore_index
    yc = torch.where(valid, target, 0).long()
    logp_y = logp.gather(1, yc.unsqueeze(1)).squeeze(1)
    per_pixel = -((1.0 - logp_y.exp()).clamp_min(0) ** gamma) * logp_y
    vy = torch.ones_like(per_pixel) if v is None else v[yc]
    wy = vy
    if pixel_weight is not None:
        check_pixel_weight(pixel_weight, logits)
        wy = vy * pixel_weight.to(vy.dtype)
    per_pixel = torch.where(valid, per_pixel * wy, 0)
    weight_sum = (vy * valid).sum() if v is not None else None
    return _reduce(per_pixel, reduction, valid, weight_sum)
