"""Model names -> builders: ``build_model("daformer_mitb5", 19, weights=PATH)``.

Builders are imported when their model is built, so that one model's dependencies (e.g. the
MiT libraries) never load for another, and so that this lookup sits above every model file
(model files import :mod:`gbw.models.base`, never this module).
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from gbw.models.base import SegmentationModel

#: name -> ``"module:builder"`` plus fixed keyword arguments. ``weights`` (a local file) loads
#: the backbone's pretrained weights: DeepLab/torchvision ResNet-101 files for
#: ``deeplabv2_r101``, the SegFormer ImageNet-1k ``mit_b*.pth`` for the MiT models.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "deeplabv2_r101": ("gbw.models.deeplabv2:build_deeplabv2", {}),
    "daformer_mitb5": ("gbw.models.daformer:build_daformer", {"encoder": "b5"}),
    "daformer_mit": ("gbw.models.daformer:build_daformer", {}),
    # HRDA's multi-resolution DAFormer (context + detail, scale attention)
    "hrda_daformer_mitb5": ("gbw.models.hrda:build_hrda_daformer", {"encoder": "b5"}),
    "hrda_daformer_mit": ("gbw.models.hrda:build_hrda_daformer", {}),
    # EDAPS: DAFormer + Mask R-CNN style instance decoder (panoptic)
    "edaps_mitb5": ("gbw.models.edaps:build_edaps", {"encoder": "b5"}),
    "edaps_mit": ("gbw.models.edaps:build_edaps", {}),
    "edaps_tiny": ("gbw.models.edaps:build_edaps_tiny", {}),  # on the tiny MiT, for the CPU
    "tinyseg": ("gbw.models.tiny:TinySeg", {}),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_builder(name: str) -> Any:
    """The callable that builds model ``name`` (``builder(num_classes, **kwargs)``)."""
    try:
        target, fixed = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    module, attr = target.split(":")
    fn = getattr(importlib.import_module(module), attr)
    return partial(fn, **fixed) if fixed else fn


def build_model(name: str, num_classes: int = 19, **kwargs: Any) -> SegmentationModel:
    """Builds a model by name (see :data:`MODELS`); ``kwargs`` go to its constructor.

    ``weights=<path>`` loads pretrained backbone weights from a local file. Nothing is
    downloaded.
    """
    return model_builder(name)(num_classes, **kwargs)
