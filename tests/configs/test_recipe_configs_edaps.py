"""The EDAPS configs (configs/edaps) load, build their method settings and carry the numbers
of shared/design/EDAPS.md; the network's instance decoder carries EDAPS.md's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_recipe_configs_transformer import DAFORMER, get

from gbw.config import load_config, method_config
from gbw.data.classes import SYNTHIA_16, THING_CLASSES
from gbw.uda.registry import method_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
YAMLS = sorted((CONFIGS / "edaps").glob("*.yaml"))
EXPECTED = {
    "synthia2cs.yaml",
    "synthia2cs_gbw.yaml",
    "synthia2cs_gbw_authors.yaml",
    "minicity.yaml",
    "minicity_gbw.yaml",
}

# EDAPS.md "Training": DAFormer's self-training, values unchanged (AdamW 6e-5, heads x10,
# 40k iterations, batch 2 + 2, 512 crops, SYNTHIA 1280x760, CS 1024x512, EMA 0.999, threshold
# 0.968, margins 15/120, ClassMix of the batch, jitter 0.2/0.2, blur, FD 0.005 on 6, 7, 11-18,
# RCS T 0.01, 3000 px, 0.5); "Inference": full 2048x1024, whole image, score 0.95, stuff area
# 2048, higher score wins; "Evaluation": 16 classes.
EDAPS: dict[str, Any] = {
    **{k: v for k, v in DAFORMER.items() if k not in ("model.name", "eval.resize")},
    "method": "edaps",
    "model.name": "edaps_mitb5",
    "data.source.name": "synthia",
    "data.source.resize": [1280, 760],
    "data.source.panoptic": True,
    "data.target.panoptic": False,
    "data.val.panoptic": True,
    "eval.mode": "whole",
    "eval.resize": None,
    "eval.classes": "16",
    "eval.fusion.score_threshold": 0.95,
    "eval.fusion.stuff_area": 2048,
    "eval.fusion.order": "score",
    "uda.instance_loss_weight": 1.0,
    "uda.weight_instance_cls": False,
    "train.cuda_graph": False,
}
WEIGHTING = {
    "synthia2cs": "none",
    "synthia2cs_gbw": "gbw",
    "synthia2cs_gbw_authors": "gbw_authors",
    "minicity": "none",
    "minicity_gbw": "gbw",
}


def test_every_config_exists():
    assert {p.name for p in YAMLS} == EXPECTED


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_config_loads_and_matches_edaps(path: Path):
    cfg = load_config(path)
    method_config(method_class(cfg.method).Config, cfg.uda, cfg.method)
    assert cfg.name == f"edaps_{path.stem}"
    assert cfg.weighting.name == WEIGHTING[path.stem]
    if cfg.weighting.name != "none":
        assert cfg.weighting.lam == 1.0 and cfg.weighting.terms == []  # src and mix
    if path.stem.startswith("minicity"):
        assert cfg.model.name == "edaps_tiny" and cfg.data.source.name == "minicity"
        assert cfg.data.source.panoptic and cfg.data.val.panoptic
        return
    for key, value in EDAPS.items():
        got = get(cfg, key)
        if isinstance(value, float):
            assert got == pytest.approx(value), (key, got, value)
        else:
            assert got == value, (key, got, value)


def test_sixteen_class_means_are_ten_stuff_and_six_things():
    things = [c for c in SYNTHIA_16 if c in THING_CLASSES]
    stuff = [c for c in SYNTHIA_16 if c not in THING_CLASSES]
    assert things == [11, 12, 13, 15, 17, 18]  # person, rider, car, bus, motorcycle, bicycle
    assert stuff == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]  # no terrain


def test_instance_decoder_carries_edaps_values():
    """EDAPS.md "Network": anchors 32-512 at strides 4-64, ratios 0.5/1/2; RPN 0.7/0.3,
    256 at 50 %, 2000 -> 1000 proposals (test 1000/1000), NMS 0.7; RoIAlign 7 (box) and 14
    (mask), adaptive sampling; two FC 1024; 8 things + background; stds 0.1/0.1/0.2/0.2; 512
    RoIs at 25 %, IoU 0.5; test score 0.05, NMS 0.5, 100 detections, mask threshold 0.5."""
    from gbw.models.edaps import InstanceDecoder

    d = InstanceDecoder()
    rpn, roi = d.rpn, d.roi_heads
    assert rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    assert rpn.proposal_matcher.allow_low_quality_matches
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (
        256,
        0.5,
    )
    assert rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert rpn.nms_thresh == 0.7
    assert roi.box_roi_pool.output_size == (7, 7) and roi.mask_roi_pool.output_size == (14, 14)
    assert roi.box_roi_pool.sampling_ratio == 0 == roi.mask_roi_pool.sampling_ratio
    assert roi.box_roi_pool.featmap_names == ["0", "1", "2", "3"]  # P2-P5
    assert roi.box_head.fc6.out_features == 1024 == roi.box_head.fc7.out_features
    assert roi.box_predictor.cls_score.out_features == 9
    assert roi.box_coder.weights == (10.0, 10.0, 5.0, 5.0)  # = 1 / (0.1, 0.1, 0.2, 0.2)
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction) == (
        512,
        0.25,
    )
    assert roi.proposal_matcher.high_threshold == 0.5 == roi.proposal_matcher.low_threshold
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_img) == (0.05, 0.5, 100)
    assert len(roi.mask_head) == 4 and d.mask_threshold == 0.5
    assert d.fpn.inner_blocks[0][0].out_channels == 256
    assert type(d.fpn.extra_blocks).__name__ == "LastLevelMaxPool"  # P6 by max-pool
