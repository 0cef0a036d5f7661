"""Class weights over training, tracked on the device every step (no host sync).

Keeps, per loss term and class: the sum of weights since the last log (for the paper's
Fig. 2 averaged weights), and over the whole run the maximum (Fig. 6a), sum and sum of
squares (standard deviation, Fig. 6b) and the number of steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class WeightTracker:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.interval: dict[str, Tensor] = {}
        self.interval_steps = 0
        self.total: dict[str, dict[str, Tensor]] = {}
        self.steps = 0

    def update(self, logs: dict[str, Tensor]) -> None:
        weights = {k[: -len("/weights")]: v for k, v in logs.items() if k.endswith("/weights")}
        for term, v in weights.items():
            v = v.detach().float()
            if term not in self.total:
                z = torch.zeros_like(v)
                self.total[term] = {
                    "sum": z.clone(),
                    "sumsq": z.clone(),
                    "max": torch.full_like(v, -math.inf),
                    "n": z.clone(),
                }
                self.interval[term] = z.clone()
            t = self.total[term]
            t["sum"] += v
            t["sumsq"] += v * v
            torch.maximum(t["max"], v, out=t["max"])
            t["n"] += 1
            self.interval[term] += v
        self.interval_steps += 1

    def interval_means(self) -> dict[str, Tensor]:
        """Mean weights per term since the last call, as ``<term>/weight`` (C,) tensors."""
        out = {
            f"{term}/weight": s / max(self.interval_steps, 1) for term, s in self.interval.items()
        }
        for s in self.interval.values():
            s.zero_()
        self.interval_steps = 0
        return out

    def summary(self, class_names: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for term, t in self.total.items():
            n = t["n"].clamp_min(1)
            mean = t["sum"] / n
            std = (t["sumsq"] / n - mean * mean).clamp_min(0).sqrt()
            out[term] = {
                name: {
                    "mean": float(mean[i]),
                    "std": float(std[i]),
                    "max": float(t["max"][i]),
                    "steps": int(t["n"][i]),
                }
                for i, name in enumerate(
                    class_names
                    if len(class_names) == mean.numel()
                    else map(str, range(mean.numel()))
                )
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "total": {k: dict(v) for k, v in self.total.items()},
            "steps": self.steps,
            "interval": dict(self.interval),
            "interval_steps": self.interval_steps,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device | str) -> WeightTracker:
        t = cls(device)
        if state:
            t.total = {
                k: {n: x.to(device) for n, x in v.items()} for k, v in state["total"].items()
            }
            t.interval = {k: v.to(device) for k, v in state["interval"].items()}
            t.interval_steps = state["interval_steps"]
            t.steps = state["steps"]
        return t
