"""The exact GBW quadratic program (paper Eq. 11), solved on the device without host sync.

    v* = argmin_v  -g.v + lam * ||v||^2   s.t.  v >= 0,  sum(v) = S

Completing the square, v* is the Euclidean projection of ``y = g / (2 lam)`` onto the simplex
scaled to S: ``v_c = max(y_c - tau, 0)`` with tau chosen so the sum is S. Sorting y gives tau
exactly in O(C log C) (Held, Wolfe & Crowder 1974; Duchi et al. 2008). Where nothing is
clipped, ``v_c = S/C + (g_c - mean(g)) / (2 lam)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gbw.weighting._checks import check_lam

#: Weight given to classes outside ``present`` (they have no pixels in the loss, so their
#: weight cannot change it; 1 is what "no weighting" gives them, which keeps logs readable).
NEUTRAL_WEIGHT = 1.0


def _solve_dtype(g: Tensor) -> torch.dtype:
    # C is tiny, so solve in float64 wherever the device supports it (MPS does not): the
    # authors' weights differ from 1 by ~1e-3, which float32 resolves only to ~1e-7.
    return torch.float32 if g.device.type == "mps" else torch.float64


def project_simplex(y: Tensor, total: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """Euclidean projection of each row of ``y`` (..., C) onto {v >= 0, sum v = total}.

    ``mask`` (bool, same shape) restricts the projection to the True entries; the others get
    0. ``total`` (a number, or a tensor broadcasting against ``y[..., 0]``) must be > 0. Rows
    with nothing in the mask come back 0. Non-finite ``y`` gives non-finite rows (callers
    fall back on those).
    """
    if isinstance(total, Tensor):
        total = total.unsqueeze(-1)
    k = torch.arange(1, y.shape[-1] + 1, device=y.device, dtype=y.dtype)
    if mask is None:
        # Shift-invariance: subtracting the row maximum keeps the cumulative sums small, so
        # huge g (or tiny lam) does not lose the total to cancellation.
        y = y - y.amax(dim=-1, keepdim=True)
        u, _ = torch.sort(y, dim=-1, descending=True)
        css = u.cumsum(dim=-1) - total
        # Entries with u_k > (cumsum_k - S) / k form a prefix of the sorted row (never empty:
        # k = 1 always qualifies); rho = its length.
        rho = (u * k > css).sum(dim=-1, keepdim=True)
        tau = css.gather(-1, (rho - 1).clamp_min(0)) / rho.clamp_min(1).to(y.dtype)
        return (y - tau).clamp_min(0)
    y = torch.where(mask, y, -torch.inf)
    top = y.amax(dim=-1, keepdim=True)
    y = y - torch.where(torch.isfinite(top), top, 0)
    u, _ = torch.sort(y, dim=-1, descending=True)
    finite = torch.isfinite(u)
    u0 = torch.where(finite, u, 0)
    css = u0.cumsum(dim=-1) - total
    support = finite & (u0 * k > css)
    rho = support.sum(dim=-1, keepdim=True).clamp_min(1)
    tau = css.gather(-1, rho - 1) / rho.to(y.dtype)
    v = (y - tau).clamp_min(0)
    return torch.where(torch.isfinite(y), v, 0)


def solve_class_weights(
    g: Tensor,
    lam: float = 1.0,
    *,
    total: float | Tensor | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """Exact minimiser of ``-g.v + lam ||v||^2`` s.t. ``v >= 0``, ``sum(v) = total``.

    Args:
        g: (..., C) non-negative gradient signals (batched rows are solved independently).
        lam: the regulariser lambda > 0; large lam -> uniform weights.
        total: the sum S of the weights; default C, or the number of present classes.
        present: optional bool (..., C); only those classes take part in the QP, the others
            get ``NEUTRAL_WEIGHT`` (1.0).

    Returns:
        v, same shape and dtype as g. Rows with non-finite g, or no present class, fall back
        to uniform weights (see :func:`solve_class_weights_with_status` to count them).
    """
    return solve_class_weights_with_status(g, lam, total=total, present=present)[0]


def solve_class_weights_with_status(
    g: Tensor,
    lam: float = 1.0,
    *,
    total: float | Tensor | None = None,
    present: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Like :func:`solve_class_weights`, also returning a bool (...,) "fell back" flag."""
    check_lam(lam)
    if not isinstance(g, Tensor) or not g.is_floating_point() or g.dim() == 0:
        raise ValueError("g must be a floating-point tensor of shape (..., C)")
    if present is not None:
        if not isinstance(present, Tensor) or present.dtype != torch.bool:
            raise ValueError("present must be a bool tensor")
        if present.shape != g.shape:
            raise ValueError(
                f"present must have the shape of g {tuple(g.shape)}, got {tuple(present.shape)}"
            )
    out_dtype = g.dtype
    gd = g.detach().to(_solve_dtype(g))
    num_classes = g.shape[-1]
    if total is not None:
        s = torch.as_tensor(total, dtype=gd.dtype, device=g.device).expand(g.shape[:-1])
        if s.device.type == "cpu" and not bool(((s > 0) & torch.isfinite(s)).all()):
            raise ValueError(f"total must be finite and > 0, got {total!r}")

    if present is None:
        # The common path, in few kernels (it runs at every loss call of every step).
        total_ = float(num_classes) if total is None else s
        v = project_simplex(gd / (2.0 * lam), total_)
        ok = torch.isfinite(v).all(-1)  # non-finite g -> non-finite v
        uniform = total_ / num_classes if total is None else (s / num_classes).unsqueeze(-1)
        v = torch.where(ok.unsqueeze(-1), v, uniform)
        return v.to(out_dtype), ~ok

    n_present = present.sum(-1).to(gd.dtype)
    s = n_present if total is None else s
    v = project_simplex(gd / (2.0 * lam), s.clamp_min(torch.finfo(gd.dtype).tiny), present)
    ok = torch.isfinite(torch.where(present, gd, 0)).all(-1) & (n_present > 0)
    uniform = torch.where(present, s.unsqueeze(-1) / n_present.clamp_min(1).unsqueeze(-1), 0)
    v = torch.where(present, v, 0) + torch.where(present, 0, NEUTRAL_WEIGHT)
    uniform = uniform + torch.where(present, 0, NEUTRAL_WEIGHT)
    # no class present at all: nothing to weigh, every class is neutral
    uniform = torch.where((n_present > 0).unsqueeze(-1), uniform, NEUTRAL_WEIGHT)
    v = torch.where(ok.unsqueeze(-1), v, uniform)
    return v.to(out_dtype), ~ok
