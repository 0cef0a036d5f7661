"""gbw convert: DAFormer / HRDA / MIC (mmseg) checkpoints -> gbw weight files, and back.

The reference names below are written out from lhoyer/DAFormer and lhoyer/HRDA's module
definitions (DAFormerHead with an ``aspp`` or ``conv`` fusion, mmcv ConvModule = ``conv`` +
``bn``, DepthwiseSeparableConvModule = ``depthwise_conv`` + ``pointwise_conv``, mmseg's MLP =
``proj`` Linear, HRDAHead = ``head`` + ``scale_attention``), independently of gbw's mapping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbw.cli import main
from gbw.engine.runs import load_trained
from gbw.models import build_model
from gbw.models.convert import to_reference
from gbw.models.mit import nvlabs_key_shapes

ENC = (16, 32, 64, 128)  # MiT "tiny" widths
EMBED = CH = 16


def daformer_head_keys(prefix: str, classes: int, fusion: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of DAFormerHead (``aspp``: daformer_sepaspp, dilations 1, 6, 12, 18;
    ``conv``: HRDA's scale attention, a 1x1 ConvModule)."""

    def bn(p: str, c: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{p}.weight": (c,),
            f"{p}.bias": (c,),
            f"{p}.running_mean": (c,),
            f"{p}.running_var": (c,),
            f"{p}.num_batches_tracked": (),
        }

    keys: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(ENC):
        keys[f"{prefix}embed_layers.{i}.proj.weight"] = (EMBED, c)  # nn.Linear
        keys[f"{prefix}embed_layers.{i}.proj.bias"] = (EMBED,)
    fused = EMBED * len(ENC)
    if fusion == "aspp":
        f = f"{prefix}fuse_layer."
        keys[f + "aspp_modules.0.conv.weight"] = (CH, fused, 1, 1)
        keys |= bn(f + "aspp_modules.0.bn", CH)
        for j in (1, 2, 3):
            m = f"{f}aspp_modules.{j}."
            keys[m + "depthwise_conv.conv.weight"] = (fused, 1, 3, 3)
            keys |= bn(m + "depthwise_conv.bn", fused)
            keys[m + "pointwise_conv.conv.weight"] = (CH, fused, 1, 1)
            keys |= bn(m + "pointwise_conv.bn", CH)
        keys[f + "bottleneck.conv.weight"] = (CH, 4 * CH, 3, 3)
        keys |= bn(f + "bottleneck.bn", CH)
    else:
        keys[f"{prefix}fuse_layer.conv.weight"] = (CH, fused, 1, 1)
        keys |= bn(f"{prefix}fuse_layer.bn", CH)
    keys[f"{prefix}conv_seg.weight"] = (classes, CH, 1, 1)
    keys[f"{prefix}conv_seg.bias"] = (classes,)
    return keys


def reference_keys(arch: str, classes: int) -> dict[str, tuple[int, ...]]:
    keys = {f"backbone.{k}": s for k, s in nvlabs_key_shapes("tiny").items()}
    if arch == "daformer":
        return keys | daformer_head_keys("decode_head.", classes, "aspp")
    return (
        keys
        | daformer_head_keys("decode_head.head.", classes, "aspp")
        | daformer_head_keys("decode_head.scale_attention.", classes, "conv")
    )


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000 + seed, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(s, generator=gen)
        else:
            t = 0.1 * torch.randn(s, generator=gen)
            out[k] = t + 1.0 if ("norm" in k or k.endswith("bn.weight")) and "weight" in k else t
    return out


GBW_NAMES = {"daformer": "daformer_mit", "hrda": "hrda_daformer_mit"}
KWARGS = {
    "daformer": {"encoder": "tiny", "embed_dim": EMBED, "channels": CH},
    "hrda": {
        "encoder": "tiny",
        "embed_dim": EMBED,
        "channels": CH,
        "attention_embed_dim": EMBED,
        "detail_crop": [32, 32],
    },
}


def uda_checkpoint(path, arch: str, classes: int = 5) -> dict[str, dict[str, torch.Tensor]]:
    """A fake DAFormer/HRDA/MIC release: mmcv's {meta, state_dict} with model., ema_model.
    and imnet_model. networks (the last one a backbone only, as with the feature distance)."""
    shapes = reference_keys(arch, classes)
    student, teacher = random_tensors(shapes, 1), random_tensors(shapes, 2)
    imnet = {k: v for k, v in random_tensors(shapes, 3).items() if k.startswith("backbone.")}
    sd = {f"model.{k}": v for k, v in student.items()}
    sd |= {f"ema_model.{k}": v for k, v in teacher.items()}
    sd |= {f"imnet_model.{k}": v for k, v in imnet.items()}
    meta = {"iter": 40000, "CLASSES": ("road",) * classes, "PALETTE": np.zeros((classes, 3))}
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {}}, path)
    return {"student": student, "teacher": teacher}


@pytest.mark.parametrize("arch", ["daformer", "hrda"])
def test_gbw_names_are_the_reference_names(arch):
    torch.manual_seed(0)
    model = build_model(GBW_NAMES[arch], 5, **KWARGS[arch])
    exported = to_reference(GBW_NAMES[arch], model)
    assert {k: tuple(v.shape) for k, v in exported.items()} == reference_keys(arch, 5)


@pytest.mark.parametrize("arch", ["daformer", "hrda"])
@pytest.mark.parametrize("module", ["student", "teacher"])
def test_convert_a_fake_release_and_report_every_key_not_mapped(tmp_path, capsys, arch, module):
    ckpt = tmp_path / "release.pth"
    nets = uda_checkpoint(ckpt, arch)
    out = tmp_path / "converted.pt"
    name = GBW_NAMES[arch]
    assert main(["convert", str(ckpt), "--arch", name, "--out", str(out), "--module", module]) == 0
    text = capsys.readouterr().out
    other = "ema_model." if module == "student" else "model."
    assert "ImageNet feature-distance model" in text and "imnet_model.backbone.norm4.bias" in text
    assert f"\n    {other}decode_head." in text  # the other network is listed as not mapped
    exp, model, _ = load_trained(out)  # strict load into the gbw network
    assert exp.model.name == name and exp.model.num_classes == 5
    assert exp.eval.mode == ("whole" if arch == "daformer" else "slide")
    ref = nets[module]
    own = model.state_dict()
    head, base = ("decode_head.", "") if arch == "daformer" else ("decode_head.head.", "base.")
    torch.testing.assert_close(
        own[f"{base}decode_head.embed.2.weight"],
        ref[f"{head}embed_layers.2.proj.weight"][:, :, None, None],
    )
    torch.testing.assert_close(
        own[f"{base}decode_head.fuse.branches.2.0.1.running_var"],
        ref[f"{head}fuse_layer.aspp_modules.2.depthwise_conv.bn.running_var"],
    )
    torch.testing.assert_close(
        own[f"{base}decode_head.fuse.bottleneck.0.weight"],
        ref[f"{head}fuse_layer.bottleneck.conv.weight"],
    )
    torch.testing.assert_close(
        own[f"{base}backbone.model.block2.0.attn.kv.weight"],
        ref["backbone.block2.0.attn.kv.weight"],
    )
    if arch == "hrda":
        torch.testing.assert_close(
            own["scale_attention.fuse.1.running_mean"],
            ref["decode_head.scale_attention.fuse_layer.bn.running_mean"],
        )


@pytest.mark.parametrize("arch", ["daformer", "hrda"])
def test_round_trip_gives_identical_logits(tmp_path, arch):
    """gbw network -> reference layout (inside a UDA checkpoint) -> gbw convert -> strict load:
    the same function, bit for bit."""
    name = GBW_NAMES[arch]
    torch.manual_seed(1)
    original = build_model(name, 5, **KWARGS[arch])
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    original.eval()
    ref = to_reference(name, original)
    torch.save({"state_dict": {f"model.{k}": v for k, v in ref.items()}}, tmp_path / "r.pth")
    out = tmp_path / "gbw.pt"
    assert main(["convert", str(tmp_path / "r.pth"), "--arch", name, "--out", str(out)]) == 0
    # HRDA's detail crop is an inference setting, not stored in checkpoints (512x512 there)
    extra = ["model.kwargs.detail_crop=[32,32]"] if arch == "hrda" else []
    exp, converted, _ = load_trained(out, extra)
    assert exp.model.kwargs["encoder"] == "tiny"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted(x)["main"], original(x)["main"])
    # a plain segmentor checkpoint (no UDA wrapper, no state_dict key) converts the same way
    torch.save(ref, tmp_path / "plain.pth")
    plain = tmp_path / "plain.pt"
    assert main(["convert", str(tmp_path / "plain.pth"), "--arch", name, "--out", str(plain)]) == 0
    with torch.no_grad():
        assert torch.equal(load_trained(plain, extra)[1](x)["main"], original(x)["main"])
    # model.pretrained= accepts the file and initialises the whole network from it
    from gbw.config import load_config
    from gbw.engine.trainer import build_method

    kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in KWARGS[arch].items()) + "}"
    exp = load_config(
        None,
        [
            f"model.name={name}",
            "model.num_classes=5",
            f"model.kwargs={kwargs}",
            f"model.pretrained={out}",
        ],
        data_domains=(),  # only the network is built here, no dataset
    )
    method = build_method(exp)
    for k, v in original.state_dict().items():
        assert torch.equal(method.model.state_dict()[k], v), k


def test_wrong_or_incomplete_checkpoints_name_the_key(tmp_path, capsys):
    ckpt = tmp_path / "daformer.pth"
    uda_checkpoint(ckpt, "daformer")
    out = str(tmp_path / "x.pt")
    assert main(["convert", str(ckpt), "--arch", "hrda_daformer_mit", "--out", out]) == 2
    assert "daformer.pth: not a hrda_daformer_mit checkpoint" in capsys.readouterr().err
    assert main(["convert", str(ckpt), "--arch", "daformer_mitb5", "--out", out]) == 2
    assert "not MiT-B5's; use --arch daformer_mit" in capsys.readouterr().err
    sd = torch.load(ckpt, weights_only=False)["state_dict"]
    del sd["model.decode_head.fuse_layer.aspp_modules.3.pointwise_conv.bn.running_mean"]
    torch.save({"state_dict": sd}, tmp_path / "cut.pth")
    assert main(["convert", str(tmp_path / "cut.pth"), "--arch", "daformer_mit", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "lacks 1 tensor" in err and "aspp_modules.3.pointwise_conv.bn.running_mean" in err


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": _Payload()}, tmp_path / "evil.pth")
    code = main(["convert", str(tmp_path / "evil.pth"), "--arch", "daformer_mit", "--out", "x.pt"])
    captured = capsys.readouterr()
    assert code == 2 and "refused to load" in captured.err
    assert "pickled code ran" not in captured.out


def test_cli_names_every_architecture(capsys):
    from gbw.commands import CONVERT_ARCHS
    from gbw.models.reference_names import ARCHS

    assert set(CONVERT_ARCHS) == set(ARCHS)
    assert main(["convert", "x.pth", "--arch", "segformer", "--out", "y.pt"]) == 2
    assert "unknown --arch 'segformer'" in capsys.readouterr().err
