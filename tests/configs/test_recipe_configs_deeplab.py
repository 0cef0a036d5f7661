"""Every DeepLabV2-era recipe YAML (configs/{source_only,advent,minent,adaptsegnet,dacs}) loads
and carries the numbers of RECIPES.md (transcribed in ``recipes.py`` beside this file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from recipes import DEEPLAB_COMMON, RECIPES, SOURCE_SIZE, TABLE_1, TABLE_4B, TARGET_SIZE

from gbw.config import ExperimentConfig, load_config, method_config, to_dict
from gbw.engine.stepper import lr_factor
from gbw.engine.trainer import build_method
from gbw.uda.registry import method_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SOURCES = {"gta2cs": "gta", "synthia2cs": "synthia"}
YAMLS = sorted(p for m in RECIPES for p in (CONFIGS / m).glob("*.yaml"))


def _get(cfg: ExperimentConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs" and k != "uda":
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a, b) -> bool:
    return a == pytest.approx(b) if isinstance(b, float) else a == b


def _source_tag(path: Path) -> str:
    return path.stem.split("_")[0]


def test_every_recipe_has_its_files():
    expected = {
        CONFIGS / m / f"{tag}{suffix}.yaml"
        for m in RECIPES
        for tag in SOURCES
        for suffix in ("", "_gbw")
    } | {CONFIGS / "dacs" / f"gta2cs_{b}.yaml" for b in TABLE_4B}
    expected |= {CONFIGS / m / f"{tag}_gbw_authors.yaml" for m in TABLE_1 for tag in SOURCES}
    assert expected <= set(YAMLS), sorted(map(str, expected - set(YAMLS)))
    assert len(YAMLS) == len(expected), sorted(map(str, set(YAMLS) - expected))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_matches_recipe_table(path: Path):
    method = path.parent.name
    recipe = RECIPES[method]
    source = SOURCES[_source_tag(path)]
    exp = load_config(path)
    assert exp.method == method
    for key, value in DEEPLAB_COMMON.items():
        assert _same(_get(exp, key), value), key
    # data: batch, sizes, crops, no flip (none of the three references flips)
    assert exp.data.batch_size == recipe["batch"]
    assert exp.data.source.name == source and exp.data.source.split == "train"
    assert exp.data.source.resize == SOURCE_SIZE[source]
    assert exp.data.target.resize == TARGET_SIZE
    assert exp.data.source.crop == recipe["crop"] and exp.data.target.crop == recipe["crop"]
    assert not exp.data.source.flip and not exp.data.target.flip
    assert exp.data.source.cat_max_ratio >= 1.0 and exp.data.target.cat_max_ratio >= 1.0
    assert not exp.data.source.rcs
    # schedule and stop
    assert exp.train.max_iters == recipe["max_iters"]
    # model: init file, classifier, aux head, references' layout
    assert exp.model.pretrained == f"pretrained/{recipe['init']}"
    for key, value in recipe["model.kwargs"].items():
        assert exp.model.kwargs[key] == value, key
    assert exp.model.kwargs["layout"] == "caffe"
    assert exp.model.kwargs["bn"] in ("frozen", "affine_frozen")
    assert exp.eval.classes == recipe["eval.classes"][source]
    # method settings, defaults included, through the method's own dataclass
    mcfg = method_config(method_class(method).Config, exp.uda, method)
    for key, value in recipe["uda"].items():
        assert _same(getattr(mcfg, key), value), f"uda.{key}"
    if path.stem in SOURCES:  # a base recipe says where to download its init file
        text = path.read_text()
        assert recipe["init"] in text and "http" in text


@pytest.mark.parametrize(
    "path",
    [p for p in YAMLS if p.stem.endswith(("_gbw", "_gbw_authors", *(f"_{b}" for b in TABLE_4B)))],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_weighted_variants_differ_from_their_base_only_in_weighting(path: Path):
    base_path = path.with_name(f"{_source_tag(path)}.yaml")
    weighted, base = _flat(to_dict(load_config(path))), _flat(to_dict(load_config(base_path)))
    differ = {k for k in weighted if weighted[k] != base[k]}
    assert differ - {"name"} <= {k for k in weighted if k.startswith("weighting.")}, differ
    assert weighted["name"] != base["name"]  # separate run folders
    assert base["weighting.name"] == "none"
    kind = path.stem.split("_", 1)[1]
    assert weighted["weighting.name"] == kind
    if kind in ("gbw", "lbw"):
        assert weighted["weighting.lam"] == 1.0  # paper's best lambda (Table 5)
    if kind == "gbw":  # the paper's method, not the authors'-code preset
        assert weighted["weighting.variant"] == "class" and weighted["weighting.scale"] == "none"
    if kind == "gbw_authors":  # the authors' code, its preset written out
        assert weighted["weighting.lam"] == 1.0
        assert (weighted["weighting.variant"], weighted["weighting.count_offset"]) == ("channel", 1)
        assert weighted["weighting.use_pixel_weight"] is False


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_gta_is_stretched_to_1280x720_as_the_references(path: Path):
    """ADVENT/AdaptSegNet/DACS resize GTA5 frames with PIL ``image.resize((1280, 720))``: a
    1914x1052 frame becomes 1280x720 (mmcv's keep-ratio rule would give 1280x704); SYNTHIA's
    1280x760 and Cityscapes' 2048x1024 -> 1024x512 come out as the references' too."""
    from gbw.engine.data import train_transform

    exp = load_config(path)
    native = {"gta": (1052, 1914), "synthia": (760, 1280)}[exp.data.source.name]
    expected = tuple(reversed(SOURCE_SIZE[exp.data.source.name]))
    for spec, (h, w), size in [
        (exp.data.source, native, expected),
        (exp.data.target, (1024, 2048), (512, 1024)),
    ]:
        transform = dataclasses.replace(train_transform(spec), crop_size=None, flip_prob=0.0)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        label = np.zeros((h, w), dtype=np.uint8)
        out_image, out_label = transform(image, label)
        assert out_image.shape[:2] == out_label.shape == size


def test_missing_pretrained_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pretrained/ folder here
    exp = load_config(CONFIGS / "advent" / "gta2cs.yaml")
    with pytest.raises(FileNotFoundError, match=r"pretrained/DeepLab_resnet_pretrained_imagenet"):
        build_method(exp)


@pytest.mark.parametrize("method", ["advent", "adaptsegnet"])
def test_optimisers_and_schedule_of_the_adversarial_recipes(method):
    exp = load_config(CONFIGS / method / "gta2cs.yaml")
    exp.model = dataclasses.replace(
        exp.model,
        name="tinyseg",
        pretrained="",
        kwargs={"widths": [8, 8, 16, 16], "aspp_channels": 8, "decoder_channels": 8, "aux": True},
    )
    opts = build_method(exp).configure_optimizers()
    assert set(opts) == {"model", "disc_main", "disc_aux"}
    sgd = opts["model"]
    assert isinstance(sgd, torch.optim.SGD)
    assert sorted(g["lr"] for g in sgd.param_groups) == pytest.approx([2.5e-4, 2.5e-3])
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in sgd.param_groups)
    for name in ("disc_main", "disc_aux"):
        adam = opts[name]
        assert type(adam) is torch.optim.Adam and len(adam.param_groups) == 1
        group = adam.param_groups[0]
        assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.99)
        assert group["weight_decay"] == 0.0
    # the engine multiplies every group's initial lr by this factor: ADVENT's lr_poly
    # (base * (1 - it / MAX_ITERS) ** POWER with MAX_ITERS = 250000) for G and D alike
    for it in (0, 1, 50_000, 119_999, exp.train.max_iters):
        assert lr_factor(exp, it) == pytest.approx((1 - it / 250_000) ** 0.9)
