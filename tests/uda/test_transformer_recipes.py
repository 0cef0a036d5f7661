"""DAFormer, HRDA and MIC: the engine on quick MiniCity with a tiny MiT (losses, GBW terms,
kill-and-resume, DDP), HRDA's network, host-sync-free steps (meta tensors), overfitting,
rare-class sampling wired into the loader, sliding window == whole image, and MiT-B5
parameter counts."""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.config import EvalConfig, ExperimentConfig, load_config
from gbw.engine.evaluate import predict_logits
from gbw.engine.trainer import build_method, train
from gbw.models import build_model, count_parameters
from gbw.models.base import IMAGENET_MEAN
from gbw.models.daformer_head import DAFormerHead
from gbw.models.hrda import HRDAModel, ScaleAttentionHead, crop_at, paste_at
from gbw.models.mit import nvlabs_key_shapes
from gbw.uda.base import ReusedWeighting, Step
from gbw.weighting import weighted_cross_entropy
from kill_resume import assert_same_method_state, train_killed_at
from tiny_networks import tiny_method, tiny_network

#: (method, network base) of each recipe with a tiny MiT, and extra overrides
RECIPES = {
    "daformer": ("daformer", "hrda", []),
    "hrda": ("hrda", "hrda", []),
    "mic": ("mic", "hrda", []),
    "mic_daformer": ("mic", "daformer", ["uda.pseudo_margins=[4,8,0,0]"]),
}
#: GBW terms each recipe must weight (and log)
TERMS = {
    "daformer": {"src", "mix"},
    "hrda": {"src", "src_hr", "mix", "mix_hr"},
    "mic": {"src", "src_hr", "mix", "mix_hr", "masked", "masked_hr"},
    "mic_daformer": {"src", "mix", "masked"},
}


def recipe_config(name: str, *extra: str) -> ExperimentConfig:
    method, base, more = RECIPES[name]
    return load_config(
        None,
        [
            *tiny_method(method, base=base),
            *more,
            "weighting.name=gbw",
            "optim.name=adamw",
            "optim.lr=1e-3",
            "optim.head_lr_mult=1.0",
            *extra,
        ],
    )


def batches(b: int = 2, size: int = 64, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    source = {
        "image": torch.rand(b, 3, size, size, generator=g),
        "label": torch.randint(0, 19, (b, size, size), generator=g),
    }
    target = {"image": torch.rand(b, 3, size, size, generator=g)}
    return source, target


def run_steps(method, source: dict, target: dict, n: int, start: int = 0) -> list[dict]:
    opts = method.configure_optimizers()
    logs = []
    for i in range(start, start + n):
        step = Step(i, lambda loss: loss.backward(), opts, start + n)
        logs.append({k: float(v) for k, v in method.training_step(source, target, step).items()})
        method.after_optimizer_step(step)
    return logs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the engine on quick MiniCity ----------------------------------------------------------


@pytest.fixture(scope="module")
def minicity(tmp_path_factory) -> str:
    from gbw.data.minicity import ensure_minicity

    root = tmp_path_factory.mktemp("minicity_transformer")
    ensure_minicity(root, seed=0, size="quick")
    return str(root)


def engine_config(name: str, root: str, out: Path, *extra: str) -> ExperimentConfig:
    method, base, _ = RECIPES[name]
    hrda = method == "hrda" or (method == "mic" and base == "hrda")
    return recipe_config(
        name,
        f"out_dir={out}",
        f"name={name}",
        "data.minicity_size=quick",
        "data.batch_size=2",
        "data.num_workers=0",
        *[f"data.{s}.root={root}" for s in ("source", "target", "val")],
        "data.source.crop=[64,64]",
        "data.target.crop=[64,64]",
        "data.source.rcs=true",
        "data.source.rcs_min_pixels=200",
        "data.source.rcs_min_crop_ratio=0.5",
        "train.accelerator=cpu",
        "train.progress=false",
        "train.max_iters=4",
        "train.log_every=2",
        "train.ckpt_every=0",
        "eval.batch_size=4",
        "eval.subset=4",
        *(["eval.mode=slide", "eval.crop=[64,64]", "eval.stride=[32,32]"] if hrda else []),
        *extra,
    )


@pytest.mark.parametrize("name", ["daformer", "hrda", "mic"])
def test_engine_trains_each_recipe_and_logs_every_weighted_term(minicity, tmp_path, name):
    result = train(engine_config(name, minicity, tmp_path))
    rows = (result.run_dir / "scalars.csv").read_text().splitlines()
    losses: dict[str, list[float]] = {}
    for r in rows:
        _, key, value = r.split(",")[:3]
        if key.startswith("loss/") and not key.startswith("loss/diag"):
            losses.setdefault(key[len("loss/") :], []).append(float(value))
    expected = {f"{t}.ce" for t in TERMS[name]} | {"src.fd"}
    assert expected <= set(losses), sorted(losses)
    for key in expected - {"src.fd"}:  # FD is 0 until a thing class fills a feature cell
        values = losses[key]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), (key, values)
        assert values[0] != values[1], key
    for term in TERMS[name]:  # every GBW term logs its per-class weights
        assert any(f",{term}/weight/road," in r for r in rows), term
    # rare-class sampling writes the class frequencies and probabilities it samples from
    rcs_log = (result.run_dir / "rare_class_sampling.txt").read_text()
    assert "rare-class sampling: T=0.01, min_pixels=200" in rcs_log and "freq f_c" in rcs_log
    assert 0.0 <= result.metrics["mIoU"] <= 1.0


def test_killed_hrda_run_resumes_bit_identically(minicity, tmp_path, monkeypatch):
    """Teacher, frozen ImageNet encoder, the method's generator (detail crops, mixing, masks)
    and rare-class sampling all continue where the checkpoint left them."""
    from gbw.uda.dacs import DACS

    args = ("train.max_iters=4", "train.ckpt_every=2")
    full = train(engine_config("mic", minicity, tmp_path / "a", *args))
    exp = engine_config("mic", minicity, tmp_path / "b", *args)
    train_killed_at(monkeypatch, DACS, exp, step=3)
    resumed = train(exp, resume=True)
    assert_same_method_state(full.run_dir, resumed.run_dir, prefix="imnet.")


# --- HRDA's network ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hrda_net() -> HRDAModel:
    torch.manual_seed(0)
    net = build_model(
        "hrda_daformer_mit",
        num_classes=5,
        encoder="tiny",
        embed_dim=16,
        channels=16,
        detail_crop=(32, 32),
        attention_embed_dim=16,
    )
    return net.eval()


def test_detail_offsets_follow_hrda_get_crop_bbox(hrda_net):
    g = torch.Generator().manual_seed(0)
    offsets = torch.stack([hrda_net.random_detail_offset((64, 96), g) for _ in range(2000)])
    # (margin + 1) // 8 positions per axis, multiples of 8; margin itself (32, 64) never drawn
    assert set(offsets[:, 0].tolist()) == {0, 8, 16, 24}
    assert set(offsets[:, 1].tolist()) == set(range(0, 64, 8))
    assert hrda_net.random_detail_offset((32, 32), g).tolist() == [0, 0]
    with pytest.raises(ValueError, match="smaller than the detail crop"):
        hrda_net.random_detail_offset((16, 64), g)


def test_crop_and_paste_are_slices():
    x = torch.arange(2 * 3 * 16 * 24, dtype=torch.float32).view(2, 3, 16, 24)
    off = torch.tensor([4, 8])
    assert torch.equal(crop_at(x, off, (8, 8)), x[:, :, 4:12, 8:16])
    assert torch.equal(crop_at(x[:, 0].long(), off, (8, 8)), x[:, 0, 4:12, 8:16].long())
    patch = torch.randn(2, 3, 4, 4, requires_grad=True)
    full = paste_at(patch, torch.tensor([2, 3]), (8, 10))
    expected = torch.zeros(2, 3, 8, 10)
    expected[:, :, 2:6, 3:7] = patch.detach()
    assert torch.equal(full.detach(), expected)
    full.sum().backward()
    assert torch.equal(patch.grad, torch.ones_like(patch))


def test_training_forward_fuses_as_hrda_head(hrda_net):
    """fused = up(a) * detail_inserted + up((1 - a) * context), a zero outside the crop."""
    x = torch.rand(2, 3, 64, 64)
    off = torch.tensor([16, 8])
    with torch.no_grad():
        out = hrda_net(x, detail_offset=off)
        small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        ctx = hrda_net.base(small, return_features=True)
        att = torch.sigmoid(hrda_net.scale_attention(ctx["features"]))
        mask = torch.zeros(1, 1, 8, 8)
        mask[:, :, 2:6, 1:5] = 1  # the 32x32 crop at (16, 8) on the stride-8 context grid
        att = att * mask
        detail = hrda_net.base(x[:, :, 16:48, 8:40])["main"]
        inserted = torch.zeros(2, 5, 16, 16)
        inserted[:, :, 4:12, 2:10] = detail

        def up(t):
            return F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)

        expected = up(att) * inserted + up((1 - att) * ctx["main"])
    assert out["main"].shape == (2, 5, 16, 16) and out["detail"].shape == (2, 5, 8, 8)
    torch.testing.assert_close(out["main"], expected)
    torch.testing.assert_close(out["detail"], detail)
    # far from the crop the fused logits are the (upsampled) context logits
    torch.testing.assert_close(out["main"][..., 14:, 14:], up(ctx["main"])[..., 14:, 14:])


def test_inference_slides_the_detail_crop(hrda_net):
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = hrda_net(x)["main"]
        # the detail map by hand: 32x32 windows with stride 16, averaged where they overlap
        acc, cnt = torch.zeros(1, 5, 16, 24), torch.zeros(1, 1, 16, 24)
        for y in range(0, 33, 16):
            for xx in range(0, 65, 16):
                acc[:, :, y // 4 : y // 4 + 8, xx // 4 : xx // 4 + 8] += hrda_net.base(
                    x[:, :, y : y + 32, xx : xx + 32]
                )["main"]
                cnt[:, :, y // 4 : y // 4 + 8, xx // 4 : xx // 4 + 8] += 1
        small = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        ctx = hrda_net.base(small, return_features=True)
        att = torch.sigmoid(hrda_net.scale_attention(ctx["features"]))
        expected = hrda_net._fuse(ctx["main"], att, acc / cnt)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="divisible by 8"):
        hrda_net(torch.rand(1, 3, 60, 64))


class _Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): any tiling of the image gives the same logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"main": self.conv(x)}


@pytest.mark.parametrize("which", ["daformer", "hrda", "pointwise"])
def test_sliding_window_equals_whole_image_when_the_window_covers_it(hrda_net, which):
    torch.manual_seed(0)
    if which == "daformer":
        model = build_model("daformer_mit", 5, encoder="tiny", embed_dim=16, channels=16).eval()
    elif which == "hrda":
        model = hrda_net
    else:
        model = _Pointwise().eval()
    classes = 4 if which == "pointwise" else 5
    image = torch.rand(2, 3, 64, 96)
    whole = predict_logits(model, image, EvalConfig(mode="whole"), classes)
    for crop in ([64, 96], [128, 128]):  # exactly the image, and larger than it
        cfg = EvalConfig(mode="slide", crop=crop, stride=[32, 32])
        torch.testing.assert_close(predict_logits(model, image, cfg, classes), whole)
    if which == "pointwise":  # overlapping windows too, for a model without context
        cfg = EvalConfig(mode="slide", crop=[32, 48], stride=[16, 24])
        torch.testing.assert_close(predict_logits(model, image, cfg, classes), whole)


# --- parameter counts ----------------------------------------------------------------------


def attention_head_parameters(in_channels=(64, 128, 320, 512), classes=19, embed=256) -> int:
    """HRDA's scale attention (``HRDAHead.__init__``), layer by layer: 'mlp' embeddings
    (Linear with bias), fusion ConvModule 1x1 without bias + BN, 1x1 classifier with bias."""
    n = sum(c * embed + embed for c in in_channels)
    n += len(in_channels) * embed * embed + 2 * embed
    return n + embed * classes + classes


def test_parameter_counts_with_mit_b5_match_the_reference_layer_lists():
    """MiT-B5 81,443,008 (NVlabs ``mit_b5.pth`` key shapes; SegFormer reports 81.4M) + DAFormer
    head 3,712,275 = 85,155,283 (85.2M); HRDA adds its scale attention: 530,707 -> 85,685,990."""
    mit = sum(math.prod(s) for s in nvlabs_key_shapes("b5").values())
    assert mit == 81_443_008
    assert attention_head_parameters() == 530_707
    assert count_parameters(ScaleAttentionHead()) == 530_707
    assert count_parameters(DAFormerHead()) == 3_712_275
    hrda = build_model("hrda_daformer_mitb5")  # ~3 s: the MiT init is patched to be fast
    daformer = hrda.base
    assert count_parameters(daformer.backbone) == mit
    assert count_parameters(daformer) == mit + 3_712_275 == 85_155_283
    assert count_parameters(hrda) == 85_155_283 + 530_707 == 85_685_990
    groups = {g["name"]: g for g in hrda.param_groups(6e-5)}
    assert groups["scale_attention"]["lr"] == pytest.approx(6e-4)


# --- the methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["daformer", "hrda", "mic", "mic_daformer"])
def test_one_training_step_runs_on_meta_tensors(name):
    """A whole step (forward, GBW QPs, backward, EMA update) on ``meta`` tensors, which raise
    on any read of a value: no ``.item()``, no data-dependent shapes, no branch on a tensor.
    The optimiser step itself is left out (AdamW keeps its step counter on the host unless
    ``capturable``/``fused``; on a GPU the fused optimiser runs on the device)."""

    class NoOptimizer:
        def zero_grad(self, set_to_none: bool = True) -> None: ...

        def step(self) -> None: ...

    method = build_method(recipe_config(name)).to("meta")
    method._gen = torch.Generator()  # meta draws ignore the generator's values
    meta = torch.device("meta")
    source = {
        "image": torch.empty(2, 3, 64, 64, device=meta),
        "label": torch.empty(2, 64, 64, dtype=torch.long, device=meta),
    }
    target = {
        "image": torch.empty(2, 3, 64, 64, device=meta),
        "valid_pseudo_mask": torch.empty(2, 64, 64, dtype=torch.bool, device=meta),
    }
    step = Step(3, lambda loss: loss.backward(), {"model": NoOptimizer()}, 10)
    logs = method.training_step(source, target, step)
    method.after_optimizer_step(step)
    assert {f"{t}.ce" for t in TERMS[name]} <= set(logs)
    assert all(v.device == meta and v.ndim == 0 for v in logs.values())
    assert set(method.weightings) == TERMS[name]


def test_step_code_never_reads_tensors_on_the_host():
    """The meta test covers the paths it runs; this covers the source text of every step."""
    import gbw.models.hrda
    import gbw.uda.dacs
    import gbw.uda.daformer
    import gbw.uda.hrda
    import gbw.uda.mic

    banned = re.compile(r"\.item\(|\.cpu\(|\.tolist\(|\.numpy\(|torch\.unique|nonzero\(")
    for module in (gbw.uda.dacs, gbw.uda.daformer, gbw.uda.hrda, gbw.uda.mic, gbw.models.hrda):
        assert not banned.findall(inspect.getsource(module)), module.__name__


def test_hrda_and_mic_check_their_network():
    with pytest.raises(ValueError, match="hrda_daformer_mitb5"):
        build_method(recipe_config("daformer", "method=hrda"))
    with pytest.raises(ValueError, match="single-resolution"):
        build_method(recipe_config("mic", "uda.base=daformer"))
    with pytest.raises(ValueError, match=r"uda\.base must be one of"):
        build_method(recipe_config("mic", "uda.base=segformer"))


def test_share_weights_reuses_the_fused_terms_weights():
    method = build_method(recipe_config("hrda", "uda.share_weights=true"))
    source, target = batches()
    run_steps(method, source, target, 1)
    assert set(method.weightings) == {"src", "src_hr", "mix", "mix_hr"}
    for term in ("src_hr", "mix_hr"):
        assert isinstance(method.weightings[term], ReusedWeighting)
        assert method.weightings[term].log_dict() == {}
    # the detail loss is the plain weighted CE with the fused term's GBW weights
    v = method.weightings["src"].last_weights
    label = source["label"][:, :32, :32]
    logits = torch.randn(2, 19, 32, 32)
    torch.testing.assert_close(
        method.weightings["src_hr"].cross_entropy(logits, label),
        weighted_cross_entropy(logits, label, v),
    )
    # own weights per call (default): four GBW solves per iteration
    method = build_method(recipe_config("hrda"))
    run_steps(method, source, target, 1)
    assert all(w.calls == 1 for w in method.weightings.values())


def test_feature_distance_on_thing_classes_only():
    torch.manual_seed(0)
    method = build_method(recipe_config("daformer"))
    image = torch.rand(2, 3, 64, 64)
    features = method.imnet(image)  # identical features: distance 0, finite gradient
    student = [f.clone().requires_grad_(True) for f in features]
    cars = torch.full((2, 64, 64), 13)
    fd = method.feature_distance(student, image, cars)
    fd.backward()
    assert fd.item() == 0.0 and torch.isfinite(student[-1].grad).all()
    moved = [f + 1.0 for f in features]
    assert method.feature_distance(moved, image, cars).item() == pytest.approx(
        math.sqrt(features[-1].shape[1]), rel=1e-5
    )
    roads = torch.zeros(2, 64, 64, dtype=torch.long)  # stuff: no cell counts
    assert method.feature_distance(moved, image, roads).item() == 0.0
    # the frozen encoder keeps its ImageNet weights while the student trains
    before = [p.clone() for p in method.imnet.parameters()]
    run_steps(method, *batches(), n=2)
    assert all(torch.equal(a, b) for a, b in zip(before, method.imnet.parameters()))
    assert not any(p.requires_grad for p in method.imnet.parameters())


def test_pseudo_labels_honour_the_loaders_margin_mask():
    method = build_method(recipe_config("hrda", "uda.pseudo_threshold=0.0"))
    image = torch.rand(2, 3, 64, 64)
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[:, :8] = False
    _, weight = method.pseudo_label(image, valid)
    assert (weight[:, :8] == 0).all() and (weight[:, 8:] == 1).all()


def test_mic_masks_blocks_of_an_augmented_copy():
    method = build_method(recipe_config("mic", "uda.mask_ratio=0.5"))
    image = torch.rand(4, 3, 64, 64)
    masked = method.masked_images(image, torch.Generator().manual_seed(0))
    # MIC blanks blocks of the *normalised* image: here they take the mean colour, which the
    # network's normalisation maps to 0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert method.net.base.normalize(mean.expand(1, 3, 2, 2)).abs().max() < 1e-6
    blank = (masked - mean).abs().view(4, 3, 4, 16, 4, 16).amax(dim=(1, 3, 5)) < 1e-6
    assert 0 < blank.float().mean() < 1  # whole 16x16 blocks blanked, the others kept
    kept = ~blank.repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(1).expand_as(image)
    assert not torch.equal(masked[kept], image[kept])  # the kept pixels were colour-augmented


# --- recipe defaults = the reference code, tiny cases -------------------------------------


def test_daformer_teacher_is_the_reference_train_mode_teacher():
    """DAFormer ``dacs.py``: the EMA model stays in train mode, only ``_DropoutNd`` and
    ``DropPath`` are switched off before the teacher pass, so the DAFormer head's BatchNorm
    normalises with the target batch's statistics. The first update after step 0 averages
    with weight 1/2 (``_init_ema_weights`` at iteration 0, ``_update_ema(1)`` at iteration 1)."""
    import copy

    from segmentation_models_pytorch.encoders.mix_transformer import DropPath
    from torch.nn.modules.dropout import _DropoutNd

    torch.manual_seed(0)
    method = build_method(recipe_config("daformer"))
    assert method.cfg.teacher_bn == "batch" and method.cfg.ema_first_update == "half"
    start = [p.detach().clone() for p in method.teacher.model.parameters()]
    with torch.no_grad():
        for p in method.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    method.after_optimizer_step(Step(0, lambda loss: None, {}, 10))
    for t, s, o in zip(method.teacher.model.parameters(), method.net.parameters(), start):
        torch.testing.assert_close(t, 0.5 * o + 0.5 * s)
    reference = copy.deepcopy(method.teacher.model).train()
    for m in reference.modules():
        if isinstance(m, (_DropoutNd, DropPath)):
            m.training = False
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = method.teacher(x)["main"], reference(x)["main"]
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(method.teacher(x)["main"], ours)  # no dropout, no DropPath
        eval_mode = copy.deepcopy(method.teacher.model).eval()(x)["main"]
    assert not torch.allclose(ours, eval_mode)  # the head's BN: batch, not running statistics


def test_daformer_losses_are_mmseg_all_pixel_means():
    """mmseg 0.16 ``CrossEntropyLoss`` (DAFormer ``mmseg/models/losses``): ``F.cross_entropy(
    reduction='none')`` then ``.mean()`` over all pixels, of logits resized with
    ``align_corners=False``."""
    torch.manual_seed(1)
    method = build_method(recipe_config("daformer", "uda.fd_lambda=0", "weighting.name=none"))
    outputs: list[Tensor] = []
    hook = method.model.register_forward_hook(lambda m, a, out: outputs.append(out["main"]))
    source, target = batches()
    source["label"][:, :20] = 255
    logs = run_steps(method, source, target, 1)[0]
    hook.remove()
    up = F.interpolate(outputs[0].detach(), size=(64, 64), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, source["label"], ignore_index=255, reduction="none")
    assert logs["src.ce"] == pytest.approx(float(ce.mean()), rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_mic_augments_the_masked_batch_with_one_order_and_sigma(per_image):
    """MIC ``masking_consistency_module.py`` calls ``strong_transform`` once on the masked
    batch: one jitter order and one blur sigma for all images (``uda.mask_aug_per_image``)."""
    from gbw.uda.blocks import block_mask, strong_augment

    method = build_method(recipe_config("mic", f"uda.mask_aug_per_image={per_image}"))
    image = torch.rand(4, 3, 64, 64)
    masked = method.masked_images(image, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    augmented = strong_augment(image, g, same_order_and_sigma=not per_image)
    keep = block_mask(image.shape, g, block_size=16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(masked, augmented * keep + mean * (1 - keep))
    # and the two choices really differ on this draw (jitter and blur both applied)
    other = strong_augment(image, torch.Generator().manual_seed(0), same_order_and_sigma=per_image)
    assert not torch.allclose(augmented, other)


@pytest.mark.parametrize("scope", ["fused", "all"])
def test_mic_mask_lambda_scales_the_fused_part_only(scope):
    """MIC: ``masked_loss['decode.loss_seg'] *= self.mask_lambda``: HRDA's fused part
    (already x 0.9), not the detail part ``decode.hr.loss_seg`` (x 0.1)."""
    torch.manual_seed(2)
    method = build_method(
        recipe_config("mic", "uda.mask_lambda=0.5", f"uda.mask_lambda_scope={scope}")
    )
    opts = method.configure_optimizers()
    losses: list[Tensor] = []

    def backward(loss: Tensor) -> None:
        losses.append(loss.detach())
        loss.backward()

    logs = method.training_step(*batches(), Step(0, backward, opts, 10))
    fused, detail = logs["masked.ce"], logs["masked_hr.ce"]
    expected = (
        0.5 * 0.9 * fused + 0.1 * detail if scope == "fused" else 0.5 * (0.9 * fused + 0.1 * detail)
    )
    torch.testing.assert_close(losses[-1], expected)


def test_hrda_overfits_one_batch():
    """HRDA (fused + detail loss, GBW on all four terms) fits one colour-coded source batch."""
    torch.manual_seed(0)
    method = build_method(
        recipe_config("hrda", "optim.lr=3e-3", "optim.head_lr_mult=10", "model.kwargs.dropout=0.0")
    )
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 4, (2, 8, 8), generator=g)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)  # 8x8 blocks of 4 classes
    image = torch.rand(4, 3, generator=g)[label].permute(0, 3, 1, 2).contiguous()
    source = {"image": image, "label": label}
    target = {"image": torch.rand(2, 3, 64, 64, generator=g)}
    logs = run_steps(method, source, target, 60)
    first, last = logs[0], logs[-1]
    assert last["src.ce"] < 0.25 * first["src.ce"], (first, last)
    assert last["src_hr.ce"] < 0.25 * first["src_hr.ce"], (first, last)
    assert all(math.isfinite(v) for log in logs for v in log.values())


# --- rare-class sampling in the engine's loader --------------------------------------------


def test_rare_class_sampling_is_wired_deterministic_and_resumable(minicity, tmp_path):
    from gbw.engine.data import build_dataset, build_train_loader

    exp = engine_config("daformer", minicity, tmp_path)
    source = build_dataset(exp.data.source, exp, train=True, with_labels=True)

    def take(start: int, n: int, cfg=exp) -> list[tuple[list[str], list[int], Tensor]]:
        it = iter(build_train_loader(source, cfg, "source", start_step=start))
        out = []
        for _ in range(n):
            b = next(it)
            out.append((b["name"], b["rcs_class"].tolist(), b["image"]))
        return out

    run = take(0, 6)
    again = take(0, 6)
    resumed = take(3, 3)
    in_memory = take(0, 6, load_config(None, ["data.in_memory=true"], base=exp))
    for a, b in zip(run, again):
        assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    for a, b in zip(run, in_memory):  # decoded once, kept in RAM: same images and classes
        assert a[0] == b[0] and a[1] == b[1] and a[2].shape == b[2].shape
    for a, b in zip(run[3:], resumed):  # a resumed run continues with the same samples
        assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    classes = [c for _, cs, _ in run for c in cs]
    assert len(set(classes)) > 1  # classes are drawn, not one fixed class
    with pytest.raises(ValueError, match=r"only data\.source\.rcs"):
        bad = load_config(None, ["data.target.rcs=true"], base=exp)
        build_train_loader(source, bad, "target", start_step=0)


def test_missing_pretrained_file_names_it(tmp_path):
    missing = tmp_path / "pretrained" / "mit_b5.pth"
    exp = recipe_config("daformer", f"model.pretrained={missing}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_method(exp)


@pytest.mark.slow
def test_hrda_trains_on_two_processes(minicity, tmp_path, train_two_processes):
    """``gbw train`` with DDP on 2 CPU processes (gloo): HRDA's keyword forward (the detail
    crop's offset), its four GBW terms and rare-class sampling under DDP."""
    import json

    cfg = tmp_path / "hrda.yaml"
    cfg.write_text("method: hrda\n")
    overrides = [
        *tiny_network("hrda"),
        f"out_dir={tmp_path}",
        "name=ddp",
        "data.minicity_size=quick",
        "data.num_workers=0",
        *[f"data.{s}.root={minicity}" for s in ("source", "target", "val")],
        "data.source.crop=[64,64]",
        "data.target.crop=[64,64]",
        "data.source.rcs=true",
        "data.source.rcs_min_pixels=200",
        "train.max_iters=2",
        "train.log_every=1",
        "eval.subset=4",
        "eval.mode=slide",
        "eval.crop=[64,64]",
        "eval.stride=[32,32]",
        "weighting.name=gbw",
    ]
    train_two_processes(cfg, overrides)
    run = tmp_path / "ddp"
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2
    summary = json.loads((run / "weights_summary.json").read_text())
    assert set(summary) == TERMS["hrda"]
