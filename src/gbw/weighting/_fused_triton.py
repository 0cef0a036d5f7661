"""Triton kernels of the fused GBW + weighted cross-entropy (``gbw.weighting.fused``).

Imported only when the ``"triton"`` implementation runs, so CPU-only installs never import
Triton. Each program takes a tile of ``BLOCK_C`` classes x ``BLOCK_P`` pixels of one image:

* ``count``: per-class label counts (the ``channel`` variant scales each pixel by its class's
  count, so the counts come before the pass over the logits);
* ``forward``: softmax, the label's cross-entropy, the log-sum-exp kept for the backward, and
  per-class sums for the gradient signal, plus counts of bad labels and bad pixel weights
  (checked on the device afterwards, so no host sync);
* ``backward``: ``dz_i = c_i (softmax(z_i) - e_{y_i})``, p recomputed from the logits.

Per-class sums are written per program and summed by torch (deterministic, no atomics).
The pure-torch implementation in ``gbw.weighting.fused`` computes the same numbers and is the
reference of the tests. With ``TRITON_INTERPRET=1`` set before Triton is first imported, the
kernels run in Triton's interpreter on CPU tensors (how the tests check them without a GPU).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Pixels per program and warps; sized for a (32 x 128) float32 tile per program.
BLOCK_P = 128
NUM_WARPS = 4
#: Rows of the per-program partials: counts, signal, [bad labels, bad weights].
STATS = 3


@triton.jit
def _tile(L, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's image b, its index among all programs, classes and pixels (+ mask)."""
    pid_l = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid = b * tl.num_programs(0) + pid_l
    pix = pid_l * BLOCK_P + tl.arange(0, BLOCK_P)
    return b, pid, tl.arange(0, BLOCK_C), pix.to(tl.int64), pix < L


@triton.jit
def count_kernel(
    y_ptr, part_ptr, L, C, ignore_index, s_yb, s_yl, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    b, pid, cls, pix, pmask = _tile(L, BLOCK_C, BLOCK_P)
    y = tl.load(y_ptr + b * s_yb + pix * s_yl, mask=pmask, other=ignore_index)
    y = y.to(tl.int64)
    valid = pmask & (y != ignore_index) & (y >= 0) & (y < C)
    onehot = (cls[:, None] == y.to(tl.int32)[None, :]) & valid[None, :]
    tl.store(part_ptr + pid * BLOCK_C + cls, tl.sum(onehot.to(tl.float32), axis=1))


@triton.jit
def forward_kernel(
    z_ptr,
    y_ptr,
    w_ptr,
    cnt_ptr,
    lse_ptr,
    ce_ptr,
    part_ptr,
    L,
    C,
    ignore_index,
    count_offset,
    s_zb,
    s_zc,
    s_zl,
    s_yb,
    s_yl,
    s_wb,
    s_wl,
    HAS_W: tl.constexpr,
    W_SIGNAL: tl.constexpr,
    CHANNEL: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    b, pid, cls, pix64, pmask = _tile(L, BLOCK_C, BLOCK_P)
    cmask = cls < C
    zoff = b * s_zb + cls.to(tl.int64)[:, None] * s_zc + pix64[None, :] * s_zl
    z = tl.load(z_ptr + zoff, mask=cmask[:, None] & pmask[None, :], other=0.0).to(tl.float32)
    z = tl.where(cmask[:, None], z, float("-inf"))  # padded classes take no probability
    m = tl.max(z, axis=0)
    e = tl.exp(z - m[None, :])
    ssum = tl.sum(e, axis=0)
    lse = m + tl.log(ssum)
    p = e / ssum[None, :]

    y = tl.load(y_ptr + b * s_yb + pix64 * s_yl, mask=pmask, other=ignore_index).to(tl.int64)
    labelled = pmask & (y != ignore_index)
    in_range = (y >= 0) & (y < C)
    bad_labels = tl.sum((labelled & ~in_range).to(tl.float32), axis=0)
    valid = labelled & in_range
    onehot = (cls[:, None] == y.to(tl.int32)[None, :]) & valid[None, :]
    z_y = tl.sum(tl.where(onehot, z, 0.0), axis=0)
    ce = tl.where(valid, lse - z_y, 0.0)
    tl.store(lse_ptr + b * L + pix64, lse, mask=pmask)
    tl.store(ce_ptr + b * L + pix64, ce, mask=pmask)

    w2 = valid.to(tl.float32)
    bad_weights = 0.0
    if HAS_W:
        w = tl.load(w_ptr + b * s_wb + pix64 * s_wl, mask=pmask, other=0.0).to(tl.float32)
        ok = (w >= 0.0) & (w < float("inf"))  # False for NaN, -x and +inf
        bad_weights = tl.sum((pmask & ~ok).to(tl.float32), axis=0)
        if W_SIGNAL:
            w2 = tl.where(valid, w * w, 0.0)
    d = p - onehot.to(tl.float32)  # p_i - e_{y_i}
    sq = tl.where(valid[None, :], d * d, 0.0)
    counts = tl.sum(onehot.to(tl.float32), axis=1)
    if CHANNEL:
        # g_c = sum_i w_i^2 (p_ic - [y_i = c])^2 / (n_{y_i} + offset)^2, global counts n
        n = tl.load(cnt_ptr + cls, mask=cmask, other=0.0) + count_offset
        inv = 1.0 / tl.maximum(n, 1e-12) / tl.maximum(n, 1e-12)
        s = w2 * tl.sum(tl.where(onehot, inv[:, None], 0.0), axis=0)
        signal = tl.sum(sq * s[None, :], axis=1)
    else:
        # sum_{i: y_i = c} w_i^2 ||p_i - e_c||^2 (divided by (n_c + offset)^2 afterwards)
        per = w2 * tl.sum(sq, axis=0)
        signal = tl.sum(tl.where(onehot, per[None, :], 0.0), axis=1)
    base = part_ptr + pid * (3 * BLOCK_C)
    tl.store(base + cls, counts)
    tl.store(base + BLOCK_C + cls, signal)
    flags = tl.where(cls == 0, bad_labels, tl.where(cls == 1, bad_weights, 0.0))
    tl.store(base + 2 * BLOCK_C + cls, flags)


@triton.jit
def backward_kernel(
    z_ptr,
    lse_ptr,
    c_ptr,
    y_ptr,
    gz_ptr,
    L,
    C,
    s_zb,
    s_zc,
    s_zl,
    s_gb,
    s_gc,
    s_gl,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    b, _, cls, pix64, pmask = _tile(L, BLOCK_C, BLOCK_P)
    cmask = cls < C
    mask = cmask[:, None] & pmask[None, :]
    cls64 = cls.to(tl.int64)[:, None]
    z = tl.load(z_ptr + b * s_zb + cls64 * s_zc + pix64[None, :] * s_zl, mask=mask, other=0.0)
    lse = tl.load(lse_ptr + b * L + pix64, mask=pmask, other=0.0)
    c = tl.load(c_ptr + b * L + pix64, mask=pmask, other=0.0)
    y = tl.load(y_ptr + b * L + pix64, mask=pmask, other=0).to(tl.int32)
    p = tl.exp(z.to(tl.float32) - lse[None, :])
    onehot = (cls[:, None] == y[None, :]).to(tl.float32)
    gz = c[None, :] * (p - onehot)
    gz_off = b * s_gb + cls64 * s_gc + pix64[None, :] * s_gl
    tl.store(gz_ptr + gz_off, gz.to(gz_ptr.dtype.element_ty), mask=mask)


def block_c(num_classes: int) -> int:
    return max(16, triton.next_power_of_2(num_classes))
