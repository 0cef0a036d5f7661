"""Segmentation metrics from one on-device confusion matrix (torchvision references' idea).

The matrix is accumulated with ``bincount`` over batches, summed across processes once at the
end, and turned into per-class IoU, recall and precision. Means ignore classes that are absent
from both ground truth and prediction (NaN, as ADVENT's ``per_class_iu`` + ``nanmean``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class t predicted as p (ignore_index skipped)."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` integer tensors of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        n = self.num_classes
        t = target.reshape(-1).to(self.mat.device).long()
        p = pred.reshape(-1).to(self.mat.device).long()
        keep = (t >= 0) & (t < n)
        if p.numel() and self.mat.device.type == "cpu":
            bad = keep & ((p < 0) | (p >= n))
            if bool(bad.any()):
                raise ValueError(f"predictions must be in [0, {n}), got {int(p[bad][0])}")
        idx = torch.where(keep, t * n + p.clamp(0, n - 1), n * n)  # n*n = dropped bin
        self.mat += torch.bincount(idx, minlength=n * n + 1)[: n * n].view(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes (call once, before reading the metrics)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.mat)

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self, classes: Sequence[int] | None = None) -> SegMetrics:
        return SegMetrics.from_matrix(self.mat, classes)


@dataclass
class SegMetrics:
    """Per-class IoU, recall (= class accuracy), precision, and their means over ``classes``."""

    iou: Tensor
    recall: Tensor
    precision: Tensor
    classes: tuple[int, ...]
    pixel_accuracy: float
    matrix: Tensor

    @classmethod
    def from_matrix(cls, mat: Tensor, classes: Sequence[int] | None = None) -> SegMetrics:
        m = mat.double().cpu()
        tp = m.diag()
        gt = m.sum(1)
        pred = m.sum(0)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        union = gt + pred - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        recall = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
        precision = torch.where(pred > 0, tp / pred.clamp_min(1), nan)
        total = m.sum()
        acc = float(tp.sum() / total) if total > 0 else float("nan")
        cls_ = tuple(range(m.shape[0])) if classes is None else tuple(classes)
        return cls(iou, recall, precision, cls_, acc, mat.cpu())

    @staticmethod
    def _nanmean(x: Tensor, classes: tuple[int, ...]) -> float:
        sel = x[list(classes)]
        sel = sel[~torch.isnan(sel)]
        return float(sel.mean()) if sel.numel() else float("nan")

    @property
    def miou(self) -> float:
        return self._nanmean(self.iou, self.classes)

    @property
    def mean_recall(self) -> float:
        return self._nanmean(self.recall, self.classes)

    @property
    def mean_precision(self) -> float:
        return self._nanmean(self.precision, self.classes)

    def as_dict(self, class_names: Sequence[str]) -> dict[str, float]:
        """Flat dict for logs: mIoU, mRecall, mPrecision, aAcc, IoU/<name>, recall/<name>, ..."""
        out = {
            "mIoU": self.miou,
            "mRecall": self.mean_recall,
            "mPrecision": self.mean_precision,
            "aAcc": self.pixel_accuracy,
        }
        for c in self.classes:
            out[f"IoU/{class_names[c]}"] = float(self.iou[c])
            out[f"recall/{class_names[c]}"] = float(self.recall[c])
            out[f"precision/{class_names[c]}"] = float(self.precision[c])
        return out
