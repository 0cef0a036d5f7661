"""Autograd definitions of the gradient signals: the reference the closed forms are tested
against, and a fallback for a custom per-pixel loss. Slow (one backward per class): never the
fast path (METHOD.md: 16 ms vs 0.7 ms per step on an H200)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gbw.weighting._checks import check_variant


def autograd_grad_sqnorms(
    logits: Tensor, class_losses: Callable[[Tensor], Tensor], variant: str = "class"
) -> Tensor:
    """g from per-class losses by autograd at the logits.

    ``class_losses(z) -> (C,)`` returns the per-class losses lbar_c. ``class``:
    ``g_c = ||d lbar_c / dz||^2``; ``channel``: ``G = d(sum_c lbar_c)/dz`` and ``g_c`` is the
    squared norm of G's channel c.
    """
    check_variant(variant)
    z = logits.detach().requires_grad_(True)
    losses = class_losses(z)
    num_classes = z.shape[1]
    if variant == "channel":
        (grad,) = torch.autograd.grad(losses.sum(), z)
        return grad.transpose(0, 1).reshape(num_classes, -1).square().sum(1)
    out = []
    for c in range(num_classes):
        (grad,) = torch.autograd.grad(losses[c], z, retain_graph=True, allow_unused=True)
        out.append(grad.square().sum() if grad is not None else z.new_zeros(()))
    return torch.stack(out)


def per_class_ce(
    z: Tensor,
    target: Tensor,
    pixel_weight: Tensor | None = None,
    ignore_index: int = 255,
    count_offset: float = 0,
) -> Tensor:
    """lbar_c = sum_{i: y_i = c} w_i CE_i / (n_c + count_offset), written the plain way."""
    num_classes = z.shape[1]
    logp = torch.log_softmax(z, dim=1)
    losses = []
    for c in range(num_classes):
        mask = target == c
        ce = -logp.select(1, c)[mask]
        if pixel_weight is not None:
            ce = ce * pixel_weight[mask]
        n = mask.sum()
        denom = n + count_offset
        losses.append(ce.sum() / denom if denom > 0 else ce.sum())
    return torch.stack(losses)


def per_class_entropy(z: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    """lbar_c = (1/N) sum_i -p_ic log p_ic over the N valid pixels."""
    p = torch.softmax(z, dim=1)
    ent = -p * torch.log(p)
    ent = ent.transpose(0, 1).reshape(z.shape[1], -1)
    if valid_mask is not None:
        m = valid_mask.reshape(-1)
        ent = ent[:, m]
    return ent.sum(1) / max(ent.shape[1], 1)
