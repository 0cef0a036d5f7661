"""Per-class gradient signals g (paper Eq. 8 / Eq. 12), in closed form, one pass over the logits.

For pixel i with logits z_i, probabilities p_i = softmax(z_i), label y_i, optional pixel weight
w_i and n_c non-ignored pixels of class c, the mean per-class cross-entropy is
``lbar_c = sum_{i: y_i = c} w_i * CE_i / (n_c + count_offset)``. Its gradient at the logits
is ``w_i (p_i - e_c) / (n_c + offset)`` on the pixels of class c and zero elsewhere, so

* ``variant="class"`` (paper, Eq. 8; Eq. 12 with pixel weights):
  ``g_c = ||d lbar_c / dz||^2 = sum_{i: y_i=c} w_i^2 ||p_i - e_c||^2 / (n_c + offset)^2``;
* ``variant="channel"`` (the authors' code): ``G = d(sum_k lbar_k)/dz`` and ``g_c`` is the
  squared norm of the gradient reaching output channel c,
  ``g_c = sum_i w_i^2 (p_ic - [y_i = c])^2 / (n_{y_i} + offset)^2`` (false-positive pushes from
  other classes' pixels included). The authors use ``count_offset=1`` and no pixel weights.

Entropy minimisation (AdvEnt/MinEnt) uses ``lbar_c = (1/N) sum_i -p_ic log p_ic``.

No full-size one-hot tensor is built, no value is read back to the host, and under
``torch.distributed`` the per-class sums and counts are all-reduced so every rank gets the
signal of the concatenated global batch (METHOD.md section 4). ``gbw.weighting.reference``
holds the autograd definitions these closed forms are tested against.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from gbw.weighting._checks import (
    check_mask,
    check_pixel_weight,
    check_target,
    check_variant,
    compute_dtype,
    flatten_logits,
)


def _distributed(sync: bool) -> bool:
    return sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_(t: Tensor, group: object | None) -> Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _probs(logits3: Tensor, probs: Tensor | None) -> Tensor:
    """Detached softmax over the class dim in a float type (shared with the loss if given)."""
    if probs is not None:
        p = probs if probs.dim() == 3 else flatten_logits(probs, "probs")  # (B, C, L) as is
        if p.shape != logits3.shape:
            raise ValueError(
                f"probs must have the shape of logits {tuple(logits3.shape)}, got {tuple(p.shape)}"
            )
        return p.detach().to(compute_dtype(logits3))
    return torch.softmax(logits3.detach().to(compute_dtype(logits3)), dim=1)


def class_grad_sqnorms(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    pixel_weight: Tensor | None = None,
    variant: str = "class",
    count_offset: float = 0,
    probs: Tensor | None = None,
    sync: bool = True,
    group: object | None = None,
    return_counts: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-class squared gradient norms of the mean per-class cross-entropy at the logits.

    Args:
        logits: (B, C, H, W) or (N, C), the pre-softmax outputs the loss is computed on.
        target: (B, H, W) or (N,) integer labels in [0, C) or ``ignore_index``.
        pixel_weight: optional (B, H, W) or (N,) non-negative weights (pseudo-label
            confidence); enters g squared, as the paper's Eq. 12.
        variant: ``"class"`` (paper Eq. 8) or ``"channel"`` (authors' code).
        count_offset: added to n_c in the denominator (authors: 1).
        probs: optional precomputed ``softmax(logits, 1)`` to share work with the loss.
        sync: all-reduce across ranks when ``torch.distributed`` is initialised.
        return_counts: also return n_c (global under ``torch.distributed``).

    Returns:
        g, a float tensor (C,) on the logits' device (float64 for float64 logits, else float32),
        or ``(g, counts)``.
    """
    check_variant(variant)
    z = flatten_logits(logits)
    y = check_target(target, logits, ignore_index)
    w = None if pixel_weight is None else check_pixel_weight(pixel_weight, logits)
    num_classes = z.shape[1]
    p = _probs(z, probs)
    dtype = p.dtype

    valid = y != ignore_index
    yc = torch.where(valid, y, 0).long()
    p_y = p.gather(1, yc.unsqueeze(1)).squeeze(1)  # (B, L)
    w2 = valid.to(dtype) if w is None else torch.where(valid, w.to(dtype).square(), 0)
    counts = torch.zeros(num_classes, dtype=dtype, device=p.device)
    counts.index_add_(0, yc.flatten(), valid.flatten().to(dtype))
    distributed = _distributed(sync)

    if variant == "class":
        # ||p_i - e_c||^2 = ||p_i||^2 - 2 p_ic + 1
        sq = p.square().sum(1)  # (vector_norm over dim 1 is ~8x slower on CPU)
        per_pixel = torch.where(valid, w2 * (sq - 2.0 * p_y + 1.0), 0)
        sums = torch.zeros(num_classes, dtype=dtype, device=p.device)
        sums.index_add_(0, yc.flatten(), per_pixel.flatten())
        if distributed:
            both = _all_reduce_(torch.stack([sums, counts]), group)
            sums, counts = both[0], both[1]
        g = sums / (counts + count_offset).clamp_min(1e-12).square()
        return (g, counts) if return_counts else g

    # channel: scale each pixel by w_i^2 / (n_{y_i} + offset)^2 with the *global* counts,
    # then g_c = sum_i s_i p_ic^2 + sum_{i: y_i = c} s_i (1 - 2 p_ic).
    if distributed:
        counts = _all_reduce_(counts, group)
    inv = 1.0 / (counts + count_offset).clamp_min(1e-12).square()
    s = torch.where(valid, w2 * inv[yc], 0)
    g = torch.bmm(p.square(), s.unsqueeze(-1)).sum((0, 2))  # sum_i s_i p_ic^2 (bmm: fast)
    g.index_add_(0, yc.flatten(), (s * (1.0 - 2.0 * p_y)).flatten())
    if distributed:
        g = _all_reduce_(g, group)
    return (g, counts) if return_counts else g


def entropy_grad_sqnorms(
    logits: Tensor,
    *,
    valid_mask: Tensor | None = None,
    variant: str = "class",
    normalize: bool = False,
    probs: Tensor | None = None,
    sync: bool = True,
    group: object | None = None,
) -> Tensor:
    """Per-class squared gradient norms at the logits for the entropy loss (AdvEnt/MinEnt).

    ``lbar_c = (1/N) sum_i -p_ic log p_ic`` over the N valid pixels. ``class``:
    ``g_c = (1/N^2) sum_i (p_ic (1 + log p_ic))^2 ||e_c - p_i||^2``; ``channel``: with
    ``H_i`` the entropy of pixel i, ``g_c = (1/N^2) sum_i p_ic^2 (log p_ic + H_i)^2``.
    ``normalize=True`` matches ADVENT's loss, which divides the entropy by log(C)
    (g then scales by 1 / log(C)^2).
    """
    check_variant(variant)
    z = flatten_logits(logits)
    valid = None if valid_mask is None else check_mask(valid_mask, logits)
    p = _probs(z, probs)
    dtype = p.dtype
    plogp = torch.xlogy(p, p)  # p log p, exact 0 at p = 0
    if variant == "class":
        sq = p.square().sum(1, keepdim=True)
        per = (p + plogp).square() * (1.0 - 2.0 * p + sq)
    else:
        ent = -plogp.sum(1, keepdim=True)
        per = (plogp + p * ent).square()  # p^2 (log p + H)^2
    if valid is None:
        n = torch.full((), float(z.shape[0] * z.shape[2]), dtype=dtype, device=p.device)
        sums = per.sum(dim=(0, 2))
    else:
        per = torch.where(valid.unsqueeze(1), per, 0)
        sums = per.sum(dim=(0, 2))
        n = valid.sum().to(dtype)
    if _distributed(sync):
        both = _all_reduce_(torch.cat([sums, n.reshape(1)]), group)
        sums, n = both[:-1], both[-1]
    g = sums / n.clamp_min(1.0).square()
    if normalize and z.shape[1] > 1:
        g = g / math.log(z.shape[1]) ** 2
    return g
