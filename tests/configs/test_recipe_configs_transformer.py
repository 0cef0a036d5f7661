"""Every DAFormer / HRDA / MIC recipe YAML (configs/{daformer,hrda,mic}) loads, builds its
method settings, and carries the numbers of shared/design/RECIPES.md ("DAFormer family"),
transcribed below with the reference file each extra number was read from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gbw.config import ExperimentConfig, load_config, method_config
from gbw.engine.stepper import lr_factor
from gbw.uda.registry import method_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAMILY = ("daformer", "hrda", "mic")
YAMLS = sorted(p for m in FAMILY for p in (CONFIGS / m).glob("**/*.yaml"))

# RECIPES.md: "AdamW lr 6e-5 (head x10), wd 0.01, linear warm-up 1500 iters then poly power 1;
# 40k iterations; batch 2 source + 2 target"; "Self-training: EMA alpha 0.999, threshold
# 0.968, same pixel weighting as DACS; ... ClassMix; colour jitter strength 0.2 at p 0.2, blur";
# "Rare-class sampling: temperature 0.01, min_pixels 3000, min crop ratio 0.5 (HRDA 2.0)";
# "ImageNet feature distance: weight 0.005, thing classes only (6,7,11-18), scale_min_ratio
# 0.75"; evaluation "DAFormer: input 1024x512 whole image". Warm-up ratio 1e-6 and min_lr 0:
# DAFormer configs/_base_/schedules/poly10warm.py; betas: configs/_base_/schedules/adamw.py.
DAFORMER: dict[str, Any] = {
    "model.name": "daformer_mitb5",
    "model.num_classes": 19,
    "model.pretrained": "pretrained/mit_b5.pth",
    "optim.name": "adamw",
    "optim.lr": 6e-5,
    "optim.head_lr_mult": 10.0,
    "optim.weight_decay": 0.01,
    "optim.betas": [0.9, 0.999],
    "optim.schedule": "poly",
    "optim.power": 1.0,
    "optim.min_lr": 0.0,
    "optim.warmup_iters": 1500,
    "optim.warmup_ratio": 1e-6,
    "optim.schedule_iters": 0,  # = train.max_iters
    "train.max_iters": 40_000,
    "data.batch_size": 2,
    "data.source.crop": [512, 512],
    "data.source.cat_max_ratio": 0.75,
    "data.source.rcs": True,
    "data.source.rcs_temperature": 0.01,
    "data.source.rcs_min_pixels": 3000,
    "data.source.rcs_min_crop_ratio": 0.5,
    "data.target.name": "cityscapes",
    "data.target.split": "train",
    "data.target.resize": [1024, 512],
    "data.target.crop": [512, 512],
    "data.target.rcs": False,
    "data.target.pseudo_margins": None,
    "data.val.name": "cityscapes",
    "data.val.split": "val",
    "eval.mode": "whole",
    "eval.resize": [1024, 512],
    "uda.ema_alpha": 0.999,
    "uda.pseudo_threshold": 0.968,
    "uda.pseudo_weighting": "fraction",
    "uda.pseudo_margins": [15, 120, 0, 0],  # "top 15 / bottom 120 rows"
    "uda.mix_per_image": False,  # DAFormer get_class_masks: classes of the whole batch
    "uda.color_jitter_strength": 0.2,
    "uda.color_jitter_p_skip": 0.2,
    "uda.blur": True,
    "uda.mix_loss_weight": 1.0,
    "uda.fd_lambda": 0.005,
    "uda.fd_classes": [6, 7, 11, 12, 13, 14, 15, 16, 17, 18],
    "uda.fd_scale_min_ratio": 0.75,
    # lhoyer/DAFormer mmseg/models/uda/dacs.py: _init_ema_weights at iteration 0 and
    # _update_ema(local_iter) later (alpha 1/2 after step 0); the EMA model in train mode with
    # _DropoutNd/DropPath off (BN on batch statistics); get_class_masks' torch.unique counts the
    # ignore label; RGB images (img_norm_cfg to_rgb=True); mmseg/models/losses/
    # cross_entropy_loss.py: the mean over all pixels; decode heads resize with
    # align_corners=False; mmcv's keep-ratio Resize
    "uda.ema_first_update": "half",
    "uda.teacher_bn": "batch",
    "uda.mix_count_ignore": True,
    "uda.color_jitter_channels": "rgb",
    "uda.src_ce_reduction": "all_pixel_mean",
    "uda.mix_ce_reduction": "all_pixel_mean",
    "uda.align_corners": False,
    "eval.align_corners": False,
    "data.source.keep_ratio": True,
    "data.target.keep_ratio": True,
}
# RECIPES.md: "HRDA: source resized to 2560x1440 (GTA) or 2560x1520 (SYNTHIA), CS 2048x1024;
# context crop 1024x1024 downscaled x0.5, detail crop 512x512 at full resolution; learned
# class-wise scale attention; detail loss weight 0.1; sliding-window pseudo-labels";
# "(HRDA/MIC: margins 30,240,30,30)"; "HRDA, MIC: full 2048x1024, sliding window 1024x1024,
# stride 512"; RCS "(HRDA 2.0)". crop_coord_divisible=8, attention_embed_dim 256:
# lhoyer/HRDA configs/hrda/gtaHR2csHR_hrda.py and mmseg/models/decode_heads/hrda_head.py.
HRDA: dict[str, Any] = {
    **DAFORMER,
    "model.name": "hrda_daformer_mitb5",
    "model.kwargs.context_scale": 0.5,
    "model.kwargs.detail_crop": [512, 512],
    "model.kwargs.crop_divisible": 8,
    "model.kwargs.detail_slide": True,
    "model.kwargs.attention_classwise": True,
    "model.kwargs.attention_embed_dim": 256,
    "data.source.crop": [1024, 1024],
    "data.source.rcs_min_crop_ratio": 2.0,
    "data.target.resize": [2048, 1024],
    "data.target.crop": [1024, 1024],
    "data.target.pseudo_margins": [30, 240, 30, 30],
    "uda.pseudo_margins": [0, 0, 0, 0],  # the loader's full-image margins replace them
    "uda.hr_loss_weight": 0.1,
    "uda.share_weights": False,  # own GBW weights per loss call, as the authors' code
    "eval.mode": "slide",
    "eval.resize": None,
    "eval.crop": [1024, 1024],
    "eval.stride": [512, 512],
}
# RECIPES.md: "MIC: block masking ratio 0.7, patch 64 (32 at half resolution), masked target
# images get their own colour augmentation, same teacher and threshold, loss weight 1".
MIC: dict[str, Any] = {
    **HRDA,
    "uda.base": "hrda",
    "uda.mask_block_size": 64,
    "uda.mask_ratio": 0.7,
    "uda.mask_lambda": 1.0,
    # masking_consistency_module.py: masked_loss['decode.loss_seg'] *= mask_lambda (the fused
    # part only); one strong_transform call on the masked batch (one jitter order, one sigma)
    "uda.mask_lambda_scope": "fused",
    "uda.mask_color_aug": True,
    "uda.mask_aug_per_image": False,
}
MIC_DAFORMER: dict[str, Any] = {
    **DAFORMER,
    "uda.base": "daformer",
    "uda.mask_block_size": 32,
    "uda.mask_ratio": 0.7,
    "uda.mask_lambda": 1.0,
    "uda.mask_lambda_scope": "fused",
    "uda.mask_color_aug": True,
    "uda.mask_aug_per_image": False,
}
# "GTA 1280x720 ... SYNTHIA 1280x760" (DAFormer), x2 for HRDA; SYNTHIA scored on 16 classes.
SOURCES = {
    "gta2cs": {"data.source.name": "gta", "eval.classes": "19"},
    "synthia2cs": {"data.source.name": "synthia", "eval.classes": "16"},
}
SOURCE_RESIZE = {
    ("daformer", "gta2cs"): [1280, 720],
    ("daformer", "synthia2cs"): [1280, 760],
    ("hrda", "gta2cs"): [2560, 1440],
    ("hrda", "synthia2cs"): [2560, 1520],
}
# Paper Table 5 (lambda ablation on HRDA + GBW, GTA -> Cityscapes) and Table 4b baselines.
LAMBDAS = (0.01, 0.1, 0.5, 1.0, 2.0, 10.0)
TABLE_4B = ("if", "pf", "lbw", "focal")

EXPECTED_FILES = {
    # Table 1: _gbw follows the paper's equations, _gbw_authors the authors' public code
    *(f"{m}/{s}{g}.yaml" for m in FAMILY for s in SOURCES for g in ("", "_gbw", "_gbw_authors")),
    "daformer/gta2cs_norcs.yaml",  # Table 4a: none / GBW / sampling / both
    "daformer/gta2cs_norcs_gbw.yaml",
    *(f"hrda/gta2cs_{b}.yaml" for b in TABLE_4B),
    *(f"hrda/lambda/gta2cs_gbw_lam{lam:g}.yaml" for lam in LAMBDAS),
    "mic/gta2cs_daformer.yaml",
    "mic/gta2cs_daformer_gbw.yaml",
}


def get(cfg: ExperimentConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        # model.kwargs and uda are plain dicts; a missing key reads as a sentinel
        value = value.get(part, "<missing>") if isinstance(value, dict) else getattr(value, part)
    return value


def expected_for(path: Path) -> dict[str, Any]:
    rel = path.relative_to(CONFIGS).as_posix()
    family = rel.split("/")[0]
    stem = path.stem
    source = "synthia2cs" if stem.startswith("synthia2cs") else "gta2cs"
    table = {"daformer": DAFORMER, "hrda": HRDA, "mic": MIC}[family]
    if family == "mic" and "daformer" in stem:
        table = MIC_DAFORMER
    out = {**table, **SOURCES[source], "method": family}
    arch = "daformer" if table in (DAFORMER, MIC_DAFORMER) else "hrda"
    out["data.source.resize"] = SOURCE_RESIZE[(arch, source)]
    out["weighting.name"] = "gbw" if "_gbw" in stem else "none"
    out["weighting.lam"] = 1.0
    if stem.endswith("_gbw_authors"):
        out |= {
            "weighting.name": "gbw_authors",
            "weighting.variant": "channel",
            "weighting.count_offset": 1.0,
            "weighting.use_pixel_weight": False,
        }
    if "norcs" in stem:
        out["data.source.rcs"] = False
    for b in TABLE_4B:
        if stem == f"gta2cs_{b}":
            out["weighting.name"] = b
    if "_lam" in stem:
        out["weighting.lam"] = float(stem.split("_lam")[1])
    return out


def test_every_recipe_file_exists():
    found = {p.relative_to(CONFIGS).as_posix() for p in YAMLS}
    assert found == EXPECTED_FILES, (sorted(EXPECTED_FILES - found), sorted(found - EXPECTED_FILES))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_config_matches_recipe_table(path: Path):
    cfg = load_config(path)
    # the method's own dataclass accepts the uda settings (unknown keys would raise)
    method_config(method_class(cfg.method).Config, cfg.uda, cfg.method)
    for key, value in expected_for(path).items():
        got = get(cfg, key)
        if isinstance(value, float):
            assert got == pytest.approx(value), (key, got, value)
        else:
            assert got == value, (key, got, value)
    assert cfg.name == f"{path.parent.name if path.parent.name != 'lambda' else 'hrda'}_{path.stem}"


def test_learning_rate_schedule_is_daformers():
    """Linear warm-up from 1e-6 of the lr over 1500 iterations, then poly with power 1 to 0."""
    cfg = load_config(CONFIGS / "daformer" / "gta2cs.yaml")
    assert lr_factor(cfg, 0) == pytest.approx(1e-6)
    assert lr_factor(cfg, 750) == pytest.approx((1 - 750 / 40_000) * (0.5 + 0.5e-6))
    assert lr_factor(cfg, 1500) == pytest.approx(1 - 1500 / 40_000)
    assert lr_factor(cfg, 20_000) == pytest.approx(0.5)
    assert lr_factor(cfg, 40_000) == 0.0


def test_gbw_settings_are_the_papers():
    cfg = load_config(CONFIGS / "hrda" / "gta2cs_gbw.yaml")
    w = cfg.weighting
    assert (w.name, w.lam, w.variant, w.scale, w.terms) == ("gbw", 1.0, "class", "none", [])


@pytest.mark.parametrize("family", ["advent", "adaptsegnet", "dacs", *FAMILY])
def test_gbw_authors_configs_build_the_authors_gbw(family):
    """Every Table 1 recipe's ``_gbw_authors`` file builds ``GBW.authors`` for every term."""
    from gbw.engine.trainer import weighting_factory
    from gbw.weighting import GBW

    for source in SOURCES:
        cfg = load_config(CONFIGS / family / f"{source}_gbw_authors.yaml")
        strategy = weighting_factory(cfg)("src")
        assert isinstance(strategy, GBW)
        assert (strategy.variant, strategy.count_offset, strategy.use_pixel_weight) == (
            "channel",
            1,
            False,
        )
        assert (strategy.lam, strategy.scale) == (1.0, "none")
