"""The model interface every UDA method uses, input normalisation, weight-file helpers, factory.

A segmentation model takes float images ``(B, 3, H, W)``, RGB in [0, 1] (the data layer's
convention, so that mixing and photometric augmentation act on plain images) and returns a
:class:`SegOutput` dict:

* ``"main"``: logits ``(B, C, h, w)`` at the decoder's native resolution
  (``model.output_stride``: 8 for DeepLabV2, 4 for DAFormer). Resizing to the label size is
  the loss's or the evaluator's job, as in the references.
* ``"aux"``: DeepLabV2's conv4 (layer3) classifier, only when the model has one
  (multi-level AdaptSegNet / ADVENT).
* ``"features"``: the encoder's feature maps, only with ``return_features=True`` (DAFormer's
  ImageNet feature distance, HRDA's scale attention).

Each model owns its input normalisation (:class:`InputNormalization`), because it belongs to
the pretrained weights: caffe-style BGR mean subtraction on 0..255 values for the DeepLab
ResNet, ImageNet mean/std for MiT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: ImageNet statistics (RGB, [0, 1] scale) used by torchvision and SegFormer/DAFormer
#: (DAFormer's ``img_norm_cfg``: mean 123.675/116.28/103.53, std 58.395/57.12/57.375 on 0..255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Caffe DeepLab mean in **BGR** order on 0..255 values, no std division
#: (AdaptSegNet, ADVENT ``cfg.TRAIN.IMG_MEAN``, DACS ``IMG_MEAN``).
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


class SegOutput(TypedDict):
    """What :meth:`SegmentationModel.forward` returns (a plain dict at run time)."""

    main: Tensor
    aux: NotRequired[Tensor]
    features: NotRequired[list[Tensor]]


class InputNormalization(nn.Module):
    """Maps RGB images in [0, 1] to what a backbone's pretrained weights expect.

    ``y[c] = (x[src(c)] * scale - mean[c]) / std[c]`` with ``src`` reversing the channels
    when ``bgr=True``. ``mean``/``std`` are given in the *output* channel order. Computed as a
    single ``addcmul`` with precomputed per-channel weight and bias. The buffers are not
    persistent: they are constants of the architecture, not state, so state dicts stay
    compatible with the reference checkpoints.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float] = (1.0, 1.0, 1.0),
        *,
        scale: float = 1.0,
        bgr: bool = False,
    ) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.bgr = bgr
        self.register_buffer("weight", scale / std_t, persistent=False)
        self.register_buffer("bias", -mean_t / std_t, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if self.bgr:
            x = x.flip(1)
        return torch.addcmul(self.bias.to(x.dtype), x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"bgr={self.bgr}"


class SegmentationModel(nn.Module):
    """Base class: normalisation + encoder/decoder, ``forward(x) -> SegOutput``.

    Subclasses set ``num_classes``, ``output_stride`` (of ``"main"``), ``head_prefixes``
    (names of the top-level modules trained with ``head_lr_mult``) and implement
    :meth:`forward`. They may override :meth:`no_weight_decay_names`.
    """

    num_classes: int
    output_stride: int
    head_prefixes: tuple[str, ...] = ()

    def forward(self, x: Tensor, return_features: bool = False) -> SegOutput:  # pragma: no cover
        raise NotImplementedError

    def no_weight_decay_names(self) -> set[str]:
        """Names of parameters that the recipe trains without weight decay (none by default)."""
        return set()

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Optimiser parameter groups: backbone at ``lr``, heads at ``lr * head_lr_mult``.

        All recipes train the decoder/classifier with 10x the backbone learning rate
        (AdaptSegNet/ADVENT/DACS ``optim_parameters``: ``10 * lr`` for the classifiers;
        DAFormer ``paramwise_cfg``: ``head=dict(lr_mult=10.0)``). Parameters named by
        :meth:`no_weight_decay_names` get ``weight_decay=0.0``; the other groups carry no
        ``weight_decay`` key, so the optimiser's own value applies. Frozen parameters
        (``requires_grad=False``) are left out. Each group also has ``"name"`` and
        ``"lr_mult"`` (extra keys that torch optimisers keep) for logging and schedulers.
        """
        no_decay = self.no_weight_decay_names()
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_head = name.split(".", 1)[0] in self.head_prefixes
            buckets.setdefault((is_head, name in no_decay), []).append(p)
        groups = []
        for (is_head, nd), params in sorted(buckets.items()):
            mult = head_lr_mult if is_head else 1.0
            group: dict[str, Any] = {
                "params": params,
                "lr": lr * mult,
                "lr_mult": mult,
                "name": ("head" if is_head else "backbone") + ("_no_decay" if nd else ""),
            }
            if nd:
                group["weight_decay"] = 0.0
            groups.append(group)
        return groups


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as frozen BatchNorm statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# Weight files


@dataclass
class LoadReport:
    """What a weight loader did: which model keys it filled, and which file keys it did not use.

    ``missing``: model keys the file did not provide. ``unexpected``: file keys that map to
    nothing in the model. ``skipped``: file keys deliberately not loaded, with the reason
    (e.g. an ImageNet classifier, a BatchNorm counter).
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.path}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"  missing in file ({len(self.missing)}): {_abbrev(self.missing)}")
        if self.unexpected:
            lines.append(
                f"  unexpected in file ({len(self.unexpected)}): {_abbrev(self.unexpected)}"
            )
        reasons: dict[str, list[str]] = {}
        for key, why in self.skipped.items():
            reasons.setdefault(why, []).append(key)
        for why, keys in reasons.items():
            lines.append(f"  skipped ({len(keys)}, {why}): {_abbrev(keys)}")
        return "\n".join(lines)

    def raise_if_incomplete(self) -> None:
        """Raises ``ValueError`` if any model key was missing or any file key unexpected."""
        if self.missing or self.unexpected:
            raise ValueError("incomplete weight load (strict=True)\n" + self.summary())


def _abbrev(keys: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


StateDictSource = str | Path | Mapping[str, Tensor]


def load_state_dict_file(source: StateDictSource) -> tuple[dict[str, Tensor], str]:
    """Reads a state dict from a local file (or passes a mapping through).

    Always ``torch.load(path, map_location="cpu", weights_only=True)``: no pickled code runs.
    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints (as DAFormer's MiT loader
    does) and a DataParallel ``module.`` prefix. Returns ``(state_dict, description)``.
    """
    if isinstance(source, Mapping):
        sd: Any = dict(source)
        where = "<state dict>"
    else:
        path = Path(source).expanduser()
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"weight file not found: {path}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for truncated/foreign files
            raise ValueError(f"could not read weight file {path}: {err}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{where} does not hold a state dict of tensors")
    out = {str(k): v for k, v in sd.items()}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out, where


def check_shape(where: str, src_key: str, src: Tensor, dst_key: str, dst: Tensor) -> None:
    """Raises ``ValueError`` naming both keys and shapes when a tensor does not fit."""
    if src.shape != dst.shape:
        raise ValueError(
            f"{where}: shape mismatch for '{src_key}' -> '{dst_key}': file has "
            f"{tuple(src.shape)}, model expects {tuple(dst.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Factory


def _deeplabv2_r101(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> SegmentationModel:
    from gbw.models.deeplabv2 import DeepLabV2, load_deeplab_weights

    model = DeepLabV2(num_classes, **kwargs)
    if weights is not None:
        log.info(load_deeplab_weights(model, weights).summary())
    return model


def _daformer_mitb5(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> SegmentationModel:
    return _daformer_mit(num_classes, weights=weights, encoder="b5", **kwargs)


def _daformer_mit(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> SegmentationModel:
    from gbw.models.daformer import DAFormer
    from gbw.models.mit import load_mit_weights

    model = DAFormer(num_classes, **kwargs)
    if weights is not None:
        log.info(load_mit_weights(model.backbone, weights).summary())
    return model


def _hrda_daformer_mitb5(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> SegmentationModel:
    return _hrda_daformer_mit(num_classes, weights=weights, encoder="b5", **kwargs)


def _hrda_daformer_mit(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> SegmentationModel:
    from gbw.models.hrda import build_hrda_daformer

    return build_hrda_daformer(num_classes, weights=weights, **kwargs)


def _edaps_mitb5(num_classes: int = 19, **kwargs: Any) -> SegmentationModel:
    from gbw.models.edaps import build_edaps

    return build_edaps(num_classes, encoder="b5", **kwargs)


def _edaps_mit(num_classes: int = 19, **kwargs: Any) -> SegmentationModel:
    from gbw.models.edaps import build_edaps

    return build_edaps(num_classes, **kwargs)


def _edaps_tiny(num_classes: int = 19, **kwargs: Any) -> SegmentationModel:
    from gbw.models.edaps import build_edaps_tiny

    return build_edaps_tiny(num_classes, **kwargs)


def _tinyseg(num_classes: int = 19, **kwargs: Any) -> SegmentationModel:
    from gbw.models.tiny import TinySeg

    return TinySeg(num_classes, **kwargs)


#: name -> constructor. ``weights`` (a local file) loads the backbone's pretrained weights.
MODELS: dict[str, Callable[..., SegmentationModel]] = {
    "deeplabv2_r101": _deeplabv2_r101,
    "daformer_mitb5": _daformer_mitb5,
    "daformer_mit": _daformer_mit,
    "hrda_daformer_mitb5": _hrda_daformer_mitb5,  # HRDA's multi-resolution DAFormer
    "hrda_daformer_mit": _hrda_daformer_mit,
    "edaps_mitb5": _edaps_mitb5,  # EDAPS: DAFormer + Mask R-CNN style instance decoder
    "edaps_mit": _edaps_mit,
    "edaps_tiny": _edaps_tiny,  # EDAPS on the tiny MiT, for the CPU
    "tinyseg": _tinyseg,
}


def build_model(name: str, num_classes: int = 19, **kwargs: Any) -> SegmentationModel:
    """Builds a model by name (see :data:`MODELS`); ``kwargs`` go to its constructor.

    ``weights=<path>`` loads pretrained backbone weights from a local file:
    DeepLab/torchvision ResNet-101 files for ``deeplabv2_r101``, the SegFormer ImageNet-1k
    ``mit_b*.pth`` for the ``daformer_*`` models. Nothing is downloaded.
    """
    try:
        ctor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return ctor(num_classes, **kwargs)
