"""gbw: gradient-based class weighting for unsupervised domain adaptation in dense prediction.

The method itself lives in :mod:`gbw.weighting` (pure torch); its public names are re-exported
here so that ``import gbw; gbw.GBWCrossEntropy(19)`` works.
"""

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
