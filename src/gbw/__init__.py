"""gbw: gradient-based class weighting for unsupervised domain adaptation in dense prediction."""

__version__ = "0.1.0"
