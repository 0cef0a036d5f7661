"""configs/minicity/: the four MiniCity v2 experiments (source-only and DACS-style
self-training, each without and with GBW) carry the network and per-run budget of
docs/minicity.md, build their method, and are the configs the demo trains."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_recipe_configs_deeplab import _flat, _get

from gbw.config import load_config, to_dict
from gbw.demo import WEIGHTINGS, demo_config, minicity_config
from gbw.engine.trainer import build_method
from gbw.models.tiny import TinySeg

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "minicity"
FILES = ("source_only", "source_only_gbw", "self_training", "self_training_gbw")

# The per-run setup of docs/minicity.md ("Network and per-run budget"), shared by the demo
# and the study; a change here must be a change of the documented budget too.
COMMON = {
    "model.name": "tinyseg",
    "model.num_classes": 19,
    "model.pretrained": "",
    "data.source.name": "minicity",
    "data.source.split": "source_train",
    "data.target.split": "target_train",
    "data.val.split": "target_val",
    "data.minicity_size": "default",
    "data.batch_size": 8,
    "data.num_workers": 0,
    "data.in_memory": True,
    "data.source.crop": None,
    "data.source.rcs": False,
    "optim.name": "adamw",
    "optim.lr": 0.005,
    "optim.weight_decay": 0.0001,
    "optim.head_lr_mult": 1.0,
    "optim.schedule": "poly",
    "optim.power": 0.9,
    "optim.warmup_iters": 0,
    "train.accelerator": "cpu",
    "eval.classes": "dataset",
}
BUDGET = {"source_only": 1000, "self_training": 600}  # train.max_iters
METHOD = {"source_only": "source_only", "self_training": "dacs"}
# DACS's own values (vikolss/DACS configUDA.json), as in configs/dacs/gta2cs.yaml
DACS = {
    "ema_alpha": 0.99,
    "pseudo_threshold": 0.968,
    "pseudo_weighting": "fraction",
    "mix_per_image": True,
    "color_jitter_strength": 0.25,
    "blur": True,
    "mix_loss_weight": 1.0,
    # the choices MiniCity was calibrated with (docs/minicity.md; docs/recipe_options.md)
    "src_ce_reduction": "all_pixel_mean",
    "mix_ce_reduction": "all_pixel_mean",
    "align_corners": False,
    "teacher_bn": "ema",
    "ema_first_update": "half",
    "mix_count_ignore": False,
    "color_jitter_channels": "rgb",
}
SOURCE_ONLY = {"ce_reduction": "all_pixel_mean", "align_corners": False}


def test_the_four_configs_exist() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(FILES)


@pytest.mark.parametrize("stem", FILES)
def test_config_carries_the_documented_network_and_budget(stem: str) -> None:
    setting = stem.removesuffix("_gbw")
    exp = load_config(CONFIGS / f"{stem}.yaml")
    assert exp.method == METHOD[setting]
    for key, value in COMMON.items():
        assert _get(exp, key) == value, key
    assert exp.train.max_iters == BUDGET[setting]
    assert exp.name == f"minicity_{stem}"
    expected = DACS if setting == "self_training" else SOURCE_ONLY
    for key, value in expected.items():
        assert exp.uda[key] == value, key
    method = build_method(exp)
    assert isinstance(method.model, TinySeg)
    assert sum(p.numel() for p in method.model.parameters()) == 322_203


@pytest.mark.parametrize("setting", ["source_only", "self_training"])
def test_gbw_configs_differ_from_their_base_only_in_the_weighting(setting: str) -> None:
    base = _flat(to_dict(load_config(CONFIGS / f"{setting}.yaml")))
    gbw = _flat(to_dict(load_config(CONFIGS / f"{setting}_gbw.yaml")))
    differ = {k for k in gbw if gbw[k] != base[k]}
    assert differ == {"name", "weighting.name"}, differ
    assert base["weighting.name"] == "none" and gbw["weighting.name"] == "gbw"
    # the paper's GBW: per-class signal, Eq. 12, lambda 1, no scaling of g
    assert gbw["weighting.variant"] == "class" and gbw["weighting.scale"] == "none"
    assert gbw["weighting.lam"] == 1.0 and gbw["weighting.use_pixel_weight"]


@pytest.mark.parametrize("setting", ["source_only", "self_training"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_the_demo_trains_these_configs(setting: str, weighting: str) -> None:
    args = argparse.Namespace(
        quick=False, iters=0, data_root=None, lam=1.0, variant="class", scale="none"
    )
    demo = _flat(to_dict(demo_config(setting, weighting, 3, args)))
    path = minicity_config(setting, weighting)
    assert path == CONFIGS / f"{setting}{'_gbw' if weighting == 'gbw' else ''}.yaml"
    config = _flat(to_dict(load_config(path)))
    differ = {k for k in demo if demo[k] != config[k]}
    assert differ <= {"name", "seed", "train.progress"}, differ  # one definition of the budget
    assert demo["seed"] == 3 and demo["train.max_iters"] == BUDGET[setting]
    quick = _flat(
        to_dict(
            demo_config(setting, weighting, 3, argparse.Namespace(**{**vars(args), "quick": True}))
        )
    )
    assert quick["data.minicity_size"] == "quick" and quick["train.max_iters"] < 20
