"""DeepLabV2 ResNet-101: output strides, ASPP variants, frozen BatchNorm, reference weight files."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import ResNet101_Weights
from torchvision.ops import FrozenBatchNorm2d

from gbw.models import DeepLabV2, build_model, count_parameters, load_deeplab_weights

LAYERS = (3, 4, 23, 3)  # ResNet-101


def reference_backbone_shapes() -> dict[str, tuple[int, ...]]:
    """Key names/shapes of the references' ``ResNetMulti``/``ResNet`` trunk.

    Written out from wasidennis/AdaptSegNet ``model/deeplab_multi.py`` (identical in
    valeoai/ADVENT and vikolss/DACS): conv1/bn1, then ``layer{1-4}.{i}`` Bottlenecks with
    conv1/bn1 (1x1), conv2/bn2 (3x3), conv3/bn3 (1x1, x4) and, in block 0,
    ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN). BN keys: weight, bias,
    running_mean, running_var (no ``num_batches_tracked``: the files predate it).
    """
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)

    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), LAYERS), start=1):
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    return shapes


def fake_state_dict(
    shapes: dict[str, tuple[int, ...]], prefix: str = "", seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {prefix + k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def classifier_shapes(name: str, in_ch: int, classes: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i in range(4):
        out[f"{name}.conv2d_list.{i}.weight"] = (classes, in_ch, 3, 3)
        out[f"{name}.conv2d_list.{i}.bias"] = (classes,)
    return out


@pytest.fixture(scope="module")
def model() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(19, aux=True).eval()


def test_output_stride_8_and_outputs(model: DeepLabV2) -> None:
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96), return_features=True)
    assert out["main"].shape == (2, 19, 8, 12)
    assert out["aux"].shape == (2, 19, 8, 12)
    assert [f.shape[1] for f in out["features"]] == [256, 512, 1024, 2048]
    assert [f.shape[2] for f in out["features"]] == [16, 8, 8, 8]
    assert model.output_stride == 8
    assert "features" not in model(torch.rand(1, 3, 32, 32))


def test_caffe_layout_matches_reference_output_size(model: DeepLabV2) -> None:
    # The references' ceil-mode max-pool gives 65x65 logits for 512x512 (AdaptSegNet's outS);
    # the same rule shows at 64x64 (-> 9 vs torchvision's 8), which keeps the test fast.
    torch.manual_seed(0)
    caffe = DeepLabV2(19, layout="caffe").eval()
    tv = model  # torchvision layout
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 65)
        assert caffe(x)["main"].shape[-2:] == (9, 9)
        assert tv(x)["main"].shape[-2:] == (8, 9)
    b = caffe.backbone
    assert b.layer2[0].conv1.stride == (2, 2) and b.layer2[0].conv2.stride == (1, 1)
    assert all(blk.conv2.dilation == (2, 2) for blk in b.layer3)
    assert all(blk.conv2.dilation == (4, 4) for blk in b.layer4)
    assert tv.backbone.layer3[0].conv2.dilation == (1, 1)  # torchvision's first-block rule


@pytest.mark.parametrize(
    ("aspp", "dilations"), [("advent", (6, 12, 18, 24)), ("adaptsegnet", (6, 12))]
)
def test_aspp_sums_the_documented_branches(aspp: str, dilations: tuple[int, ...]) -> None:
    from gbw.models.deeplabv2 import ASPP_DILATIONS, ASPPClassifier

    assert ASPP_DILATIONS[aspp] == dilations
    head = ASPPClassifier(8, 3, ASPP_DILATIONS[aspp]).double()
    x = torch.randn(1, 8, 30, 30, dtype=torch.float64)
    expected = sum(
        nn.functional.conv2d(x, c.weight, c.bias, padding=d, dilation=d)
        for c, d in zip(head.branches, dilations)
    )
    torch.testing.assert_close(head(x), expected)
    assert [c.dilation[0] for c in head.branches] == list(dilations)


def test_invalid_options_raise() -> None:
    with pytest.raises(ValueError, match="aspp"):
        DeepLabV2(aspp="first")  # type: ignore[arg-type]


def test_frozen_bn_stays_frozen_after_a_training_step() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(5, aux=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(bns) == 104  # every BN of ResNet-101: 1 + 3 x 33 blocks + 4 downsamples
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    before = {
        k: v.clone() for k, v in model.state_dict().items() if ".bn" in k or "downsample.1" in k
    }
    conv_before = model.backbone.layer4[2].conv3.weight.clone()
    # A random trunk with identity BN statistics has huge activations: keep the step tiny.
    opt = torch.optim.SGD(model.param_groups(1e-7), lr=1e-7, momentum=0.9, weight_decay=5e-4)
    out = model(torch.rand(2, 3, 33, 33))
    target = torch.randint(0, 5, out["main"].shape[:1] + out["main"].shape[2:])
    ce = nn.functional.cross_entropy
    (ce(out["main"], target) + 0.1 * ce(out["aux"], target)).backward()
    opt.step()
    assert not torch.equal(model.backbone.layer4[2].conv3.weight, conv_before)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # BN statistics were not recomputed from the batch either: same output in train/eval.
    x = torch.rand(1, 3, 33, 33)
    with torch.no_grad():
        train_out = model.train()(x)["main"]
        assert torch.isfinite(train_out).all()
        torch.testing.assert_close(train_out, model.eval()(x)["main"])


def test_affine_frozen_bn_reproduces_reference_behaviour() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(5, bn="affine_frozen").train()
    bn = model.backbone.layer1[0].bn1
    assert isinstance(bn, nn.BatchNorm2d)
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    assert {g["name"] for g in model.param_groups(0.1)} == {"backbone", "head"}
    mean_before = bn.running_mean.clone()
    with torch.no_grad():
        model(torch.rand(2, 3, 33, 33))
    assert not torch.equal(bn.running_mean, mean_before)  # batch statistics, as model.train()


def test_param_groups_head_lr_x10(model: DeepLabV2) -> None:
    groups = {g["name"]: g for g in model.param_groups(2.5e-4)}
    assert set(groups) == {"backbone", "head"}
    assert groups["head"]["lr"] == pytest.approx(2.5e-3)
    head_ids = {id(p) for p in model.classifier.parameters()} | {
        id(p) for p in model.aux_classifier.parameters()
    }
    assert {id(p) for p in groups["head"]["params"]} == head_ids


def test_parameter_count_matches_torchvision_resnet101(model: DeepLabV2) -> None:
    # torchvision documents ResNet-101 at 44,549,160 parameters (weights meta, incl. the fc
    # layer 2048 x 1000 + 1000 and the BN affine parameters that FrozenBatchNorm2d keeps as
    # buffers).
    bn_affine = sum(
        m.weight.numel() * 2 for m in model.modules() if isinstance(m, FrozenBatchNorm2d)
    )
    trunk = count_parameters(model.backbone)
    assert (
        trunk + bn_affine + 2048 * 1000 + 1000
        == ResNet101_Weights.IMAGENET1K_V1.meta["num_params"]
        == 44_549_160
    )
    # ASPP: 4 branches of 3x3 convs (2048 -> 19 main, 1024 -> 19 aux), with bias.
    assert count_parameters(model.classifier) == 4 * (2048 * 19 * 9 + 19)
    assert count_parameters(model.aux_classifier) == 4 * (1024 * 19 * 9 + 19)


def _assert_backbone_equals(model: DeepLabV2, sd: dict[str, torch.Tensor], prefix: str) -> None:
    own = model.state_dict()
    for key, value in sd.items():
        if (
            key.startswith(prefix + "layer5")
            or key.startswith(prefix + "fc.")
            or key.endswith("num_batches_tracked")
        ):
            continue
        assert torch.equal(own["backbone." + key[len(prefix) :]], value), key


@pytest.mark.parametrize("prefix", ["Scale.", ""], ids=["adaptsegnet_advent_init", "dacs_coco"])
def test_load_deeplab_reference_init(tmp_path, prefix: str) -> None:
    shapes = reference_backbone_shapes() | classifier_shapes("layer5", 2048, 21)
    sd = fake_state_dict(shapes, prefix)
    path = tmp_path / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    torch.save(sd, path)
    model = DeepLabV2(19, aux=True)
    report = load_deeplab_weights(model, path)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(reference_backbone_shapes())
    assert all("layer5" in k for k in report.skipped)  # the 21-class classifier
    _assert_backbone_equals(model, sd, prefix)
    # Every backbone tensor of the model came from the file.
    n_backbone = sum(1 for k in model.state_dict() if k.startswith("backbone."))
    assert n_backbone == len(report.loaded)


def test_load_classifier_when_classes_match(tmp_path) -> None:
    shapes = reference_backbone_shapes() | classifier_shapes("layer5", 2048, 21)
    sd = fake_state_dict(shapes, "Scale.")
    model = DeepLabV2(21, aspp="adaptsegnet")
    report = load_deeplab_weights(model, sd, load_classifier=True)
    # Branches 2 and 3 (dilations 18, 24) are never used by AdaptSegNet's classifier.
    assert sorted(report.skipped) == sorted(
        f"layer5.conv2d_list.{i}.{p}" for i in (2, 3) for p in ("weight", "bias")
    )
    for i in (0, 1):
        assert torch.equal(
            model.classifier.branches[i].weight, sd[f"Scale.layer5.conv2d_list.{i}.weight"]
        )
        assert torch.equal(
            model.classifier.branches[i].bias, sd[f"Scale.layer5.conv2d_list.{i}.bias"]
        )


def test_load_trained_multilevel_checkpoint_heads() -> None:
    # AdaptSegNet/ADVENT checkpoints: layer5 = conv4 (aux, 1024 in), layer6 = main (2048 in).
    shapes = (
        reference_backbone_shapes()
        | classifier_shapes("layer5", 1024, 19)
        | classifier_shapes("layer6", 2048, 19)
    )
    sd = fake_state_dict(shapes)
    model = DeepLabV2(19, aux=True)
    report = load_deeplab_weights(model, sd, load_classifier=True)
    assert report.skipped == {} and report.missing == []
    assert torch.equal(model.aux_classifier.branches[3].weight, sd["layer5.conv2d_list.3.weight"])
    assert torch.equal(model.classifier.branches[0].bias, sd["layer6.conv2d_list.0.bias"])


def test_load_torchvision_imagenet_file(tmp_path) -> None:
    from torchvision.models import resnet101

    reference = resnet101(weights=None).state_dict()  # the producer of resnet101-*.pth
    sd = fake_state_dict(
        {k: tuple(v.shape) for k, v in reference.items() if not k.endswith("num_batches_tracked")},
        seed=1,
    )
    path = tmp_path / "resnet101-63fe2227.pth"
    torch.save(sd, path)
    model = DeepLabV2(19)
    report = load_deeplab_weights(model, path)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert report.missing == [] and report.unexpected == []
    _assert_backbone_equals(model, sd, "")


def test_shape_mismatch_names_key_and_shapes() -> None:
    sd = fake_state_dict(reference_backbone_shapes())
    sd["layer3.7.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(
        ValueError,
        match=r"layer3\.7\.conv2\.weight.*\(256, 256, 1, 1\).*"
        r"\(256, 256, 3, 3\)",
    ):
        load_deeplab_weights(DeepLabV2(19), sd)


def test_missing_and_unexpected_keys_are_reported() -> None:
    sd = fake_state_dict(reference_backbone_shapes())
    del sd["layer4.2.bn3.running_var"]
    sd["layer7.weight"] = torch.zeros(1)
    model = DeepLabV2(19)
    with pytest.raises(ValueError, match=r"layer4\.2\.bn3\.running_var"):
        load_deeplab_weights(model, sd)
    report = load_deeplab_weights(model, sd, strict=False)
    assert report.missing == ["backbone.layer4.2.bn3.running_var"]
    assert report.unexpected == ["layer7.weight"]


def test_build_model_loads_weights(tmp_path) -> None:
    sd = fake_state_dict(reference_backbone_shapes(), "Scale.", seed=3)
    path = tmp_path / "DeepLab_resnet_pretrained_imagenet.pth"
    torch.save(sd, path)
    model = build_model("deeplabv2_r101", weights=path, aux=True, layout="caffe")
    assert torch.equal(model.backbone.conv1.weight, sd["Scale.conv1.weight"])
