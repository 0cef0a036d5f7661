"""Mix Transformer (MiT) encoder of SegFormer (Xie et al., NeurIPS 2021), from a maintained
library, with the official ImageNet-1k weight loader and an opt-in fused-attention path.

Backends (``backend=``):

* ``"smp"`` (default): ``segmentation_models_pytorch.encoders.mix_transformer.
  MixVisionTransformer``. Its parameter names are NVlabs' own (``patch_embed1.proj``,
  ``block1.0.attn.q``, ``attn.kv``, ``mlp.dwconv.dwconv``, ``norm1``, ...), so the official
  ``mit_b5.pth`` maps one to one, and its LayerNorm epsilons are NVlabs' (1e-6 in the blocks
  and stage norms, 1e-5 in the patch embeddings and the key/value reduction). Measured
  fastest under ``torch.compile`` in shared/design/PERFORMANCE.md (138.8 vs 163.1 ms/step).
* ``"hf"``: ``transformers.SegformerModel`` (the ``stages`` layout of transformers >= 5.9:
  ``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``sequence_reduction``). Its names differ and
  ``kv`` is split into ``k_proj``/``v_proj`` when loading. transformers builds every
  LayerNorm with eps 1e-5; this wrapper sets the block and stage norms to NVlabs' 1e-6, so
  both backends compute the same function (``tests/models/test_mit.py`` checks it).

Fused attention (``fused_attention=True``, or :meth:`MiTEncoder.set_fused_attention`):
smp's ``Attention.forward`` materialises the (N x N/r^2) attention matrix. The override swaps
each attention module's class for :class:`_SdpaAttention`, same parameters, whose forward
calls ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPUs). For
``"hf"`` it selects transformers' own ``"sdpa"`` attention implementation; ``False`` selects
its ``"eager"`` one (transformers 5 picks SDPA by default). DAFormer uses no attention dropout,
so both paths compute the same function; the tests compare them in float64.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cache, partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.models.base import (
    LoadReport,
    StateDictSource,
    check_shape,
    load_state_dict_file,
)

Backend = Literal["smp", "hf"]


@dataclass(frozen=True)
class MiTConfig:
    """Hyper-parameters of a MiT encoder (NVlabs/SegFormer ``mix_transformer.py``)."""

    embed_dims: tuple[int, int, int, int] = (64, 128, 320, 512)
    depths: tuple[int, int, int, int] = (3, 6, 40, 3)
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    #: stochastic depth, linearly increasing to this value over all blocks (0.1 in SegFormer
    #: and DAFormer's ``MixVisionTransformer``).
    drop_path_rate: float = 0.1

    @classmethod
    def from_any(cls, spec: str | MiTConfig | dict[str, Any]) -> MiTConfig:
        """Accepts a variant name (``"b0"`` ... ``"b5"``, ``"tiny"``), a config or a dict."""
        if isinstance(spec, MiTConfig):
            return spec
        if isinstance(spec, str):
            try:
                return MIT_VARIANTS[spec]
            except KeyError:
                raise ValueError(
                    f"unknown MiT variant {spec!r}; choose one of {sorted(MIT_VARIANTS)}"
                ) from None
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown MiTConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


_WIDE = {"embed_dims": (64, 128, 320, 512), "num_heads": (1, 2, 5, 8)}
#: NVlabs/SegFormer ``mit_b0`` ... ``mit_b5`` (depths from their class definitions), plus a
#: tiny config for tests and CPU runs.
MIT_VARIANTS: dict[str, MiTConfig] = {
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": MiTConfig(**_WIDE, depths=(2, 2, 2, 2)),
    "b2": MiTConfig(**_WIDE, depths=(3, 4, 6, 3)),
    "b3": MiTConfig(**_WIDE, depths=(3, 4, 18, 3)),
    "b4": MiTConfig(**_WIDE, depths=(3, 8, 27, 3)),
    "b5": MiTConfig(**_WIDE, depths=(3, 6, 40, 3)),
    "tiny": MiTConfig(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4)),
}

# ---------------------------------------------------------------------------------------------
# smp backend


def _smp_module() -> Any:
    from segmentation_models_pytorch.encoders import mix_transformer

    return mix_transformer


@cache
def _sdpa_class() -> type[nn.Module]:
    """Builds the fused-attention subclass on first use (smp is imported lazily)."""
    smp_mit = _smp_module()

    class _SdpaAttention(smp_mit.Attention):
        """smp/NVlabs spatial-reduction attention computed with ``scaled_dot_product_attention``.

        Same parameters and the same function as the library's ``Attention.forward``
        (softmax(q k^T * scale) v, with k and v from the spatially reduced tokens).
        """

        def forward(self, x: Tensor, height: int, width: int) -> Tensor:
            b, n, c = x.shape
            heads = self.num_heads
            q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
            if self.sr_ratio > 1:
                x = x.transpose(1, 2).reshape(b, c, height, width)
                x = self.norm(self.sr(x).reshape(b, c, -1).transpose(1, 2))
            kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            k, v = kv.unbind(0)
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    # Registered under this module's name so that pickling a patched model works
    # (module-level __getattr__ below rebuilds the class in a fresh process).
    _SdpaAttention.__module__ = __name__
    _SdpaAttention.__qualname__ = "_SdpaAttention"
    return _SdpaAttention


def __getattr__(name: str) -> Any:
    if name == "_SdpaAttention":
        return _sdpa_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def _fast_trunc_normal(module: Any) -> Iterator[None]:
    """Makes ``module.trunc_normal_`` a plain normal draw while a model is built.

    Why: smp (like NVlabs) re-initialises every Linear once per enclosing module (Mlp or
    Attention, Block, the whole net) with timm's erfinv-based truncated normal, which takes
    ~13 s for MiT-B5 on 2 CPU cores. With std 0.02 and bounds (-2, 2) the truncation sits at
    100 standard deviations, beyond anything a float32 normal draw produces, so ``normal_``
    samples the same distribution ~20x faster. Bounds closer than 8 std use the original.
    """
    original = module.trunc_normal_

    def fast(
        t: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
    ) -> Tensor:
        if (b - mean) / std < 8 or (mean - a) / std < 8:
            return original(t, mean=mean, std=std, a=a, b=b)
        with torch.no_grad():
            return t.normal_(mean, std)

    module.trunc_normal_ = fast
    try:
        yield
    finally:
        module.trunc_normal_ = original


def _build_smp(cfg: MiTConfig) -> nn.Module:
    smp_mit = _smp_module()
    with _fast_trunc_normal(smp_mit):
        return smp_mit.MixVisionTransformer(
            embed_dims=list(cfg.embed_dims),
            num_heads=list(cfg.num_heads),
            mlp_ratios=list(cfg.mlp_ratios),
            qkv_bias=True,
            norm_layer=partial(smp_mit.LayerNorm, eps=1e-6),
            depths=list(cfg.depths),
            sr_ratios=list(cfg.sr_ratios),
            drop_rate=0.0,
            drop_path_rate=cfg.drop_path_rate,
        )


# ---------------------------------------------------------------------------------------------
# transformers backend


def _build_hf(cfg: MiTConfig) -> nn.Module:
    from transformers import SegformerConfig, SegformerModel

    hf_cfg = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=list(cfg.depths),
        sr_ratios=list(cfg.sr_ratios),
        hidden_sizes=list(cfg.embed_dims),
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=list(cfg.num_heads),
        mlp_ratios=list(cfg.mlp_ratios),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=cfg.drop_path_rate,
        reshape_last_stage=True,
    )
    model = SegformerModel(hf_cfg)
    if not hasattr(model, "stages"):
        raise ImportError(
            "backend='hf' needs the SegformerModel.stages layout of transformers>=5.9; "
            "use backend='smp' or upgrade transformers"
        )
    # NVlabs builds the block and stage norms with eps=1e-6; transformers uses 1e-5.
    for stage in model.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = 1e-6
            block.layernorm_after.eps = 1e-6
    return model


# ---------------------------------------------------------------------------------------------
# Encoder


class MiTEncoder(nn.Module):
    """MiT encoder returning the four stage outputs ``(B, C_i, H/s, W/s)``, s = 4, 8, 16, 32.

    Args:
        config: variant name (``"b5"`` for DAFormer/HRDA/MIC), :class:`MiTConfig` or dict.
        backend: ``"smp"`` or ``"hf"`` (see the module docstring).
        fused_attention: compute attention with ``F.scaled_dot_product_attention``.

    Expects normalised input (ImageNet mean/std); :class:`gbw.models.daformer.DAFormer`
    normalises before calling it.
    """

    def __init__(
        self,
        config: str | MiTConfig | dict[str, Any] = "b5",
        *,
        backend: Backend = "smp",
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        self.config = MiTConfig.from_any(config)
        if backend == "smp":
            self.model = _build_smp(self.config)
        elif backend == "hf":
            self.model = _build_hf(self.config)
        else:
            raise ValueError(f"backend must be 'smp' or 'hf', got {backend!r}")
        self.backend = backend
        self.out_channels = tuple(self.config.embed_dims)
        self.set_fused_attention(fused_attention)

    @property
    def fused_attention(self) -> bool:
        return self._fused

    def set_fused_attention(self, enabled: bool) -> None:
        """Switches between the library's attention and the SDPA path (same parameters)."""
        if self.backend == "hf":
            self.model.config._attn_implementation = "sdpa" if enabled else "eager"
        else:
            smp_attention = _smp_module().Attention
            sdpa = _sdpa_class()
            for m in self.model.modules():
                if isinstance(m, smp_attention):
                    # Swapping the class keeps parameters, hooks and state-dict names; it only
                    # replaces ``forward``.
                    m.__class__ = sdpa if enabled else smp_attention
        self._fused = enabled

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.backend == "smp":
            return list(self.model.forward_features(x))
        feats = []
        for stage in self.model.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def no_weight_decay_names(self) -> set[str]:
        """LayerNorm parameters (relative names): DAFormer trains them without weight decay.

        DAFormer's optimiser config (``paramwise_cfg.custom_keys``: ``norm=dict(decay_mult=0.0)``,
        matched by name in mmcv) hits every MiT parameter whose name contains ``norm``,
        which are exactly the LayerNorm modules.
        """
        return {
            f"{mod_name}.{p_name}" if mod_name else p_name
            for mod_name, mod in self.named_modules()
            if isinstance(mod, nn.LayerNorm)
            for p_name, _ in mod.named_parameters(recurse=False)
        }


# ---------------------------------------------------------------------------------------------
# Official weights (NVlabs/SegFormer ImageNet-1k ``mit_b*.pth``)


def nvlabs_key_shapes(
    config: str | MiTConfig | dict[str, Any] = "b5",
) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of NVlabs' ``mit_b*.pth`` (backbone part), computed from the config.

    Mirrors ``MixVisionTransformer`` in NVlabs/SegFormer ``mmseg/models/backbones/
    mix_transformer.py``; the ImageNet checkpoints also carry ``head.weight``/``head.bias``
    (1000-class classifier), which the segmentation models do not use.
    """
    cfg = MiTConfig.from_any(config)
    shapes: dict[str, tuple[int, ...]] = {}
    c_prev = 3
    for s, (c, depth, sr, mlp) in enumerate(
        zip(cfg.embed_dims, cfg.depths, cfg.sr_ratios, cfg.mlp_ratios), start=1
    ):
        k = 7 if s == 1 else 3
        shapes[f"patch_embed{s}.proj.weight"] = (c, c_prev, k, k)
        shapes[f"patch_embed{s}.proj.bias"] = (c,)
        shapes[f"patch_embed{s}.norm.weight"] = (c,)
        shapes[f"patch_embed{s}.norm.bias"] = (c,)
        hidden = c * mlp
        for j in range(depth):
            p = f"block{s}.{j}."
            shapes[p + "norm1.weight"] = shapes[p + "norm1.bias"] = (c,)
            shapes[p + "attn.q.weight"], shapes[p + "attn.q.bias"] = (c, c), (c,)
            shapes[p + "attn.kv.weight"], shapes[p + "attn.kv.bias"] = (2 * c, c), (2 * c,)
            shapes[p + "attn.proj.weight"], shapes[p + "attn.proj.bias"] = (c, c), (c,)
            if sr > 1:
                shapes[p + "attn.sr.weight"], shapes[p + "attn.sr.bias"] = (c, c, sr, sr), (c,)
                shapes[p + "attn.norm.weight"] = shapes[p + "attn.norm.bias"] = (c,)
            shapes[p + "norm2.weight"] = shapes[p + "norm2.bias"] = (c,)
            shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (hidden, c), (hidden,)
            shapes[p + "mlp.dwconv.dwconv.weight"] = (hidden, 1, 3, 3)
            shapes[p + "mlp.dwconv.dwconv.bias"] = (hidden,)
            shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (c, hidden), (c,)
        shapes[f"norm{s}.weight"] = shapes[f"norm{s}.bias"] = (c,)
        c_prev = c
    return shapes


_HF_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.q": "attention.q_proj",
    "attn.proj": "attention.o_proj",
    "attn.sr": "attention.sequence_reduction.sequence_reduction",
    "attn.norm": "attention.sequence_reduction.layer_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}
_RE_PATCH = re.compile(r"^patch_embed(\d)\.(proj|norm)\.(weight|bias)$")
_RE_BLOCK = re.compile(r"^block(\d)\.(\d+)\.(.+)\.(weight|bias)$")
_RE_NORM = re.compile(r"^norm(\d)\.(weight|bias)$")


def _nvlabs_to_hf(key: str, value: Tensor) -> list[tuple[str, Tensor]] | None:
    """Maps one NVlabs key to transformers>=5.9 names (``kv`` -> ``k_proj`` + ``v_proj``)."""
    if m := _RE_PATCH.match(key):
        part = "proj" if m[2] == "proj" else "layer_norm"
        return [(f"stages.{int(m[1]) - 1}.patch_embeddings.{part}.{m[3]}", value)]
    if m := _RE_NORM.match(key):
        return [(f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}", value)]
    if m := _RE_BLOCK.match(key):
        prefix = f"stages.{int(m[1]) - 1}.blocks.{m[2]}."
        if m[3] == "attn.kv":
            # NVlabs reshapes kv's output to (..., 2, heads, head_dim): first half is k.
            k, v = value.chunk(2, dim=0)
            return [
                (prefix + f"attention.k_proj.{m[4]}", k),
                (prefix + f"attention.v_proj.{m[4]}", v),
            ]
        if m[3] in _HF_BLOCK_RENAMES:
            return [(prefix + f"{_HF_BLOCK_RENAMES[m[3]]}.{m[4]}", value)]
    return None


def load_mit_weights(
    encoder: MiTEncoder, source: StateDictSource, *, strict: bool = True
) -> LoadReport:
    """Loads NVlabs' SegFormer ImageNet-1k ``mit_b*.pth`` (a local file) into ``encoder``.

    Key names as in NVlabs/SegFormer ``mix_transformer.py`` (``patch_embed1.proj.weight``,
    ``block1.0.attn.q.weight``, ``block1.0.attn.kv.weight``, ``block1.0.attn.sr.weight``,
    ``block1.0.mlp.dwconv.dwconv.weight``, ``norm1.weight``, ...). ``head.*`` (the ImageNet
    classifier) is skipped. ``{"state_dict": ...}`` wrappers are unwrapped, as DAFormer's
    loader does. Shape mismatches raise ``ValueError`` naming the key and both shapes;
    with ``strict``, a missing encoder tensor or an unknown key raises too.
    """
    sd, where = load_state_dict_file(source)
    own = encoder.model.state_dict()
    report = LoadReport(where)
    new: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("head."):
            report.skipped[key] = "ImageNet classification head"
            continue
        if encoder.backend == "smp":
            targets = [(key, value)] if key in own else None
        else:
            targets = _nvlabs_to_hf(key, value)
        if not targets or any(t not in own for t, _ in targets):
            report.unexpected.append(key)
            continue
        for target, tensor in targets:
            check_shape(where, key, tensor, target, own[target])
            new[target] = tensor
        report.loaded.append(key)
    report.missing = [k for k in own if k not in new]
    if strict:
        report.raise_if_incomplete()
    with torch.no_grad():
        for target, tensor in new.items():
            own[target].copy_(tensor)
    return report
