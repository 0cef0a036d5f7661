"""gbw: gradient-based class weighting for unsupervised domain adaptation in dense prediction.

The method itself lives in :mod:`gbw.weighting` (pure torch); its public names are re-exported
here so that ``import gbw; gbw.GBWCrossEntropy(19)`` works. They are loaded on first use
(PEP 562), so that ``import gbw`` alone - and ``gbw --help`` - does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "GBW",
    "ClassWeighting",
    "Focal",
    "GBWCrossEntropy",
    "InverseFrequency",
    "LossBasedWeighting",
    "NoWeighting",
    "__version__",
    "class_grad_sqnorms",
    "entropy_grad_sqnorms",
    "focal_loss",
    "make_weighting",
    "solve_class_weights",
    "weighted_cross_entropy",
    "weighted_entropy",
]

if TYPE_CHECKING:
    from gbw.weighting import (
        GBW,
        ClassWeighting,
        Focal,
        GBWCrossEntropy,
        InverseFrequency,
        LossBasedWeighting,
        NoWeighting,
        class_grad_sqnorms,
        entropy_grad_sqnorms,
        focal_loss,
        make_weighting,
        solve_class_weights,
        weighted_cross_entropy,
        weighted_entropy,
    )


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        value = getattr(importlib.import_module("gbw.weighting"), name)
        globals()[name] = value  # cache: the next access is a plain attribute
        return value
    raise AttributeError(f"module 'gbw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
