"""Metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch

from gbw.metrics import ConfusionMatrix


def test_hand_computed_matrix_and_metrics():
    # 3 classes; pixels (true, pred): ignored pixels (255) must not count
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred[:1], target[:1])  # two batches accumulate
    cm.update(pred[1:], target[1:])
    expected = torch.tensor([[2, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.mat, expected)
    m = cm.compute()
    # class 0: tp 2, fn 1, fp 1 -> IoU 2/4; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    assert m.iou.tolist() == pytest.approx([0.5, 2 / 3, 0.5])
    assert m.recall.tolist() == pytest.approx([2 / 3, 1.0, 0.5])
    assert m.precision.tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert m.miou == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m.pixel_accuracy == pytest.approx(5 / 7)


def test_absent_class_is_nan_and_excluded_from_means_and_subsets():
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[3])
    assert m.miou == pytest.approx(1.0)
    # a subset metric (as SYNTHIA's 16 classes): only those classes enter the mean
    cm.update(torch.tensor([2]), torch.tensor([3]))  # class 3 missed, class 2 false positive
    assert cm.compute(classes=(0, 1, 3)).miou == pytest.approx(2 / 3)
    d = cm.compute(classes=(0, 1)).as_dict(["a", "b", "c", "d"])
    assert set(d) >= {"mIoU", "IoU/a", "recall/b"} and "IoU/c" not in d


def test_bad_predictions_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"predictions must be in \[0, 3\), got 7"):
        cm.update(torch.tensor([7]), torch.tensor([0]))
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.tensor([1, 2]), torch.tensor([0]))
