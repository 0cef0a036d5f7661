"""MiT encoder: backends, official key names, weight loading, fused attention, parameter count."""

from __future__ import annotations

import pickle

import pytest
import torch

from gbw.models import count_parameters
from gbw.models.mit import MIT_VARIANTS, MiTConfig, MiTEncoder, load_mit_weights, nvlabs_key_shapes


def fake_nvlabs_state_dict(variant: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """A fake ``mit_*.pth`` with NVlabs' names/shapes, the ImageNet head and realistic
    magnitudes (LayerNorm weights near 1) so that outputs stay well conditioned."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in nvlabs_key_shapes(variant).items():
        t = 0.05 * torch.randn(shape, generator=gen)
        if "norm" in key and key.endswith("weight"):
            t += 1.0
        sd[key] = t
    c = MiTConfig.from_any(variant).embed_dims[-1]
    sd["head.weight"] = torch.randn(1000, c, generator=gen)
    sd["head.bias"] = torch.randn(1000, generator=gen)
    return sd


def test_nvlabs_key_names_for_b5() -> None:
    # Names and shapes from NVlabs/SegFormer mmseg/models/backbones/mix_transformer.py, mit_b5.
    shapes = nvlabs_key_shapes("b5")
    assert shapes["patch_embed1.proj.weight"] == (64, 3, 7, 7)
    assert shapes["patch_embed4.proj.weight"] == (512, 320, 3, 3)
    assert shapes["block1.0.attn.q.weight"] == (64, 64)
    assert shapes["block1.0.attn.kv.weight"] == (128, 64)
    assert shapes["block1.0.attn.sr.weight"] == (64, 64, 8, 8)
    assert shapes["block1.0.mlp.fc1.weight"] == (256, 64)
    assert shapes["block3.39.mlp.dwconv.dwconv.weight"] == (1280, 1, 3, 3)
    assert shapes["norm1.weight"] == (64,)
    assert "block4.0.attn.sr.weight" not in shapes  # sr_ratio 1 in the last stage
    assert "block3.40.norm1.weight" not in shapes  # 40 blocks in stage 3


@pytest.mark.parametrize("backend", ["smp", "hf"])
def test_b5_parameter_count_and_key_list(backend: str) -> None:
    enc = MiTEncoder("b5", backend=backend)
    n = count_parameters(enc)
    assert n == sum(torch.Size(s).numel() for s in nvlabs_key_shapes("b5").values()) == 81_443_008
    # SegFormer (Xie et al., NeurIPS 2021): MiT-B5 encoder 81.4M parameters (Table 1), and
    # SegFormer-B5 on ADE20K 84.7M in total (Table 2; Papers with Code lists 84.7M). The B5
    # ADE20K decoder: 4 linear embeddings to 768, a 1x1 fuse conv 3072 -> 768 with BN,
    # a 1x1 classifier to 150 classes.
    decoder = (64 + 128 + 320 + 512) * 768 + 4 * 768 + 4 * 768 * 768 + 2 * 768 + 768 * 150 + 150
    assert round(n / 1e6, 1) == 81.4
    assert round((n + decoder) / 1e6, 1) == 84.7
    if backend == "smp":
        # The smp model's state dict is NVlabs' (names and shapes), one to one.
        own = {k: tuple(v.shape) for k, v in enc.model.state_dict().items()}
        assert own == nvlabs_key_shapes("b5")


@pytest.mark.parametrize("backend", ["smp", "hf"])
def test_every_tensor_is_loaded_from_nvlabs_file(tmp_path, backend: str) -> None:
    sd = fake_nvlabs_state_dict("tiny")
    path = tmp_path / "mit_tiny.pth"
    torch.save({"state_dict": sd}, path)
    enc = MiTEncoder("tiny", backend=backend)
    report = load_mit_weights(enc, path)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert len(report.loaded) == len(sd) - 2
    own = enc.model.state_dict()
    if backend == "smp":
        for k, v in own.items():
            assert torch.equal(v, sd[k]), k
    else:
        from gbw.models.mit import _nvlabs_to_hf

        covered = []
        for key, value in sd.items():
            for target, tensor in _nvlabs_to_hf(key, value) or []:
                assert torch.equal(own[target], tensor), (key, target)
                covered.append(target)
        assert sorted(covered) == sorted(own)  # every tensor of the model, exactly once
        kv = sd["block2.0.attn.kv.weight"]
        assert torch.equal(own["stages.1.blocks.0.attention.k_proj.weight"], kv[:32])
        assert torch.equal(own["stages.1.blocks.0.attention.v_proj.weight"], kv[32:])
        assert torch.equal(own["stages.3.layer_norm.bias"], sd["norm4.bias"])


def test_both_backends_compute_the_same_function() -> None:
    sd = fake_nvlabs_state_dict("tiny", seed=1)
    encoders = []
    for backend in ("smp", "hf"):
        # transformers' eager attention computes its softmax in float32 even for float64
        # inputs; its SDPA path stays in float64, so it is the exact comparison here.
        enc = MiTEncoder("tiny", backend=backend, fused_attention=backend == "hf")
        enc = enc.double().eval()
        load_mit_weights(enc, sd)
        encoders.append(enc)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        a, b = (enc(x) for enc in encoders)
    assert [f.shape for f in a] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb, rtol=1e-10, atol=1e-10)


def test_shape_mismatch_names_key_and_shapes() -> None:
    sd = fake_nvlabs_state_dict("tiny")
    sd["block2.0.attn.kv.weight"] = torch.zeros(32, 32)
    with pytest.raises(ValueError, match=r"block2\.0\.attn\.kv\.weight.*\(32, 32\).*\(64, 32\)"):
        load_mit_weights(MiTEncoder("tiny"), sd)


def test_missing_and_unexpected_keys() -> None:
    sd = fake_nvlabs_state_dict("tiny")
    del sd["norm3.weight"]
    sd["pos_embed1"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"norm3\.weight"):
        load_mit_weights(MiTEncoder("tiny"), sd)
    report = load_mit_weights(MiTEncoder("tiny", backend="hf"), sd, strict=False)
    assert report.missing == ["stages.2.layer_norm.weight"]
    assert report.unexpected == ["pos_embed1"]


@pytest.mark.parametrize("backend", ["smp", "hf"])
def test_fused_attention_matches_library_attention(backend: str) -> None:
    torch.manual_seed(0)
    enc = MiTEncoder("tiny", backend=backend).double().eval()
    load_mit_weights(enc, fake_nvlabs_state_dict("tiny", seed=2))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    def run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        enc.zero_grad()
        feats = enc(x)
        sum(f.square().mean() for f in feats).backward()
        return [f.detach() for f in feats], [p.grad.clone() for p in enc.parameters()]

    enc.set_fused_attention(False)
    ref_out, ref_grad = run()
    enc.set_fused_attention(True)
    assert enc.fused_attention
    out, grad = run()
    # smp's attention runs in the input dtype: float64 agreement to rounding. transformers'
    # eager path takes its softmax through float32 by design, so float32-level tolerance.
    tol = {"rtol": 1e-10, "atol": 1e-12} if backend == "smp" else {"rtol": 1e-5, "atol": 1e-7}
    for a, b in zip(out + grad, ref_out + ref_grad):
        torch.testing.assert_close(a, b, **tol)


def test_fused_attention_swaps_the_smp_forward_and_pickles() -> None:
    from segmentation_models_pytorch.encoders.mix_transformer import Attention

    enc = MiTEncoder("tiny", fused_attention=True)
    attn = [m for m in enc.modules() if isinstance(m, Attention)]
    assert len(attn) == 4 and all(type(m).__name__ == "_SdpaAttention" for m in attn)
    clone = pickle.loads(pickle.dumps(enc))
    assert type(clone.model.block1[0].attn).__name__ == "_SdpaAttention"
    enc.set_fused_attention(False)
    assert all(type(m) is Attention for m in attn)


def test_variants_and_config_validation() -> None:
    assert MIT_VARIANTS["b5"].depths == (3, 6, 40, 3)
    assert MiTConfig.from_any({"depths": [1, 1, 1, 1]}).depths == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="depth"):
        MiTConfig.from_any({"depth": 3})
    with pytest.raises(ValueError, match="b5"):
        MiTConfig.from_any("b6")
    with pytest.raises(ValueError, match="backend"):
        MiTEncoder("tiny", backend="timm")  # type: ignore[arg-type]
