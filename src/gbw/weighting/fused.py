"""GBW's weights and the weighted cross-entropy from one pass over the logits.

The unfused path (``signals.class_grad_sqnorms`` + ``losses.cross_entropy_from_probs``) keeps
the softmax p of the logits' size from the forward to the backward and builds further
temporaries of that size. The fused pass reads the logits once and keeps per pixel only the
log-sum-exp ``lse_i`` and the label's cross-entropy ``CE_i = lse_i - z_{i,y_i}``; per class it
sums what the gradient signal needs (both variants, pixel weights and ignored pixels included,
the formulas of :mod:`gbw.weighting.signals`):

* ``class``:   ``g_c = sum_{i: y_i=c} w_i^2 ||p_i - e_c||^2 / (n_c + offset)^2``;
* ``channel``: ``g_c = sum_i w_i^2 (p_ic - [y_i = c])^2 / (n_{y_i} + offset)^2``, the counts n
  taken from the labels first.

After the QP (``gbw.weighting.qp``, on the device) the loss is ``coef_i CE_i`` with
``coef_i = v_{y_i} w_i``, reduced by ``losses._reduce``; its backward recomputes
``p_i = exp(z_i - lse_i)`` from the logits, ``dz_i = grad_i coef_i (p_i - e_{y_i})``. The only
tensor of the logits' size is the gradient itself (plain CE keeps its log-softmax as well).

Implementations, chosen by ``GBW(..., fused=...)``:

* ``"torch"``: pure torch, the reference of the tests. On the CPU it walks the pixels in chunks
  of about :data:`CPU_CHUNK` logits, so that its temporaries stay small and in cache.
* ``"triton"``: hand-written Triton kernels (``gbw.weighting._fused_triton``) for CUDA tensors;
  on CPU tensors only in Triton's interpreter (``TRITON_INTERPRET=1`` before Triton is first
  imported; for tests). Triton is imported on first use, never by ``import gbw``.
* ``"off"``: the unfused path. ``"on"`` (or True): ``"triton"`` on CUDA when Triton is
  installed, else ``"torch"``. ``"auto"``: the measured default of each device, :data:`AUTO`.

No implementation reads a value back to the host or has a data-dependent shape: the step stays
capturable in a CUDA graph, and meta tensors run through it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from gbw.weighting._checks import (
    _value_check,
    check_pixel_weight,
    check_target,
    check_variant,
    compute_dtype,
    flatten_logits,
)
from gbw.weighting.losses import _check_class_weight, _reduce
from gbw.weighting.signals import _all_reduce_, _distributed

FUSED_MODES = ("auto", "on", "off", "torch", "triton")

#: ``fused="auto"`` per device type (other devices: "off"). Chosen by `gbw bench overhead`
#: (BENCHMARKS.md section 1): on the CPU the chunked torch pass is faster than the unfused
#: path and than plain CE. CUDA stays on the unfused path until the Triton kernels have been
#: measured on a GPU (benchmarks/gpu_round2.sh).
AUTO = {"cpu": "torch", "meta": "torch", "cuda": "off"}

#: Logits (B * C * pixels) per chunk of the torch implementation on the CPU (4 MiB float32):
#: with 2 threads 2^20 was fastest at 2 x 19 x 512^2 and 1024^2 (2^18 to 2^21 timed), with one
#: thread 2^18 to 2^20 were alike.
CPU_CHUNK = 1 << 20


def check_fused(fused: bool | str) -> str:
    """Normalise a ``fused=`` setting (True -> "on", False -> "off") or raise ValueError."""
    if fused is True or fused is False:
        return "on" if fused else "off"
    if fused not in FUSED_MODES:
        raise ValueError(f"fused must be a bool or one of {FUSED_MODES}, got {fused!r}")
    return fused


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve(fused: str, logits: Tensor) -> str:
    """The implementation a ``fused=`` setting gives for these logits: off | torch | triton."""
    device = logits.device.type
    if fused == "auto":
        fused = AUTO.get(device, "off")
    if fused == "on":
        cuda_ok = device == "cuda" and logits.dtype != torch.float64 and triton_available()
        fused = "triton" if cuda_ok else "torch"
    if fused == "triton":
        if not triton_available():
            raise ValueError("fused='triton' needs the triton package (pip install triton)")
        if logits.dtype == torch.float64:
            raise ValueError("fused='triton' computes in float32; use fused='torch' for float64")
        if device != "cuda" and not (device == "cpu" and _interpreting()):
            raise ValueError(
                f"fused='triton' needs CUDA tensors (got {device}); on the CPU it runs only in "
                "Triton's interpreter (TRITON_INTERPRET=1), which is meant for tests"
            )
    return fused


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _chunks(length: int, rows: int, device: torch.device) -> list[slice]:
    if device.type != "cpu":
        return [slice(0, length)]
    step = max(1, CPU_CHUNK // max(rows, 1))
    return [slice(a, min(a + step, length)) for a in range(0, length, step)]


@dataclass
class FusedPass:
    """What the pass over the logits leaves for the loss: per pixel, nothing of size C."""

    lse: Tensor  # (B, L) log-sum-exp of the logits, compute dtype
    ce: Tensor  # (B, L) -log p_{y_i}, 0 where ignored
    yc: Tensor  # (B, L) int64 labels, 0 where ignored
    valid: Tensor  # (B, L) bool, labelled pixels
    impl: str

    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        class_weight: Tensor,
        pixel_weight: Tensor | None,
        reduction: str,
    ) -> Tensor:
        """The weighted cross-entropy of :func:`gbw.weighted_cross_entropy`, same value and
        gradient, from the pass (``logits`` must be the tensor the pass read, with its graph)."""
        z = flatten_logits(logits)
        v = _check_class_weight(class_weight, z.shape[1], self.lse)
        class_coef = torch.where(self.valid, v[self.yc], 0)
        coef = class_coef
        if pixel_weight is not None:
            coef = coef * pixel_weight.reshape(self.yc.shape).to(coef.dtype)
        per_pixel = _FusedCrossEntropy.apply(z, self.ce, self.lse, self.yc, coef, self.impl)
        # "mean" divides by the labelled pixels' class weights (PyTorch's convention); pixel
        # weights scale the numerator only (gbw.weighting.losses)
        return _reduce(per_pixel.reshape(target.shape), reduction, self.valid, class_coef.sum())


class _FusedCrossEntropy(torch.autograd.Function):
    """Per-pixel ``coef_i * CE_i``; the backward recomputes p from the logits and ``lse``."""

    @staticmethod
    def forward(ctx, logits3, ce, lse, yc, coef, impl):  # type: ignore[override]
        ctx.save_for_backward(logits3, lse, yc, coef)
        ctx.impl = impl
        return ce * coef

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        z, lse, yc, coef = ctx.saved_tensors
        c = grad * coef
        gz = (
            _backward_triton(z, lse, yc, c)
            if ctx.impl == "triton"
            else _backward_torch(z, lse, yc, c)
        )
        return gz, None, None, None, None, None


def gbw_pass(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    pixel_weight: Tensor | None = None,
    use_pixel_weight: bool = True,
    variant: str = "class",
    count_offset: float = 0,
    sync: bool = True,
    group: object | None = None,
    impl: str = "torch",
) -> tuple[Tensor, Tensor, FusedPass]:
    """One pass over the logits: the signal g of :func:`gbw.class_grad_sqnorms`, the counts
    n_c (both global under ``torch.distributed``) and the :class:`FusedPass` for the loss.

    ``pixel_weight`` is checked and kept for the loss; it enters g only if
    ``use_pixel_weight``. ``impl``: "torch" or "triton" (see :func:`resolve`).
    """
    check_variant(variant)
    z = flatten_logits(logits).detach()
    w = pixel_weight
    if impl == "triton":
        y = check_target(target, logits, ignore_index, check_values=False)
        if w is not None:
            w = check_pixel_weight(w, logits, check_values=False)
        return _pass_triton(
            z, y, w, use_pixel_weight, ignore_index, variant, count_offset, sync, group
        )
    if impl != "torch":
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    y = check_target(target, logits, ignore_index)
    if w is not None:
        w = check_pixel_weight(w, logits)
    return _pass_torch(
        z, y, w if use_pixel_weight else None, ignore_index, variant, count_offset, sync, group
    )


def _signal(sums: Tensor, counts: Tensor, count_offset: float) -> Tensor:
    return sums / (counts + count_offset).clamp_min(1e-12).square()


def _pass_torch(z, y, w, ignore_index, variant, count_offset, sync, group):
    dtype = compute_dtype(z)
    batch, num_classes, _ = z.shape
    valid = y != ignore_index
    yc = torch.where(valid, y, 0).long()
    validf = valid.to(dtype)
    w2 = validf if w is None else torch.where(valid, w.to(dtype).square(), 0)
    counts = torch.zeros(num_classes, dtype=dtype, device=z.device)
    counts.index_add_(0, yc.flatten(), validf.flatten())
    distributed = _distributed(sync)
    if variant == "channel":
        if distributed:
            counts = _all_reduce_(counts, group)
        s = w2 * (1.0 / (counts + count_offset).clamp_min(1e-12).square())[yc]
        g = torch.zeros(num_classes, dtype=dtype, device=z.device)
    minus_valid = validf.neg().unsqueeze(1)
    lse, ce, per = [], [], []
    for sl in _chunks(z.shape[2], batch * num_classes, z.device):
        zc = z[:, :, sl].to(dtype)
        m = zc.amax(1, keepdim=True)
        e = (zc - m).exp_()
        total = e.sum(1, keepdim=True)
        lse_c = (m + total.log()).squeeze(1)
        y_c = yc[:, None, sl]
        lse.append(lse_c)
        ce.append(torch.where(valid[:, sl], lse_c - zc.gather(1, y_c).squeeze(1), 0))
        # (p_i - e_{y_i})^2 in place (nothing subtracted at ignored pixels; their weight is 0)
        sq = e.div_(total).scatter_add_(1, y_c, minus_valid[:, :, sl]).square_()
        if variant == "channel":
            g += torch.bmm(sq, s[:, sl, None]).sum((0, 2))
        else:
            per.append(sq.sum(1))
    if variant == "class":
        sums = torch.zeros(num_classes, dtype=dtype, device=z.device)
        sums.index_add_(0, yc.flatten(), torch.where(valid, w2 * _cat(per), 0).flatten())
        if distributed:
            both = _all_reduce_(torch.stack([sums, counts]), group)
            sums, counts = both[0], both[1]
        g = _signal(sums, counts, count_offset)
    elif distributed:
        g = _all_reduce_(g, group)
    return g, counts, FusedPass(_cat(lse), _cat(ce), yc, valid, "torch")


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _backward_torch(z: Tensor, lse: Tensor, yc: Tensor, c: Tensor) -> Tensor:
    """``c_i (softmax(z_i) - e_{y_i})`` in the logits' dtype and layout, chunk by chunk."""
    gz = torch.empty_like(z)
    batch, num_classes, length = z.shape
    for sl in _chunks(length, batch * num_classes, z.device):
        cc = c[:, None, sl]
        if z.dtype == lse.dtype:
            t = torch.sub(z[:, :, sl], lse[:, None, sl], out=gz[:, :, sl])
        else:
            t = z[:, :, sl].to(lse.dtype) - lse[:, None, sl]
        t.exp_().mul_(cc).scatter_add_(1, yc[:, None, sl], -cc)
        if t.dtype != gz.dtype:
            gz[:, :, sl] = t
    return gz


def _pass_triton(z, y, w, use_w, ignore_index, variant, count_offset, sync, group):
    from gbw.weighting import _fused_triton as ft

    batch, num_classes, length = z.shape
    bc = ft.block_c(num_classes)
    grid = (triton_cdiv(length, ft.BLOCK_P), batch)
    nprog = grid[0] * grid[1]
    dev = z.device
    distributed = _distributed(sync)
    w_arg = z if w is None else w  # any pointer when there are no pixel weights
    w_strides = (0, 0) if w is None else w.stride()
    lse = torch.empty(batch, length, dtype=torch.float32, device=dev)
    ce = torch.empty_like(lse)
    counts_in = lse  # read only by the channel variant
    if variant == "channel":
        part = torch.empty(nprog, bc, dtype=torch.float32, device=dev)
        ft.count_kernel[grid](
            y, part, length, num_classes, ignore_index, *y.stride(), bc, ft.BLOCK_P
        )
        counts_in = part.sum(0)
        if distributed:
            counts_in = _all_reduce_(counts_in, group)
    part = torch.empty(nprog, ft.STATS, bc, dtype=torch.float32, device=dev)
    ft.forward_kernel[grid](
        z, y, w_arg, counts_in, lse, ce, part, length, num_classes, ignore_index,
        float(count_offset), *z.stride(), *y.stride(), *w_strides,
        w is not None, use_w, variant == "channel", bc, ft.BLOCK_P,
        num_warps=ft.NUM_WARPS,
    )  # fmt: skip
    stats = part.sum(0)
    c = num_classes
    _value_check(
        stats[2, 0] == 0, f"target values must be in [0, {c}) or ignore_index={ignore_index}"
    )
    if w is not None:
        _value_check(stats[2, 1] == 0, "pixel_weight must be finite and >= 0 everywhere")
    if variant == "channel":
        counts, g = counts_in[:c], stats[1, :c]
        if distributed:
            g = _all_reduce_(g.contiguous(), group)
    else:
        both = stats[:2, :c]
        if distributed:
            both = _all_reduce_(both.contiguous(), group)
        counts, g = both[0], _signal(both[1], both[0], count_offset)
    valid = y != ignore_index
    yc = torch.where(valid, y, 0).long()
    return g, counts, FusedPass(lse, ce, yc, valid, "triton")


def _backward_triton(z: Tensor, lse: Tensor, yc: Tensor, c: Tensor) -> Tensor:
    from gbw.weighting import _fused_triton as ft

    batch, num_classes, length = z.shape
    gz = torch.empty_like(z)
    grid = (triton_cdiv(length, ft.BLOCK_P), batch)
    ft.backward_kernel[grid](
        z, lse.contiguous(), c.contiguous(), yc.contiguous(), gz, length, num_classes,
        *z.stride(), *gz.stride(), ft.block_c(num_classes), ft.BLOCK_P,
        num_warps=ft.NUM_WARPS,
    )  # fmt: skip
    return gz


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
