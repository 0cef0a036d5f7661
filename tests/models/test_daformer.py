"""DAFormer network: output stride, head structure and size, optimiser groups, weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gbw.models import build_model, count_parameters
from gbw.models.daformer import DAFormer
from gbw.models.daformer_head import DAFormerHead
from gbw.models.mit import nvlabs_key_shapes


def daformer_head_parameters(
    in_channels=(64, 128, 320, 512), classes=19, embed=256, channels=256, dilations=(1, 6, 12, 18)
) -> int:
    """Parameter count of lhoyer/DAFormer's ``daformer_sepaspp_mitb5`` decode head, layer by
    layer from its config (mmcv ConvModules: conv without bias + BN with weight and bias)."""
    fused = len(in_channels) * embed
    n = sum(c * embed + embed for c in in_channels)  # 'mlp' embeddings (Linear with bias)
    for d in dilations:
        if d == 1:
            n += fused * channels + 2 * channels  # 1x1 ConvModule
        else:  # DepthwiseSeparableConvModule: depthwise 3x3 + BN, pointwise 1x1 + BN
            n += fused * 9 + 2 * fused + fused * channels + 2 * channels
    n += len(dilations) * channels * channels * 9 + 2 * channels  # 3x3 bottleneck ConvModule
    n += channels * classes + classes  # conv_seg
    return n


def test_head_parameter_count_matches_the_reference_config() -> None:
    head = DAFormerHead()
    assert count_parameters(head) == daformer_head_parameters() == 3_712_275


def test_head_structure() -> None:
    head = DAFormerHead()
    assert [
        b[0][0].dilation[0] if isinstance(b[0], nn.Sequential) else 1 for b in head.fuse.branches
    ] == [1, 6, 12, 18]
    depthwise = head.fuse.branches[1][0][0]
    assert depthwise.groups == 1024 and depthwise.kernel_size == (3, 3)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 3 * 2 + 1
    assert all(m.bias is None for m in head.fuse.modules() if isinstance(m, nn.Conv2d))


@pytest.fixture(scope="module")
def tiny() -> DAFormer:
    torch.manual_seed(0)
    return build_model(
        "daformer_mit", num_classes=7, encoder="tiny", embed_dim=32, channels=32
    ).eval()


def test_output_stride_4_and_features(tiny: DAFormer) -> None:
    with torch.no_grad():
        out = tiny(torch.rand(2, 3, 64, 96), return_features=True)
    assert out["main"].shape == (2, 7, 16, 24)
    assert [tuple(f.shape[1:]) for f in out["features"]] == [
        (16, 16, 24),
        (32, 8, 12),
        (64, 4, 6),
        (128, 2, 3),
    ]
    assert set(out) == {"main", "features"}


def test_param_groups_follow_daformer_optimizer(tiny: DAFormer) -> None:
    groups = {g["name"]: g for g in tiny.param_groups(6e-5)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head"}
    assert groups["head"]["lr"] == pytest.approx(6e-4)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert "weight_decay" not in groups["backbone"] and "weight_decay" not in groups["head"]
    # DAFormer's custom_keys match 'norm' in MiT parameter names: exactly the LayerNorms.
    names = {id(p): n for n, p in tiny.named_parameters()}
    no_decay = {names[id(p)] for p in groups["backbone_no_decay"]["params"]}
    expected = {"backbone.model." + k for k in nvlabs_key_shapes("tiny") if "norm" in k}
    assert no_decay == expected
    head = {names[id(p)] for p in groups["head"]["params"]}
    assert head == {n for n in names.values() if n.startswith("decode_head.")}
    opt = torch.optim.AdamW(list(groups.values()), lr=6e-5, weight_decay=0.01)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 0.01]


def test_training_step_runs_and_head_trains() -> None:
    torch.manual_seed(0)
    model = build_model(
        "daformer_mit",
        num_classes=5,
        encoder="tiny",
        embed_dim=16,
        channels=16,
        fused_attention=True,
    ).train()
    opt = torch.optim.AdamW(model.param_groups(1e-3), lr=1e-3, weight_decay=0.01)
    x = torch.rand(2, 3, 64, 64)
    y = torch.randint(0, 5, (2, 64, 64))
    before = model.decode_head.conv_seg.weight.clone()
    logits = nn.functional.interpolate(model(x)["main"], size=(64, 64), mode="bilinear")
    nn.functional.cross_entropy(logits, y).backward()
    opt.step()
    assert not torch.equal(model.decode_head.conv_seg.weight, before)


def test_build_daformer_with_weights(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in nvlabs_key_shapes("tiny").items()}
    path = tmp_path / "mit_tiny.pth"
    torch.save(sd, path)
    model = build_model("daformer_mit", encoder="tiny", embed_dim=16, channels=16, weights=path)
    assert torch.equal(model.backbone.model.block3[0].attn.kv.weight, sd["block3.0.attn.kv.weight"])
