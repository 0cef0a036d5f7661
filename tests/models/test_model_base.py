"""The shared model interface: input normalisation, parameter groups, factory, weight files."""

from __future__ import annotations

import pytest
import torch

from gbw.models import InputNormalization, build_model
from gbw.models.base import (
    CAFFE_BGR_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadReport,
    load_state_dict_file,
)


def test_caffe_normalisation_is_bgr_0_255_minus_mean() -> None:
    norm = InputNormalization(CAFFE_BGR_MEAN, scale=255.0, bgr=True)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0  # pure red in RGB [0, 1]
    out = norm(red)
    # Channel 0 is blue now: 0 - 104.008; channel 2 is red: 255 - 122.679.
    expected = torch.tensor(
        [0.0 - CAFFE_BGR_MEAN[0], 0.0 - CAFFE_BGR_MEAN[1], 255.0 - CAFFE_BGR_MEAN[2]]
    )
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_imagenet_normalisation() -> None:
    norm = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
    x = torch.rand(2, 3, 5, 7)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), (x - mean) / std)
    assert not dict(norm.state_dict()), "normalisation constants must not enter state dicts"


def test_normalisation_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        InputNormalization(IMAGENET_MEAN, IMAGENET_STD)(torch.rand(3, 8, 8))


def test_build_model_unknown_name() -> None:
    with pytest.raises(ValueError, match="deeplabv2_r101"):
        build_model("deeplabv3")


def test_param_groups_cover_trainable_parameters_once() -> None:
    model = build_model("tinyseg", num_classes=5)
    groups = model.param_groups(0.01, head_lr_mult=10.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(0.01)
    assert by_name["head"]["lr"] == pytest.approx(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    # Groups are accepted by a torch optimiser as they are.
    torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)


def test_missing_weight_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_state_dict_file(path)


def test_corrupt_weight_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match=r"broken\.pth"):
        load_state_dict_file(path)


class _Payload:
    pass


def test_weight_file_with_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": _Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth"):
        load_state_dict_file(path)


def test_wrapped_and_dataparallel_state_dicts_are_unwrapped(tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module.a": torch.ones(2), "module.b": torch.zeros(1)}}, path)
    sd, where = load_state_dict_file(path)
    assert set(sd) == {"a", "b"} and where == str(path)


def test_load_report_strict_lists_problems() -> None:
    report = LoadReport(
        "f.pth",
        loaded=["a"],
        missing=["b"],
        unexpected=["c"],
        skipped={"fc.weight": "ImageNet classification layer"},
    )
    text = report.summary()
    assert "missing" in text and "b" in text and "unexpected" in text and "fc.weight" in text
    with pytest.raises(ValueError, match="missing"):
        report.raise_if_incomplete()
