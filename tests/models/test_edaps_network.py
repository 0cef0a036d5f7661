"""The EDAPS network: instance decoder wiring equals torchvision's own RPN/RoI forward
(smooth-L1 setting), the L1 default, images without instances, detections, parameter count
of the MiT-B5 decoder from its layer list, optimiser groups and pretrained weights."""

from __future__ import annotations

import math

import pytest
import torch

from gbw.data.panoptic import instance_targets
from gbw.models import build_model, count_parameters
from gbw.models.edaps import EDAPS, InstanceDecoder
from gbw.models.mit import nvlabs_key_shapes

LOSSES = ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "mask")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scene(b: int = 2, size: int = 64, empty: tuple[int, ...] = ()) -> tuple[torch.Tensor, list]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=g)
    pans = torch.zeros(b, size, size, dtype=torch.long)
    for i in range(b):
        if i in empty:
            continue
        pans[i, 8:30, 4:28] = 13 * 1000 + 1
        pans[i, 36:60, 40:50] = 11 * 1000 + 1
        pans[i, 40:52, 10:30] = 13 * 1000 + 2
    return images, [instance_targets(p) for p in pans]


@pytest.fixture(scope="module")
def tiny() -> EDAPS:
    torch.manual_seed(0)
    return build_model("edaps_tiny")


def test_semantic_forward_skips_the_instance_decoder(tiny):
    images, targets = scene()
    out = tiny(images)
    assert set(out) == {"main"} and out["main"].shape == (2, 19, 16, 16)
    out = tiny(images, return_features=True, instances=targets)
    assert set(out) == {"main", "features", "instance"}
    assert set(out["instance"]) == {*LOSSES, "roi_logits", "roi_labels"}


def test_losses_equal_torchvisions_own_forward_with_smooth_l1():
    """The rewired RPN and RoI stages compute what torchvision's forward computes, sampling
    included, when the box loss is torchvision's smooth-L1."""
    torch.manual_seed(0)
    model = build_model("edaps_tiny", instance={"box_loss": "smooth_l1"}).train()
    images, targets = scene()
    head = model.instance_head
    with torch.no_grad():
        normalized = model.normalize(images)
        feats = model.backbone(normalized)
        torch.manual_seed(5)
        ours = head.losses(normalized, feats, targets)
        torch.manual_seed(5)
        image_list, pyramid = head._pyramid(normalized, feats)
        tv_targets = [
            {"boxes": t["boxes"], "labels": t["classes"] + 1, "masks": t["masks"]} for t in targets
        ]
        proposals, rpn = head.rpn(image_list, pyramid, tv_targets)
        _, roi = head.roi_heads(pyramid, proposals, image_list.image_sizes, tv_targets)
    torch.testing.assert_close(ours["rpn_cls"], rpn["loss_objectness"])
    torch.testing.assert_close(ours["rpn_box"], rpn["loss_rpn_box_reg"])
    torch.testing.assert_close(ours["roi_cls"], roi["loss_classifier"])
    torch.testing.assert_close(ours["roi_box"], roi["loss_box_reg"])
    torch.testing.assert_close(ours["mask"], roi["loss_mask"])
    assert float(ours["rpn_box"]) > 0 and float(ours["roi_box"]) > 0


def test_l1_default_and_the_box_loss_option():
    assert InstanceDecoder().box_loss == "l1"  # the reference: mmdet L1Loss
    torch.manual_seed(0)
    l1 = build_model("edaps_tiny").train()
    torch.manual_seed(0)
    smooth = build_model("edaps_tiny", instance={"box_loss": "smooth_l1"}).train()
    images, targets = scene()
    with torch.no_grad():
        torch.manual_seed(3)
        a = l1(images, instances=targets)["instance"]
        torch.manual_seed(3)
        b = smooth(images, instances=targets)["instance"]
    for k in ("rpn_cls", "roi_cls", "mask"):  # same sampling, same non-box losses
        torch.testing.assert_close(a[k], b[k])
    # |x| >= smooth_l1(x, beta) everywhere, strictly where |x| < beta
    assert float(a["rpn_box"]) > float(b["rpn_box"]) > 0
    with pytest.raises(ValueError, match="box_loss must be"):
        InstanceDecoder(box_loss="giou")


def test_image_without_instances_trains(tiny):
    images, targets = scene(empty=(1,))
    assert len(targets[1]["boxes"]) == 0
    tiny.train().zero_grad()
    out = tiny(images, instances=targets)["instance"]
    assert all(math.isfinite(float(out[k].detach())) for k in LOSSES)
    images, targets = scene(empty=(0, 1))  # a whole batch without instances
    inst = tiny(images, instances=targets)["instance"]
    value = {k: float(inst[k].detach()) for k in LOSSES}
    assert value["rpn_box"] == value["roi_box"] == value["mask"] == 0.0
    assert value["rpn_cls"] > 0 and value["roi_cls"] > 0
    assert (inst["roi_labels"] == 0).all()
    sum(inst[k] for k in LOSSES).backward()
    grads = [p.grad for p in tiny.instance_head.rpn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_gradients_reach_every_parameter(tiny):
    images, targets = scene()
    tiny.train().zero_grad()
    out = tiny(images, instances=targets)
    loss = out["main"].mean() + sum(out["instance"][k] for k in LOSSES)
    loss.backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None]
    assert missing == []


def test_detections_in_eval_mode(tiny):
    images, _ = scene()
    tiny.eval()
    dets = tiny(images, detect=True)["detections"]
    assert len(dets) == 2
    for d in dets:
        n = d["boxes"].shape[0]
        assert n <= 100 and d["masks"].shape == (n, 64, 64) and d["masks"].dtype == torch.bool
        assert d["scores"].shape == (n,) and ((d["classes"] >= 0) & (d["classes"] < 8)).all()
        assert (d["scores"] > 0.05).all()
    tiny.train()
    with pytest.raises(RuntimeError, match="eval"):
        tiny.instance_head.detect(images, tiny.backbone(tiny.normalize(images)))


def instance_decoder_parameters(c_in=(64, 128, 320, 512), fpn=256, fc=1024, mask=256, k=9) -> int:
    """EDAPS's instance decoder layer by layer (maskrcnn_sepaspp_mitb5.py): FPN lateral 1x1 and
    output 3x3 convs with bias; RPN 3x3 conv + 1x1 objectness (3 anchors) + 1x1 deltas (12);
    two FC 1024 on 256x7x7; classifier 9, class-specific regression 9 x 4 (torchvision keeps
    a background row; mmdet's has 8 x 4); four 3x3 mask convs, a 2x2 deconv and a 1x1 to 9
    mask logits (mmdet's 8)."""
    n = sum(c * fpn + fpn for c in c_in) + len(c_in) * (fpn * fpn * 9 + fpn)
    n += fpn * fpn * 9 + fpn + fpn * 3 + 3 + fpn * 12 + 12
    n += fpn * 49 * fc + fc + fc * fc + fc + fc * k + k + fc * 4 * k + 4 * k
    n += 4 * (fpn * mask * 9 + mask) + mask * mask * 4 + mask + mask * k + k
    return n


def test_mit_b5_instance_decoder_size_and_groups():
    decoder = InstanceDecoder()
    assert count_parameters(decoder) == instance_decoder_parameters() == 19_784_261
    torch.manual_seed(0)
    model = build_model("edaps_tiny")
    groups = {g["name"]: g for g in model.param_groups(6e-5)}
    head = {id(p) for p in groups["head"]["params"]}
    assert all(id(p) in head for p in model.instance_head.parameters())
    assert groups["head"]["lr"] == pytest.approx(6e-4)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0


def test_builds_with_mit_weights(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in nvlabs_key_shapes("tiny").items()}
    path = tmp_path / "mit_tiny.pth"
    torch.save(sd, path)
    model = build_model("edaps_tiny", weights=path)
    own = model.backbone.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert model.instance_head.fpn.inner_blocks[0][0].out_channels == 32  # the tiny decoder
