"""The DeepLabV2-era methods (source-only, AdaptSegNet, AdvEnt, MinEnt, DACS): the engine on quick
MiniCity with a tiny network, every class weighting in every method, the references' losses,
frozen discriminators, overfitting, and ``gbw bench step`` on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gbw.config import ExperimentConfig, load_config
from gbw.engine.trainer import build_method, train
from gbw.uda.advent import self_information
from gbw.uda.base import Step, resize_to
from gbw.weighting import WEIGHTINGS
from kill_resume import assert_same_method_state, train_killed_at
from tiny_networks import tiny_method, tiny_network, tinyseg

ROOT = Path(__file__).resolve().parents[2]
#: loss terms each method weights (and must log weights for)
TERMS = {
    "source_only": {"src"},
    "dacs": {"src", "mix"},
    "adaptsegnet": {"src", "src_aux"},
    "advent": {"src", "src_aux", "trg_ent", "trg_ent_aux"},
    "minent": {"src", "src_aux", "trg_ent", "trg_ent_aux"},
}
#: losses each method logs
LOSSES = {
    "source_only": {"src.ce"},
    "dacs": {"src.ce", "mix.ce"},
    "adaptsegnet": {
        "src.ce",
        "src_aux.ce",
        "adv_trg.main",
        "adv_trg.aux",
        "disc.src",
        "disc.trg",
        "disc_aux.src",
        "disc_aux.trg",
    },
    "minent": {"src.ce", "src_aux.ce", "trg.ent", "trg_aux.ent"},
}
LOSSES["advent"] = LOSSES["adaptsegnet"]


def tiny_config(method: str, *extra: str) -> ExperimentConfig:
    """A CPU experiment with the tiny network (with the conv4-like aux head where needed)."""
    return load_config(
        None,
        [
            *tiny_method(method),
            "optim.name=adamw",
            "optim.lr=0.002",
            "optim.head_lr_mult=1.0",
            *extra,
        ],
    )


def random_batches(b: int = 2, size: int = 32, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (b, size, size), generator=g)
    label[:, :2] = 255
    source = {"image": torch.rand(b, 3, size, size, generator=g), "label": label}
    return source, {"image": torch.rand(b, 3, size, size, generator=g)}


def plain_step(index: int, optimizers: dict, calls: list | None = None) -> Step:
    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        if calls is not None:
            calls.append(loss.detach())

    return Step(index, backward, optimizers, 100)


# ----------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def minicity_root(tmp_path_factory) -> str:
    from gbw.data.minicity import ensure_minicity

    root = tmp_path_factory.mktemp("minicity")
    ensure_minicity(root, seed=0, size="quick")
    return str(root)


def engine_config(method: str, root: str, out_dir: str, *extra: str) -> ExperimentConfig:
    return tiny_config(
        method,
        f"out_dir={out_dir}",
        "name=tiny",
        "data.minicity_size=quick",
        "data.batch_size=2",
        "data.num_workers=0",
        *[f"data.{s}.root={root}" for s in ("source", "target", "val")],
        "train.accelerator=cpu",
        "train.progress=false",
        "train.max_iters=4",
        "train.log_every=2",
        "train.ckpt_every=0",
        "eval.subset=2",
        "weighting.name=gbw",
        *extra,
    )


@pytest.mark.parametrize("method", sorted(TERMS))
def test_method_trains_in_the_engine_and_logs_gbw_weights(minicity_root, tmp_path, method):
    result = train(engine_config(method, minicity_root, str(tmp_path)))
    rows = [r.split(",") for r in (result.run_dir / "scalars.csv").read_text().splitlines()[1:]]
    logged: dict[str, list[float]] = {}
    for _step, tag, value in rows:
        logged.setdefault(tag, []).append(float(value))
    losses = {tag[len("loss/") :]: v for tag, v in logged.items() if tag.startswith("loss/")}
    assert set(losses) - {"diag.pseudo_weight"} == LOSSES[method]
    for name, values in losses.items():
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
        if not name.startswith("diag."):
            assert values[0] != values[1], name  # every loss moves as the networks learn
    # every weighted term logs its per-class GBW weights (summing to C), and nothing else does
    weighted = {tag.split("/")[0] for tag in logged if "/weight/" in tag}
    assert weighted == TERMS[method]
    for term in TERMS[method]:
        w = [v[-1] for tag, v in logged.items() if tag.startswith(f"{term}/weight/")]
        assert len(w) == 19 and all(math.isfinite(x) and x >= 0 for x in w), term
        assert sum(w) == pytest.approx(19, rel=1e-4), term
    summary = json.loads((result.run_dir / "weights_summary.json").read_text())
    assert set(summary) == TERMS[method] and summary["src"]["road"]["steps"] == 4


def test_advent_kill_and_resume_restores_the_discriminators(minicity_root, tmp_path, monkeypatch):
    """Discriminators and their Adam states are checkpointed: a killed run resumes exactly."""
    from gbw.uda.advent import AdvEnt

    args = ("train.max_iters=4", "train.ckpt_every=2")
    full = train(engine_config("advent", minicity_root, str(tmp_path / "a"), *args))
    exp = engine_config("advent", minicity_root, str(tmp_path / "b"), *args)
    train_killed_at(monkeypatch, AdvEnt, exp, step=3)
    resumed = train(exp, resume=True)
    a, b = assert_same_method_state(full.run_dir, resumed.run_dir, prefix="disc_aux.")
    assert set(a["optimizers"]) == {"model", "disc_main", "disc_aux"}
    state_a = a["optimizers"]["disc_main"]["state"]
    state_b = b["optimizers"]["disc_main"]["state"]
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)


# ------------------------------------------------------------- every weighting, every method


@pytest.fixture(scope="module")
def class_stats(tmp_path_factory) -> str:
    """Per-image source class pixel counts for IF/PF (what `gbw data prepare` writes)."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 500, (20, 19)) * (rng.random((20, 19)) < 0.6)
    path = tmp_path_factory.mktemp("stats") / "class_stats.npy"
    np.save(path, counts)
    return str(path)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("method", sorted(TERMS))
def test_every_weighting_works_in_every_method(method, weighting, class_stats):
    torch.manual_seed(0)
    exp = tiny_config(method, f"weighting.name={weighting}", f"weighting.class_stats={class_stats}")
    m = build_method(exp)
    opts = m.configure_optimizers()
    source, target = random_batches()
    before = [p.detach().clone() for p in m.model.parameters()]
    logs = m.training_step(source, target, plain_step(0, opts))
    assert set(logs) - {"diag.pseudo_weight"} == LOSSES[method]
    assert all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.parameters()))
    assert set(m.weightings) == TERMS[method]
    assert {type(w).__name__ for w in m.weightings.values()} == {
        {
            "none": "NoWeighting",
            "gbw": "GBW",
            "gbw_authors": "GBW",
            "lbw": "LossBasedWeighting",
            "if": "InverseFrequency",
            "pf": "InverseFrequency",
            "focal": "Focal",
        }[weighting]
    }


# ---------------------------------------------------------- the references' losses and rules


def test_self_information_and_entropy_match_advent():
    """ADVENT's prob_2_entropy and entropy_loss (advent/utils/func.py, utils/loss.py)."""
    logits = torch.randn(2, 19, 6, 7, dtype=torch.float64) * 3
    p = logits.softmax(1)
    ref_maps = -p * torch.log2(p + 1e-30) / math.log2(19)
    assert torch.allclose(self_information(logits).double(), ref_maps, atol=1e-6)
    ref_loss = -(p * torch.log2(p + 1e-30)).sum() / (2 * 6 * 7 * math.log2(19))
    m = build_method(tiny_config("minent"))
    ours = m.weighting("trg_ent").entropy(logits, normalize=True)
    assert torch.allclose(ours.double(), ref_loss, atol=1e-7)


def test_advent_weights_the_entropy_channels_of_both_domains_alike(monkeypatch):
    """The target entropy's class weights v multiply the channels the discriminator sees, for
    the target maps (generator step) and the source maps (discriminator step) alike."""
    torch.manual_seed(0)
    m = build_method(tiny_config("advent", "weighting.name=gbw"))
    opts = m.configure_optimizers()
    v = torch.linspace(0.5, 1.5, 19)
    monkeypatch.setattr(
        type(m.weighting("trg_ent")), "entropy_weights", lambda self, z, m=None, **kw: v
    )
    seen: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    hooks = [
        m.disc_main.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())),
        m.model.register_forward_hook(lambda mod, args, out: outputs.append(out["main"].detach())),
    ]
    source, target = random_batches()
    m.training_step(source, target, plain_step(0, opts))
    for hook in hooks:
        hook.remove()
    # discriminator inputs: adversarial (target), then its own step on source and on target
    src_logits, trg_logits = (resize_to(z, (32, 32), align_corners=True) for z in outputs)
    expected = [self_information(z) * v.view(1, -1, 1, 1) for z in (trg_logits, src_logits)]
    assert len(seen) == 3
    for got, want in zip(seen, [expected[0], expected[1], expected[0]]):
        assert torch.allclose(got, want, atol=1e-6)


def test_discriminators_get_no_gradient_from_the_adversarial_loss():
    """Step 2 trains only the segmentation network (ADVENT/AdaptSegNet freeze D), step 3 only
    the discriminators; all networks step once, at the end."""
    torch.manual_seed(0)
    m = build_method(tiny_config("advent"))
    opts = m.configure_optimizers()
    discs = [m.disc_main, m.disc_aux]
    seg_head = m.model.decode_head.classifier.weight
    snapshots: list[tuple[bool, torch.Tensor | None]] = []

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        d_has_grad = any(p.grad is not None for d in discs for p in d.parameters())
        g = None if seg_head.grad is None else seg_head.grad.clone()
        snapshots.append((d_has_grad, g))

    source, target = random_batches()
    m.training_step(source, target, Step(0, backward, opts, 10))
    # 1 source + 1 adversarial + 2 x 2 discriminator backward calls
    assert len(snapshots) == 6
    (d1, g1), (d2, g2), (d3, g3) = snapshots[:3]
    assert not d1 and not d2 and d3  # D untouched until its own step
    assert g1 is not None and not torch.equal(g1, g2)  # the adversarial loss reaches G
    assert torch.equal(g2, g3)  # and the discriminator step does not
    assert all(p.requires_grad for d in discs for p in d.parameters())  # unfrozen again


def test_multi_level_needs_an_aux_head_and_vice_versa():
    source, target = random_batches()
    m = build_method(tiny_config("advent", *tinyseg(aux=False)))
    with pytest.raises(ValueError, match=r"model.kwargs.aux=true"):
        m.training_step(source, target, plain_step(0, m.configure_optimizers()))
    m = build_method(tiny_config("minent", "uda.multi_level=false"))
    with pytest.raises(ValueError, match=r"model.kwargs.aux=false"):
        m.training_step(source, target, plain_step(0, m.configure_optimizers()))
    m = build_method(tiny_config("adaptsegnet", "uda.multi_level=false", *tinyseg(aux=False)))
    assert set(m.configure_optimizers()) == {"model", "disc_main"}
    logs = m.training_step(source, target, plain_step(0, m.configure_optimizers()))
    assert set(logs) == {"src.ce", "adv_trg.main", "disc.src", "disc.trg"}


def test_least_squares_gan_option():
    m = build_method(tiny_config("adaptsegnet", "uda.gan=ls"))
    source, target = random_batches()
    logs = m.training_step(source, target, plain_step(0, m.configure_optimizers()))
    assert all(torch.isfinite(v) for v in logs.values())
    with pytest.raises(ValueError, match=r"uda\.gan"):
        build_method(tiny_config("adaptsegnet", "uda.gan=wgan"))


# ------------------------------------------- recipe defaults = the reference code, tiny cases


def _outputs_of(module: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    outputs: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda mod, args, out: outputs.append(out["main"]))
    return outputs, hook


def _up(logits: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=align_corners)


@pytest.mark.parametrize("method", ["source_only", "advent", "dacs"])
def test_source_ce_is_the_labelled_mean_of_align_corners_logits(method):
    """DACS/ADVENT/AdaptSegNet: ``interp = nn.Upsample(..., align_corners=True)`` then a CE
    averaged over the labelled pixels (``CrossEntropy2d`` / ``cross_entropy_2d``): exactly
    ``F.cross_entropy(ignore_index=255)`` of the align-corners upsampled logits."""
    torch.manual_seed(0)
    m = build_method(tiny_config(method))
    assert m.cfg.align_corners is True
    outputs, hook = _outputs_of(m.model)
    source, target = random_batches()
    source["label"][:, :, :10] = 255  # a third of the pixels ignored: the means differ
    logs = m.training_step(source, target, plain_step(0, m.configure_optimizers()))
    hook.remove()
    logits = outputs[0].detach()
    expected = F.cross_entropy(_up(logits, True), source["label"], ignore_index=255)
    torch.testing.assert_close(logs["src.ce"], expected)
    # what it is not: the all-pixel mean, or align_corners=False
    per_pixel = F.cross_entropy(
        _up(logits, True), source["label"], ignore_index=255, reduction="none"
    )
    assert not torch.isclose(logs["src.ce"], per_pixel.mean())
    no_corners = F.cross_entropy(_up(logits, False), source["label"], ignore_index=255)
    assert not torch.isclose(logs["src.ce"], no_corners)
    # the alternatives by name
    m = build_method(tiny_config(method, "uda.align_corners=false", _reduction_key(method)))
    outputs, hook = _outputs_of(m.model)
    logs = m.training_step(source, target, plain_step(0, m.configure_optimizers()))
    hook.remove()
    per_pixel = F.cross_entropy(
        _up(outputs[0].detach(), False), source["label"], ignore_index=255, reduction="none"
    )
    torch.testing.assert_close(logs["src.ce"], per_pixel.mean())


def _reduction_key(method: str) -> str:
    key = "src_ce_reduction" if method == "dacs" else "ce_reduction"
    return f"uda.{key}=all_pixel_mean"


def test_dacs_mixed_loss_is_the_all_pixel_mean_of_the_weighted_ce():
    """DACS ``CrossEntropyLoss2dPixelWiseWeighted``: ``torch.mean(CE * pixelWiseWeight)`` over
    all pixels of the mixed batch, ignored (pasted ignore-label) pixels as zeros."""
    source, target = random_batches()
    for seed in range(10):  # a run whose ClassMix pastes the ignore label
        torch.manual_seed(seed)
        m = build_method(tiny_config("dacs", f"seed={seed}"))
        outputs, hook = _outputs_of(m.model)
        mixed: list[tuple] = []
        original = m.mixed_batch

        def capture(*args, original=original, mixed=mixed, **kwargs):
            mixed.append(original(*args, **kwargs))
            return mixed[-1]

        m.mixed_batch = capture
        logs = m.training_step(source, target, plain_step(0, m.configure_optimizers()))
        hook.remove()
        _, label, weight = mixed[0]
        if (label == 255).any():
            break
    assert (label == 255).any()
    ce = F.cross_entropy(_up(outputs[1].detach(), True), label, ignore_index=255, reduction="none")
    torch.testing.assert_close(logs["mix.ce"], (ce * weight).mean())
    assert not torch.isclose(logs["mix.ce"], (ce * weight).sum() / (label != 255).sum())


def test_dacs_teacher_first_update_copies_the_student_and_uses_batch_statistics():
    """DACS ``update_ema_variables(iteration=i_iter)`` after step 0: alpha = 0, a copy; its
    teacher stays in train mode (``ema_model.train()``), so TinySeg's BatchNorm normalises with
    the target batch's statistics. DAFormer's schedule (``half``) and gbw's eval-mode teacher
    (``ema``) by name."""
    import copy

    torch.manual_seed(2)
    m = build_method(tiny_config("dacs"))
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(torch.randn_like(p))
    step = plain_step(0, {})
    m.after_optimizer_step(step)
    assert all(torch.equal(t, s) for t, s in zip(m.teacher.model.parameters(), m.net.parameters()))
    x = torch.rand(2, 3, 32, 32)
    in_train_mode = copy.deepcopy(m.net).train()
    with torch.no_grad():
        torch.testing.assert_close(m.teacher(x)["main"], in_train_mode(x)["main"])
        in_eval_mode = copy.deepcopy(m.net).eval()
        assert not torch.allclose(m.teacher(x)["main"], in_eval_mode(x)["main"])

    half = build_method(tiny_config("dacs", "uda.ema_first_update=half", "uda.teacher_bn=ema"))
    start = [p.detach().clone() for p in half.teacher.model.parameters()]
    with torch.no_grad():
        for p in half.net.parameters():
            p.add_(torch.randn_like(p))
    half.after_optimizer_step(step)
    for t, s, o in zip(half.teacher.model.parameters(), half.net.parameters(), start):
        torch.testing.assert_close(t, 0.5 * o + 0.5 * s)
    with torch.no_grad():
        running = copy.deepcopy(half.teacher.model).eval()
        torch.testing.assert_close(half.teacher(x)["main"], running(x)["main"])


def test_dacs_class_mix_draws_the_ignore_label_like_a_class():
    """DACS trainUDA.py: ``torch.unique(labels[image_i])`` with the ignore filter commented
    out. A source image of class 3 and ignored pixels has 2 candidates: one is pasted, so in
    about half the draws it is the ignore region and not class 3; the paper's choice
    (``mix_count_ignore=false``) always pastes class 3."""
    source = {"image": torch.ones(2, 3, 32, 32), "label": torch.full((2, 32, 32), 3)}
    source["label"][:, :16] = 255
    target = {"image": torch.zeros(2, 3, 32, 32)}
    no_aug = ("uda.color_jitter_p_skip=1.0", "uda.blur=false")
    pasted = {}
    for count in ("true", "false"):
        m = build_method(tiny_config("dacs", f"uda.mix_count_ignore={count}", *no_aug))
        ignore_pasted = 0
        for seed in range(20):
            image, _, _ = m.mixed_batch(source, target, torch.Generator().manual_seed(seed))
            top, bottom = image[:, 0, :16], image[:, 0, 16:]  # 1 where the source was pasted
            assert torch.equal(top.amax((1, 2)) + bottom.amax((1, 2)), torch.ones(2))
            ignore_pasted += int(top.amax((1, 2)).sum())
        pasted[count] = ignore_pasted / 40
    assert 0.25 < pasted["true"] < 0.75 and pasted["false"] == 0.0


def test_dacs_jitters_the_mixed_images_in_bgr_order():
    """DACS hands kornia its BGR network input (transformsgpu.colorJitter): the mixed batch
    is ClassMix, then the jitter on BGR channels, then the blur, from one generator."""
    from gbw.uda.blocks import class_mix_masks, mix, strong_augment

    torch.manual_seed(3)
    m = build_method(tiny_config("dacs", "uda.color_jitter_p_skip=0.0"))
    assert m.cfg.color_jitter_channels == "bgr"
    source, target = random_batches()
    pseudo = m.pseudo_label(target["image"])
    image, _, _ = m.mixed_batch(source, target, torch.Generator().manual_seed(4), pseudo)
    g = torch.Generator().manual_seed(4)
    masks = class_mix_masks(source["label"], g, count_ignore=True)
    mixed = mix(masks, source["image"], target["image"])
    by_hand = strong_augment(mixed, g, jitter_strength=0.25, channels="bgr")
    torch.testing.assert_close(image, by_hand)
    rgb = build_method(
        tiny_config("dacs", "uda.color_jitter_p_skip=0.0", "uda.color_jitter_channels=rgb")
    )
    other, _, _ = rgb.mixed_batch(source, target, torch.Generator().manual_seed(4), pseudo)
    assert not torch.allclose(other, image)


@pytest.mark.parametrize("config", ["advent/gta2cs.yaml", "daformer/gta2cs.yaml"])
def test_evaluation_upsamples_logits_as_the_reference(config):
    """ADVENT eval_UDA.py, AdaptSegNet evaluate_cityscapes.py, DACS evaluateUDA.py:
    ``nn.Upsample(..., align_corners=True)`` of the logits to the label size; mmseg
    (DAFormer): ``align_corners=False``."""
    from gbw.engine.evaluate import predict_logits

    cfg = load_config(ROOT / "configs" / config).eval
    assert cfg.align_corners is config.startswith("advent")
    logits = torch.randn(1, 19, 8, 16)
    seen: list[tuple[int, ...]] = []

    def model(x: torch.Tensor) -> dict:
        seen.append(tuple(x.shape[-2:]))
        return {"main": logits}

    out = predict_logits(model, torch.rand(1, 3, 64, 128), cfg, 19, out_size=(64, 128))
    assert seen == [(512, 1024)]  # the network sees Cityscapes at 1024x512
    up = F.interpolate(logits, size=(64, 128), mode="bilinear", align_corners=cfg.align_corners)
    torch.testing.assert_close(out, up)
    other = F.interpolate(
        logits, size=(64, 128), mode="bilinear", align_corners=not cfg.align_corners
    )
    assert not torch.allclose(out, other)


def test_recipe_option_values_are_checked():
    for bad in (
        "uda.teacher_bn=train",
        "uda.ema_first_update=zero",
        "uda.color_jitter_channels=rbg",
        "uda.src_ce_reduction=avg",
        "uda.mix_ce_reduction=sum",
    ):
        with pytest.raises(ValueError, match=bad.split("=")[0].replace(".", r"\.")):
            build_method(tiny_config("dacs", bad))
    with pytest.raises(ValueError, match=r"uda\.ce_reduction must be one of"):
        build_method(tiny_config("advent", "uda.ce_reduction=weighted_mean"))
    # the older name of the labelled mean still loads (configs saved in run folders)
    assert build_method(tiny_config("minent", "uda.ce_reduction=valid_mean")).cfg.ce_reduction == (
        "labelled_mean"
    )


# ------------------------------------------------------------------------------ overfitting


def overfit_batch(size: int = 32) -> tuple[dict, dict]:
    """Blocky labels of 5 classes; each class has its own colour (plus noise) in the image."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, 5, (2, 1, size // 8, size // 8), generator=g)
    label = F.interpolate(coarse.float(), scale_factor=8, mode="nearest")[:, 0].long() * 4
    palette = torch.rand(19, 3, generator=g)
    image = palette[label].permute(0, 3, 1, 2) + 0.1 * torch.rand(2, 3, size, size, generator=g)
    return {"image": image.clamp(0, 1), "label": label}, {"image": torch.rand(2, 3, size, size)}


@pytest.mark.parametrize("method", ["source_only", "advent"])
def test_overfits_one_batch(method):
    torch.manual_seed(0)
    m = build_method(tiny_config(method, "weighting.name=gbw", "optim.lr=0.03"))
    opts = m.configure_optimizers()
    source, target = overfit_batch()
    losses = []
    for i in range(60):
        logs = m.training_step(source, target, plain_step(i, opts))
        losses.append(float(logs["src.ce"]))
    # accuracy with batch statistics, as in training: the running BN statistics also saw the
    # random target images (AdvEnt), so eval mode would measure the domain gap, not learning
    with torch.no_grad():
        logits = F.interpolate(m.model(source["image"])["main"], size=(32, 32), mode="bilinear")
    accuracy = float((logits.argmax(1) == source["label"]).float().mean())
    assert losses[-1] < losses[0] / 10, losses[::10]
    assert accuracy > 0.9


@pytest.mark.parametrize("method", sorted(TERMS))
def test_bf16_mixed_precision_step(method):
    """The engine's bf16 autocast (Fabric "bf16-mixed", here on the CPU) through every method:
    the steps run and their losses stay finite."""
    from gbw.bench.step import bench_step

    exp = tiny_config(method, "weighting.name=gbw", "train.precision=bf16-mixed")
    t = bench_step(exp, iters=1, warmup=1, size=(32, 32), accelerator="cpu")
    assert t.precision == "bf16-mixed"
    assert set(t.losses) - {"diag.pseudo_weight"} == LOSSES[method]
    assert all(math.isfinite(v) for v in t.losses.values())


# -------------------------------------------------------------------------------- gbw bench


def test_bench_step_cli_runs_a_real_recipe_on_the_cpu(tmp_path):
    """``gbw bench step`` builds the real DeepLabV2 AdvEnt recipe (random weights), tiny input."""
    from gbw.cli import main

    out, js = tmp_path / "bench.md", tmp_path / "bench.json"
    argv = ["bench", "step", str(ROOT / "configs/advent/gta2cs.yaml"), "--size", "33,41"]
    argv += ["--iters", "1", "--warmup", "0", "--weightings", "gbw", "--device", "cpu"]
    assert main([*argv, "--out", str(out), "--json", str(js)]) == 0
    (row,) = json.loads(js.read_text())
    assert row["method"] == "advent" and row["weighting"] == "gbw" and row["batch"] == 1
    assert row["source_hw"] == [33, 41] and row["target_hw"] == [33, 41]
    assert row["seconds"] > 0 and row["max_iters"] == 120_000 and row["peak_gib"] is None
    assert set(row["losses"]) == LOSSES["advent"]
    assert all(math.isfinite(v) for v in row["losses"].values())
    table = out.read_text()
    assert "advent/gta2cs.yaml | eager + deterministic | gbw | 1 | 41x33 / 41x33 |" in table
    assert "torch " in table


def test_bench_step_with_and_without_gbw(tmp_path):
    """Both weightings in one process; GBW's share of the step in the table."""
    from gbw.bench.step import bench_step, gbw_share, markdown

    deterministic = torch.are_deterministic_algorithms_enabled()
    timings = [
        bench_step(tiny_config("minent", f"weighting.name={w}"), iters=2, warmup=1, size=(32, 48))
        for w in ("none", "gbw")
    ]
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # restored
    assert [t.weighting for t in timings] == ["none", "gbw"]
    assert all(t.source_hw == (32, 48) and t.seconds > 0 for t in timings)
    assert all(math.isfinite(v) for t in timings for v in t.losses.values())
    (share,) = gbw_share(timings).values()
    assert share == pytest.approx(1 - timings[0].seconds / timings[1].seconds)
    table = markdown(timings)
    assert "| experiment | eager + deterministic | none | 2 | 48x32 / 48x32 |" in table
    assert table.splitlines()[-1].endswith(f"| {100 * share:+.1f} % |")


def test_bench_step_sizes_come_from_the_recipe():
    from gbw.bench.step import input_hw

    exp = load_config(ROOT / "configs/advent/gta2cs.yaml")
    assert input_hw(exp.data.source, None) == (720, 1280)
    assert input_hw(exp.data.target, None) == (512, 1024)
    exp = load_config(ROOT / "configs/dacs/synthia2cs.yaml")
    assert input_hw(exp.data.source, None) == input_hw(exp.data.target, None) == (512, 512)
    assert input_hw(exp.data.source, (64, 32)) == (64, 32)


# ------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_ddp_advent(minicity_root, tmp_path, train_two_processes):
    """AdvEnt with two discriminators under DDP (2 CPU processes, gloo): the frozen
    discriminators in the generator's step must not stall DDP's gradient reduction."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text("method: advent\n")
    overrides = [
        f"out_dir={tmp_path}",
        "name=ddp",
        *tiny_network("advent"),
        "data.minicity_size=quick",
        "data.batch_size=1",
        "data.num_workers=0",
        *[f"data.{s}.root={minicity_root}" for s in ("source", "target", "val")],
        "train.max_iters=3",
        "train.log_every=1",
        "eval.subset=2",
        "weighting.name=gbw",
    ]
    train_two_processes(cfg, overrides)
    assert json.loads((tmp_path / "ddp" / "meta.json").read_text())["world_size"] == 2
    rows = (tmp_path / "ddp" / "scalars.csv").read_text()
    assert rows.count(",loss/disc.trg,") == 3 and ",trg_ent/weight/road," in rows
