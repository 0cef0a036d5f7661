"""Segmentation networks (DeepLabV2 ResNet-101, DAFormer with MiT, TinySeg) and the domain
discriminator, all behind one interface (:class:`SegmentationModel`, :func:`build_model`).

The MiT models need the optional libraries ``segmentation-models-pytorch`` (default backend)
or ``transformers``; they are imported only when such a model is built.
"""

from gbw.models.base import (
    InputNormalization,
    LoadReport,
    SegmentationModel,
    SegOutput,
    count_parameters,
)
from gbw.models.deeplabv2 import DeepLabV2, load_deeplab_weights
from gbw.models.discriminator import FCDiscriminator
from gbw.models.registry import MODEL_NAMES, MODELS, build_model
from gbw.models.tiny import TinySeg

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "DeepLabV2",
    "FCDiscriminator",
    "InputNormalization",
    "LoadReport",
    "SegOutput",
    "SegmentationModel",
    "TinySeg",
    "build_model",
    "count_parameters",
    "load_deeplab_weights",
]
