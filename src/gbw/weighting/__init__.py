"""GBW: gradient-based class weighting, in pure torch. Read in this order:

1. :mod:`~gbw.weighting.signals`  - the per-class gradient signal g (closed forms);
2. :mod:`~gbw.weighting.qp`       - the exact QP that turns g into weights v;
3. :mod:`~gbw.weighting.losses`   - weighted cross-entropy / entropy / focal losses;
4. :mod:`~gbw.weighting.strategies` - GBW and the paper's baselines behind one interface;
5. :mod:`~gbw.weighting.module`   - ``GBWCrossEntropy`` for someone else's training loop.
"""

from gbw.weighting.losses import (
    REDUCTIONS,
    check_reduction,
    focal_loss,
    weighted_cross_entropy,
    weighted_entropy,
)
from gbw.weighting.module import GBWCrossEntropy
from gbw.weighting.qp import NEUTRAL_WEIGHT, project_simplex, solve_class_weights
from gbw.weighting.signals import class_grad_sqnorms, entropy_grad_sqnorms
from gbw.weighting.strategies import (
    GBW,
    WEIGHTINGS,
    ClassWeighting,
    Focal,
    InverseFrequency,
    LossBasedWeighting,
    NoWeighting,
    make_weighting,
)

__all__ = [
    "GBW",
    "NEUTRAL_WEIGHT",
    "REDUCTIONS",
    "WEIGHTINGS",
    "ClassWeighting",
    "Focal",
    "GBWCrossEntropy",
    "InverseFrequency",
    "LossBasedWeighting",
    "NoWeighting",
    "check_reduction",
    "class_grad_sqnorms",
    "entropy_grad_sqnorms",
    "focal_loss",
    "make_weighting",
    "project_simplex",
    "solve_class_weights",
    "weighted_cross_entropy",
    "weighted_entropy",
]
