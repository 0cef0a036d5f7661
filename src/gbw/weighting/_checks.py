"""Input validation shared by the gradient signals and the losses.

On the CPU, bad values raise a ValueError at once. On an accelerator, value checks (label
range, pixel-weight sign) are queued with ``torch._assert_async`` so the training step never
waits for the host: a bad value then fails at the next synchronisation, as
``F.cross_entropy`` does on CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

VARIANTS = ("class", "channel")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def check_lam(lam: float) -> None:
    if isinstance(lam, Tensor):
        raise ValueError("lam must be a Python number, not a tensor")
    if not (lam > 0 and lam < float("inf")):
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}")


def _value_check(ok: Tensor, message: str) -> None:
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:  # no host sync on accelerators
        torch._assert_async(ok, message)


def flatten_logits(logits: Tensor, name: str = "logits") -> Tensor:
    """(B, C, H, W) or (N, C) -> a (B, C, L) view (no copy)."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() == 4:
        b, c, h, w = logits.shape
        return logits.reshape(b, c, h * w)
    if logits.dim() == 2:
        return logits.unsqueeze(-1)  # (N, C) -> (N, C, 1): every row is a batch entry
    raise ValueError(f"{name} must have shape (B, C, H, W) or (N, C), got {tuple(logits.shape)}")


def flatten_like(t: Tensor, logits: Tensor, name: str) -> Tensor:
    """A per-pixel tensor (B, H, W) or (N,) matching ``logits`` -> (B, L)."""
    expected = (logits.shape[0], *logits.shape[2:])
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(t.shape)}"
        )
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits are on {logits.device}")
    return t.reshape(t.shape[0], -1)


def check_target(
    target: Tensor, logits: Tensor, ignore_index: int, *, check_values: bool = True
) -> Tensor:
    """Validate labels (integer, in [0, C) or ``ignore_index``); return them as (B, L).

    ``check_values=False`` checks shape and dtype only (for a kernel that checks the values
    itself on its pass over the labels)."""
    y = flatten_like(target, logits, "target")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"target must be an integer tensor, got dtype {y.dtype}")
    if not check_values:
        return y
    c = logits.shape[1]
    ok = ((y >= 0) & (y < c)) | (y == ignore_index)
    _value_check(
        ok.all(),
        f"target values must be in [0, {c}) or ignore_index={ignore_index}",
    )
    return y


def check_pixel_weight(
    pixel_weight: Tensor, logits: Tensor, *, check_values: bool = True
) -> Tensor:
    w = flatten_like(pixel_weight, logits, "pixel_weight")
    if not w.is_floating_point():
        raise ValueError(f"pixel_weight must be a floating-point tensor, got dtype {w.dtype}")
    if not check_values:
        return w
    _value_check(
        (torch.isfinite(w) & (w >= 0)).all(),
        "pixel_weight must be finite and >= 0 everywhere",
    )
    return w


def check_mask(mask: Tensor, logits: Tensor, name: str = "valid_mask") -> Tensor:
    m = flatten_like(mask, logits, name)
    if m.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {m.dtype}")
    return m


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float64 stays float64; half, bfloat16 and float32 are computed in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32
