"""Parameter names of DAFormer, HRDA and MIC checkpoints (mmseg 0.x) and gbw's, both ways.

Read from lhoyer/DAFormer, lhoyer/HRDA and lhoyer/MIC (``mmseg/models/backbones/
mix_transformer.py``, ``decode_heads/{daformer_head,aspp_head,sep_aspp_head,segformer_head,
hrda_head}.py``, ``uda/{uda_decorator,dacs}.py``, mmcv's ``ConvModule`` and
``DepthwiseSeparableConvModule``); no code is taken from them. A released checkpoint is
mmcv's ``{"meta", "state_dict", "optimizer"}`` whose ``state_dict`` belongs to the UDA wrapper:

* ``model.``: the student segmentor (what DAFormer/HRDA/MIC evaluate and release),
  ``ema_model.``: the EMA teacher, ``imnet_model.``: the frozen ImageNet model of the feature
  distance (not a segmentation network), ``mic.``: MIC's masking module (an extra teacher only
  when ``mask_alpha != 'same'``, not the default). A plain segmentor has no prefix.
* segmentor: ``backbone.`` = NVlabs' MiT names (``patch_embed1.proj``, ``block1.0.attn.kv``,
  ...), identical to gbw's smp backend under ``backbone.model.``;
  ``decode_head.`` = DAFormerHead: ``embed_layers.<i>.proj`` (an ``nn.Linear`` on tokens: gbw
  has the equivalent 1x1 convolution, weight (O, C) <-> (O, C, 1, 1)), ``fuse_layer.
  aspp_modules.<j>`` (dilation 1: a ConvModule ``conv``/``bn``; dilation > 1: a
  DepthwiseSeparableConvModule ``depthwise_conv.{conv,bn}``, ``pointwise_conv.{conv,bn}``),
  ``fuse_layer.bottleneck.{conv,bn}``, ``conv_seg``.
* HRDA (and MIC on HRDA): ``decode_head.head.`` = the DAFormerHead above,
  ``decode_head.scale_attention.`` = a DAFormerHead whose fusion is one 1x1 ConvModule:
  ``embed_layers.<i>.proj``, ``fuse_layer.{conv,bn}``, ``conv_seg``. ``HRDAHead`` deletes its
  own ``conv_seg``/``dropout``, so nothing else is stored.

MIC uses these two architectures (MIC(DAFormer), MIC(HRDA)), so its checkpoints convert with
``daformer_*`` or ``hrda_daformer_*``. EDAPS (mmdet, panoptic) has another layout and is not
covered until gbw has the panoptic recipe.

This module imports nothing heavy: the CLI builds its ``--arch`` choices from :data:`ARCHS`.
"""

from __future__ import annotations

import re

#: ``--arch`` of ``gbw convert`` -> (gbw model name, model kwargs). ``*_mit`` infers the MiT
#: variant from the checkpoint (any depth and width, e.g. small test models).
ARCHS: dict[str, tuple[str, dict]] = {
    "daformer_mitb5": ("daformer_mitb5", {}),
    "hrda_daformer_mitb5": ("hrda_daformer_mitb5", {}),
    "daformer_mit": ("daformer_mit", {}),
    "hrda_daformer_mit": ("hrda_daformer_mit", {}),
}

#: What ``--module`` selects in a UDA checkpoint.
MODULE_PREFIXES = {"student": "model.", "teacher": "ema_model."}
#: Prefixes that are not a segmentation network to evaluate, and why.
SKIPPED_PREFIXES = {
    "imnet_model.": "ImageNet feature-distance model (frozen, not a segmentation network)",
    "mic.": "MIC masking-consistency module (training only)",
}

_PAIRS_HEAD = [
    # gbw (under the head prefix)              reference (under its head prefix)
    (r"embed\.(\d+)\.(weight|bias)", r"embed_layers.\1.proj.\2"),
    (r"fuse\.branches\.(\d+)\.0\.0\.(.+)", r"fuse_layer.aspp_modules.\1.depthwise_conv.conv.\2"),
    (r"fuse\.branches\.(\d+)\.0\.1\.(.+)", r"fuse_layer.aspp_modules.\1.depthwise_conv.bn.\2"),
    (r"fuse\.branches\.(\d+)\.1\.0\.(.+)", r"fuse_layer.aspp_modules.\1.pointwise_conv.conv.\2"),
    (r"fuse\.branches\.(\d+)\.1\.1\.(.+)", r"fuse_layer.aspp_modules.\1.pointwise_conv.bn.\2"),
    (r"fuse\.branches\.(\d+)\.0\.([a-z_]+)", r"fuse_layer.aspp_modules.\1.conv.\2"),
    (r"fuse\.branches\.(\d+)\.1\.([a-z_]+)", r"fuse_layer.aspp_modules.\1.bn.\2"),
    (r"fuse\.bottleneck\.0\.(.+)", r"fuse_layer.bottleneck.conv.\1"),
    (r"fuse\.bottleneck\.1\.(.+)", r"fuse_layer.bottleneck.bn.\1"),
    (r"fuse\.0\.(.+)", r"fuse_layer.conv.\1"),  # the scale attention's 1x1 ConvModule
    (r"fuse\.1\.(.+)", r"fuse_layer.bn.\1"),
    (r"conv_seg\.(weight|bias)", r"conv_seg.\1"),
]
_HEAD_RULES = [(re.compile(f"^{g}$"), r) for g, r in _PAIRS_HEAD]

#: gbw top-level prefix -> reference prefix, per architecture family.
_PREFIXES = {
    "daformer": [("backbone.model.", "backbone."), ("decode_head.", "decode_head.")],
    "hrda": [
        ("base.backbone.model.", "backbone."),
        ("base.decode_head.", "decode_head.head."),
        ("scale_attention.", "decode_head.scale_attention."),
    ],
}


def family(model_name: str) -> str:
    """``"hrda"`` or ``"daformer"`` for a gbw model name."""
    if model_name.startswith("hrda_"):
        return "hrda"
    if model_name.startswith("daformer_"):
        return "daformer"
    raise ValueError(f"no reference layout for model {model_name!r}; convert knows {sorted(ARCHS)}")


def reference_name(model_name: str, key: str) -> str | None:
    """The reference (mmseg) name of gbw parameter ``key`` (smp MiT backend), or None.

    Buffers that are not stored (the input normalisation) have none.
    """
    for ours, theirs in _PREFIXES[family(model_name)]:
        if not key.startswith(ours):
            continue
        rest = key[len(ours) :]
        if ours.endswith("backbone.model."):
            return theirs + rest
        for pattern, repl in _HEAD_RULES:
            if pattern.match(rest):
                return theirs + pattern.sub(repl, rest)
        return None
    return None


def is_linear_embedding(reference_key: str) -> bool:
    """mmseg's ``MLP`` embeddings are ``nn.Linear``: (O, C) there, (O, C, 1, 1) in gbw."""
    return ".embed_layers." in reference_key and reference_key.endswith(".proj.weight")


def backbone_prefix(model_name: str) -> tuple[str, str]:
    """(gbw prefix of the MiT encoder module, reference prefix of its keys)."""
    return (
        ("base.backbone", "backbone.")
        if family(model_name) == "hrda"
        else (
            "backbone",
            "backbone.",
        )
    )
