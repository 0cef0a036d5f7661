"""Released DAFormer / HRDA / MIC checkpoints (mmseg layout) <-> gbw networks.

:func:`from_reference` builds the gbw network of an architecture and fills every tensor from a
reference state dict (names in :mod:`gbw.models.reference_names`), strictly: a tensor the
network needs and the file lacks, or a shape that does not fit, is an error naming the key.
Keys of the file that map to nothing are reported, with the reason where one is known.
:func:`to_reference` is the inverse (the test suite's round trip, and a way to hand gbw
weights to the reference code). The MiT encoder is filled by :func:`gbw.models.mit.
load_mit_weights`, so both MiT backends (smp, transformers) work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gbw.models.base import SegmentationModel
from gbw.models.mit import MIT_VARIANTS, MiTConfig, load_mit_weights
from gbw.models.reference_names import (
    MODULE_PREFIXES,
    SKIPPED_PREFIXES,
    backbone_prefix,
    family,
    is_linear_embedding,
    reference_name,
)
from gbw.models.registry import build_model


class ConvertError(ValueError):
    """A checkpoint cannot be converted; the message names the file and key."""


@dataclass
class ConvertReport:
    """What a conversion used and what it left out."""

    source: str
    arch: str
    module: str
    model_name: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    loaded: int = 0
    not_mapped: dict[str, str] = field(default_factory=dict)  # key -> why
    out: str = ""

    def summary(self) -> str:
        lines = [
            f"{self.source}: {self.arch} ({self.module}, {self.num_classes} classes): "
            f"{self.loaded} tensors converted" + (f" -> {self.out}" if self.out else "")
        ]
        groups: dict[str, list[str]] = {}
        for key, why in self.not_mapped.items():
            groups.setdefault(why, []).append(key)
        for why, keys in groups.items():
            lines.append(f"  not mapped ({len(keys)} keys, {why}):")
            lines += [f"    {k}" for k in keys]
        if not self.not_mapped:
            lines.append("  every key of the selected module was mapped")
        return "\n".join(lines)


# --- reading -------------------------------------------------------------------------------------

_NUMPY_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The flat state dict of an mmcv/mmseg checkpoint, read with ``weights_only=True``.

    mmcv's ``meta`` may hold numpy arrays or scalars (e.g. a palette); those numpy
    reconstruction functions, and only those, are allowed besides tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        obj = _load_with_numpy(path, first)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ConvertError(f"{path}: holds no state dict of tensors (expected mmcv's 'state_dict')")
    return {str(k): v for k, v in sd.items()}


def _load_with_numpy(path: Path, first: Exception) -> Any:
    import importlib

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        needed = None
    if not needed or any(n not in _NUMPY_GLOBALS for n in needed):
        raise ConvertError(
            f"{path}: refused to load ({type(first).__name__}: {str(first).splitlines()[0]}); "
            "only tensors, plain values and numpy arrays are read"
        ) from None
    import numpy as np

    allowed: list[Any] = []
    for name in needed:
        mod, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(mod), attr))
    # a dtype is rebuilt from its class (numpy.dtypes.Float64DType, ...): plain data types
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvertError(
            f"{path}: refused to load ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "only tensors, plain values and numpy arrays are read"
        ) from None


def select_module(
    sd: Mapping[str, Tensor], module: str = "student"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The segmentor state dict of ``module`` (``student`` = ``model.``, ``teacher`` =
    ``ema_model.``) without its prefix, and every other key with the reason it is left out.
    A plain segmentor checkpoint (no UDA prefixes) is both student and teacher."""
    if module not in MODULE_PREFIXES:
        raise ConvertError(f"module must be one of {sorted(MODULE_PREFIXES)}, got {module!r}")
    prefix = MODULE_PREFIXES[module]
    wrapped = any(k.startswith(tuple(MODULE_PREFIXES.values())) for k in sd)
    picked: dict[str, Tensor] = {}
    left: dict[str, str] = {}
    for key, value in sd.items():
        if not wrapped:
            picked[key] = value
        elif key.startswith(prefix):
            picked[key[len(prefix) :]] = value
        else:
            other = next((w for p, w in SKIPPED_PREFIXES.items() if key.startswith(p)), None)
            if other is None:
                other = next(
                    (
                        f"the {m} network (choose it with --module {m})"
                        for m, p in MODULE_PREFIXES.items()
                        if key.startswith(p)
                    ),
                    "not part of a DAFormer/HRDA/MIC segmentor",
                )
            left[key] = other
    if not picked:
        raise ConvertError(f"no keys under {prefix!r} (the {module}); found e.g. {list(sd)[:3]}")
    return picked, left


# --- architecture from the tensors ----------------------------------------------------------------


def infer_model_kwargs(
    model_name: str, sd: Mapping[str, Tensor], where: str = "<state dict>"
) -> tuple[int, dict[str, Any]]:
    """(num_classes, model kwargs) of the gbw network that fits a reference state dict:
    classes, decoder widths, MiT depths and widths, attention head width and class-wise-ness."""
    fam = family(model_name)
    head = "decode_head.head." if fam == "hrda" else "decode_head."
    try:
        num_classes = sd[head + "conv_seg.weight"].shape[0]
        embed_dim = sd[head + "embed_layers.0.proj.weight"].shape[0]
        channels = sd[head + "fuse_layer.bottleneck.conv.weight"].shape[0]
    except KeyError as exc:
        raise ConvertError(
            f"{where}: not a {model_name} checkpoint: no {exc.args[0]!r} (is --arch right?)"
        ) from None
    kwargs: dict[str, Any] = {}
    if embed_dim != 256:
        kwargs["embed_dim"] = int(embed_dim)
    if channels != 256:
        kwargs["channels"] = int(channels)
    encoder = _mit_shape(sd)
    named = next((n for n, c in MIT_VARIANTS.items() if _shape_of(c) == encoder), None)
    if model_name.endswith("mitb5"):
        if named != "b5":
            raise ConvertError(
                f"{where}: --arch {model_name}: the checkpoint's MiT has widths {encoder[0]} and "
                f"depths {encoder[1]}, not MiT-B5's; use --arch {model_name[:-2]}"
            )
    elif named is not None:
        kwargs["encoder"] = named
    else:
        kwargs["encoder"] = None  # checkpoints do not store head counts: the caller must say
    if fam == "hrda":
        att = "decode_head.scale_attention."
        if att + "conv_seg.weight" not in sd:
            raise ConvertError(f"{where}: not an HRDA checkpoint: no {att + 'conv_seg.weight'!r}")
        att_dim = sd[att + "fuse_layer.conv.weight"].shape[0]
        if att_dim != 256:
            kwargs["attention_embed_dim"] = int(att_dim)
        if sd[att + "conv_seg.weight"].shape[0] == 1 and num_classes != 1:
            kwargs["attention_classwise"] = False
    return int(num_classes), kwargs


def _shape_of(c: MiTConfig) -> tuple[tuple[int, ...], ...]:
    return (tuple(c.embed_dims), tuple(c.depths), tuple(c.sr_ratios), tuple(c.mlp_ratios))


def _mit_shape(sd: Mapping[str, Tensor]) -> tuple[tuple[int, ...], ...]:
    """(widths, depths, reduction ratios, MLP ratios) of the MiT under ``backbone.``; the head
    counts are not stored in a checkpoint, so a variant is recognised by these."""
    dims, depths, srs, mlps = [], [], [], []
    for s in range(1, 5):
        w = sd.get(f"backbone.patch_embed{s}.proj.weight")
        if w is None:
            raise ConvertError(f"no 'backbone.patch_embed{s}.proj.weight': not a MiT backbone")
        c = int(w.shape[0])
        dims.append(c)
        depths.append(len({k.split(".")[2] for k in sd if k.startswith(f"backbone.block{s}.")}))
        sr = sd.get(f"backbone.block{s}.0.attn.sr.weight")
        srs.append(int(sr.shape[-1]) if sr is not None else 1)
        mlps.append(int(sd[f"backbone.block{s}.0.mlp.fc1.weight"].shape[0]) // c)
    return (tuple(dims), tuple(depths), tuple(srs), tuple(mlps))


# --- both directions -----------------------------------------------------------------------------


def from_reference(
    model_name: str,
    sd: Mapping[str, Tensor],
    *,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    where: str = "<state dict>",
) -> tuple[SegmentationModel, ConvertReport]:
    """Build gbw's ``model_name`` and fill it from a reference *segmentor* state dict
    (prefixes already removed, :func:`select_module`). ``model_kwargs`` replace the inferred
    ones (e.g. the MiT variant's head counts, which checkpoints do not store)."""
    inferred_classes, kwargs = infer_model_kwargs(model_name, sd, where)
    if model_kwargs:
        kwargs.update(model_kwargs)
    if "encoder" in kwargs and kwargs["encoder"] is None:
        raise ConvertError(
            f"{where}: the MiT backbone is none of {sorted(MIT_VARIANTS)}; pass its config "
            "(embed_dims, depths, num_heads, ...) as model_kwargs={'encoder': {...}}"
        )
    classes = num_classes if num_classes is not None else inferred_classes
    torch.manual_seed(0)  # the values are all replaced; only the construction is seeded
    model = build_model(model_name, classes, **kwargs)
    report = ConvertReport(where, model_name, "", model_name, dict(kwargs), classes)
    # the MiT encoder: NVlabs names, loaded by the MiT loader (either backend)
    enc_path, ref_prefix = backbone_prefix(model_name)
    encoder = model.get_submodule(enc_path)
    backbone = {k[len(ref_prefix) :]: v for k, v in sd.items() if k.startswith(ref_prefix)}
    try:
        load_mit_weights(encoder, backbone, strict=True)
    except ValueError as exc:
        raise ConvertError(f"{where}: MiT backbone: {exc}") from None
    # the heads: by name
    own = model.state_dict()
    inverse = {}
    for key in own:
        if key.startswith(enc_path + "."):
            continue
        ref = reference_name(model_name, key)
        if ref is not None:
            inverse[ref] = key
    filled = {k for k in own if k.startswith(enc_path + ".")}
    new: dict[str, Tensor] = {}
    for ref_key, value in sd.items():
        if ref_key.startswith(ref_prefix):
            continue
        key = inverse.get(ref_key)
        if key is None:
            report.not_mapped[ref_key] = "no counterpart in gbw's network"
            continue
        if is_linear_embedding(ref_key) and value.ndim == 2:
            value = value[:, :, None, None]
        if value.shape != own[key].shape:
            raise ConvertError(
                f"{where}: shape mismatch for '{ref_key}' -> '{key}': file has "
                f"{tuple(value.shape)}, model expects {tuple(own[key].shape)}"
            )
        new[key] = value
    missing = [k for k in own if k not in new and k not in filled]
    if missing:
        names = [reference_name(model_name, k) or k for k in missing]
        raise ConvertError(
            f"{where}: the checkpoint lacks {len(missing)} tensor(s) of {model_name}, e.g. "
            + ", ".join(names[:5])
        )
    with torch.no_grad():
        for key, value in new.items():
            own[key].copy_(value)
    report.loaded = len(backbone) + len(new)
    return model, report


def to_reference(model_name: str, model: SegmentationModel) -> dict[str, Tensor]:
    """gbw network -> reference segmentor state dict (the inverse of :func:`from_reference`,
    smp MiT backend)."""
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        ref = reference_name(model_name, key)
        if ref is None:
            raise ConvertError(f"{key}: no reference name (only the smp MiT backend exports)")
        if is_linear_embedding(ref):
            value = value[:, :, 0, 0]
        out[ref] = value.detach().clone()
    return out


#: The reference evaluation protocol of each family (RECIPES.md; DAFormer: the 2048x1024
#: Cityscapes image at 1024x512, whole; HRDA/MIC: 1024x1024 windows, stride 512, full size).
EVAL_PROTOCOLS = {
    "daformer": {"mode": "whole", "resize": [1024, 512]},
    "hrda": {"mode": "slide", "resize": None, "crop": [1024, 1024], "stride": [512, 512]},
}
