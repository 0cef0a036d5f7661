"""What a run does when a loss becomes NaN or infinite (``train.on_nonfinite``).

* ``stop`` (default): every iteration's loss terms are checked *on the device* (a few tiny
  kernels, no host read), and the first non-finite one is recorded with its iteration. The
  engine reads the record back at each log step and before each checkpoint; if a term went
  non-finite, the run stops with one line naming the iteration and the term, exits non-zero,
  and writes no checkpoint after it, so ``checkpoints/last.ckpt`` stays the last finite one.
* ``skip_step``: before each optimiser step the gradients are checked on the host (one read per
  optimiser and iteration, so eager runs only); a step with non-finite gradients is skipped,
  and the floating-point buffers (BatchNorm statistics) that iteration's forward pass changed
  are restored. After ``train.max_skipped_steps`` consecutive skipped iterations the run stops
  as with ``stop``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss; the message names the iteration and the term."""


def loss_terms(logs: Mapping[str, Any]) -> list[str]:
    """The logged entries that are losses (diagnostics are prefixed ``diag``)."""
    return sorted(k for k, v in logs.items() if isinstance(v, Tensor) and not k.startswith("diag"))


class NonFiniteWatch:
    """The first iteration at which each loss term was not finite, kept on the device."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.terms: list[str] = []
        self.first: Tensor = torch.empty(0, dtype=torch.int64, device=self.device)
        self.value: Tensor = torch.empty(0, dtype=torch.float32, device=self.device)
        self._index: dict[tuple[str, ...], Tensor] = {}  # built once per set of terms

    def update(self, iteration: int | Tensor, logs: Mapping[str, Any]) -> None:
        """Record the terms of ``logs`` that are NaN/inf at ``iteration`` (0-based); no sync."""
        terms = loss_terms(logs)
        new = [t for t in terms if t not in self.terms]
        if new:  # a term seen for the first time (Python-level bookkeeping, no tensor read)
            self.terms += new
            pad = torch.full((len(new),), -1, dtype=torch.int64, device=self.device)
            self.first = torch.cat([self.first, pad])
            self.value = torch.cat([self.value, torch.zeros(len(new), device=self.device)])
        if not terms:
            return
        key = tuple(terms)
        if key not in self._index:
            self._index[key] = torch.tensor([self.terms.index(t) for t in terms]).to(self.device)
        index = self._index[key]
        values = torch.stack([logs[t].detach().float().reshape(()).to(self.device) for t in terms])
        hit = ~torch.isfinite(values) & (self.first[index] < 0)
        it = iteration.to(torch.int64) if isinstance(iteration, Tensor) else int(iteration)
        self.first[index] = torch.where(hit, it, self.first[index])
        self.value[index] = torch.where(hit, values, self.value[index])

    def check(self) -> tuple[int, str, float] | None:
        """``(iteration, term, value)`` of the earliest non-finite term, or None (one host read)."""
        if not self.terms:
            return None
        first = self.first.tolist()
        value = self.value.tolist()
        bad = [(s, t, v) for s, t, v in zip(first, self.terms, value) if s >= 0]
        return min(bad) if bad else None

    @staticmethod
    def message(
        found: tuple[int, str, float], last_checkpoint: str | None, *, weights: bool = False
    ) -> str:
        """The one line that names the iteration and the term (or the weights)."""
        it, term, value = found
        shown = "nan" if math.isnan(value) else repr(value)
        what = (
            "the network's weights after it are not finite (the losses were)"
            if weights
            else f"loss term {term!r} is not finite ({shown})"
        )
        kept = (
            f"the last finite checkpoint, {last_checkpoint}, stays checkpoints/last.ckpt"
            if last_checkpoint
            else "no checkpoint was written before it"
        )
        return (
            f"iteration {it + 1}: {what}; training stopped and {kept}. Lower optim.lr, or set "
            "train.on_nonfinite=skip_step to skip such steps"
        )


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every value of every floating-point tensor is finite (one host read)."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    norms = torch._foreach_norm(floats)  # inf/nan wherever a tensor holds one
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def module_finite(module: nn.Module) -> bool:
    """Whether a module's parameters and floating-point buffers are all finite."""
    return all_finite([*module.parameters(), *module.buffers()])


def grads_finite(optimizer: Any) -> bool:
    """Whether every gradient this optimiser would apply is finite (one host read)."""
    grads = [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]
    return all_finite(grads)


class SkipNonFinite:
    """An optimiser whose ``step`` is skipped when its gradients are not finite.

    Everything else is the wrapped optimiser's. ``skipped`` counts the steps skipped since the
    last :meth:`reset`.
    """

    def __init__(self, optimizer: Any) -> None:
        self._optimizer = optimizer
        self.skipped = 0

    def step(self, closure: Any = None) -> Any:
        if not grads_finite(self._optimizer):
            self.skipped += 1
            self._optimizer.zero_grad(set_to_none=True)
            return None
        return self._optimizer.step(closure)

    def reset(self) -> None:
        self.skipped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)


class BufferSnapshot:
    """Copies of a module's floating-point buffers, to undo a skipped iteration's updates."""

    def __init__(self, module: nn.Module) -> None:
        self.buffers = [b for b in module.buffers() if b.is_floating_point()]
        self.saved = [b.detach().clone() for b in self.buffers]

    def restore(self) -> None:
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved):
                b.copy_(s)
