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


# --------------------------------------------------------------------------------------------
# Panoptic quality (Kirillov et al., CVPR 2019) as cityscapesscripts' evaluator computes it
# --------------------------------------------------------------------------------------------


class PanopticQuality:
    """PQ, SQ and RQ per class, accumulated over images and processes.

    Maps are int64 ``(H, W)`` (or ``(B, H, W)``, one image per entry) in the
    ``trainId * label_divisor + k`` convention: a thing instance has ``k >= 1``; a stuff
    segment is ``trainId * label_divisor``, and in the ground truth so is a *crowd* region of
    a thing class (Cityscapes' group annotations); ``void_label * label_divisor`` (any id of
    class ``void_label``) is void.

    The rules are those of cityscapesscripts' ``evalPanopticSemanticLabeling``
    (``pq_compute_single_core``), applied image by image:

    * a prediction and a ground-truth segment of the same class match when
      ``IoU > 0.5``; the union leaves out the prediction's pixels on ground-truth void,
      ``IoU = |P & G| / (|P| + |G| - |P & G| - |P & void|)``; crowd segments never match;
    * an unmatched ground-truth segment that is not crowd is a false negative;
    * an unmatched prediction is a false positive unless more than half of it lies on
      ground-truth void or on the crowd region of its own class;
    * per class ``PQ = sum IoU / (TP + FP / 2 + FN / 2)``, ``SQ = sum IoU / TP`` (0 when
      ``TP = 0``), ``RQ = TP / (TP + FP / 2 + FN / 2)``.

    A class with no TP, FP or FN gets NaN (the official script writes 0 and leaves it out of
    its means); means over ``classes`` skip NaN, as the official ``n`` does. A prediction id
    of a thing class with ``k = 0`` is an ordinary predicted segment (only ground truth has
    crowd regions). Class ids outside ``[0, num_classes)`` other than ``void_label`` raise.

    ``update`` works on the maps' device (``torch.unique`` reads sizes on the host, as any
    panoptic matcher must); ``all_reduce`` sums TP, FP, FN and the IoU sums over processes.
    """

    def __init__(
        self,
        num_classes: int = 19,
        things: Sequence[int] = tuple(range(11, 19)),
        label_divisor: int = 1000,
        void_label: int = 255,
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0 < num_classes <= void_label:
            raise ValueError(
                f"num_classes must be in [1, void_label={void_label}], got {num_classes}"
            )
        bad = [t for t in things if not 0 <= t < num_classes]
        if bad:
            raise ValueError(f"thing classes {bad} are outside [0, {num_classes})")
        self.num_classes = num_classes
        self.things = tuple(int(t) for t in things)
        self.label_divisor = int(label_divisor)
        self.void_label = int(void_label)
        self.device = torch.device(device)
        is_thing = torch.zeros(num_classes + 1, dtype=torch.bool)  # slot C: void
        is_thing[list(self.things)] = True
        self._is_thing = is_thing.to(self.device)
        self.tp = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self.fp = torch.zeros_like(self.tp)
        self.fn = torch.zeros_like(self.tp)
        self.iou = torch.zeros(num_classes, dtype=torch.float64, device=self.device)

    def reset(self) -> None:
        for t in (self.tp, self.fp, self.fn, self.iou):
            t.zero_()

    def _classes(self, ids: Tensor, what: str) -> Tensor:
        """Class slot of each id: 0..C-1, or C for void; raises on anything else."""
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"{what} ids must be >= 0, got {int(ids.min())}")
        cls = ids // self.label_divisor
        void = cls == self.void_label
        bad = ~void & (cls >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"{what} id {int(ids[bad][0])} has class {int(cls[bad][0])}; expected classes "
                f"0..{self.num_classes - 1} or void {self.void_label} "
                f"(ids are class * {self.label_divisor} + instance)"
            )
        return torch.where(void, self.num_classes, cls)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add images: ``pred`` and ``target`` integer maps of one shape, (H, W) or (B, H, W)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("panoptic maps must be integer tensors")
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        if pred.ndim != 3:
            raise ValueError(f"expected (H, W) or (B, H, W) maps, got {tuple(pred.shape)}")
        for p, t in zip(pred, target):
            self._update_one(
                p.to(self.device).long().reshape(-1), t.to(self.device).long().reshape(-1)
            )

    def _update_one(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        void_id = self.void_label * self.label_divisor
        p_slot = self._classes(pred, "prediction")
        g_slot = self._classes(target, "ground-truth")
        # every void id becomes the one void id, so that void is a single "segment"
        pred = torch.where(p_slot == c, void_id, pred)
        target = torch.where(g_slot == c, void_id, target)
        g_ids, g_inv = torch.unique(target, return_inverse=True)
        p_ids, p_inv = torch.unique(pred, return_inverse=True)
        ng, npred = g_ids.numel(), p_ids.numel()
        inter = torch.bincount(g_inv * npred + p_inv, minlength=ng * npred).view(ng, npred)
        g_area, p_area = inter.sum(1), inter.sum(0)
        g_cls = torch.where(g_ids == void_id, c, g_ids // self.label_divisor)
        p_cls = torch.where(p_ids == void_id, c, p_ids // self.label_divisor)
        g_void, p_void = g_cls == c, p_cls == c
        g_crowd = self._is_thing[g_cls] & (g_ids % self.label_divisor == 0)
        on_void = (inter * g_void[:, None]).sum(0)  # each prediction's pixels on GT void
        same = g_cls[:, None] == p_cls[None, :]
        union = p_area[None, :] + g_area[:, None] - inter - on_void[None, :]
        iou = inter.double() / union.clamp_min(1).double()
        match = same & (iou > 0.5) & ~(g_void | g_crowd)[:, None] & ~p_void[None, :]
        g_matched, p_matched = match.any(1), match.any(0)
        self.tp += torch.bincount(g_cls[g_matched], minlength=c + 1)[:c]
        rows, cols = match.nonzero(as_tuple=True)
        self.iou.index_add_(0, g_cls[rows], iou[rows, cols])
        fn = ~g_matched & ~g_void & ~g_crowd
        self.fn += torch.bincount(g_cls[fn], minlength=c + 1)[:c]
        on_crowd = (inter * (same & g_crowd[:, None])).sum(0)
        ignored = (on_void + on_crowd).double() / p_area.clamp_min(1).double() > 0.5
        fp = ~p_matched & ~p_void & ~ignored
        self.fp += torch.bincount(p_cls[fp], minlength=c + 1)[:c]

    def all_reduce(self) -> None:
        """Sum the counts over all processes (call once, before reading the metrics)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in (self.tp, self.fp, self.fn, self.iou):
                dist.all_reduce(t)

    def compute(self, classes: Sequence[int] | None = None) -> PanopticMetrics:
        return PanopticMetrics.from_counts(
            self.tp, self.fp, self.fn, self.iou, self.things, classes
        )


@dataclass
class PanopticMetrics:
    """Per-class PQ, SQ, RQ (NaN for classes without any segment) and their means."""

    pq: Tensor
    sq: Tensor
    rq: Tensor
    tp: Tensor
    fp: Tensor
    fn: Tensor
    classes: tuple[int, ...]
    things: tuple[int, ...]

    @classmethod
    def from_counts(
        cls,
        tp: Tensor,
        fp: Tensor,
        fn: Tensor,
        iou: Tensor,
        things: Sequence[int],
        classes: Sequence[int] | None = None,
    ) -> PanopticMetrics:
        tp_, fp_, fn_ = (x.double().cpu() for x in (tp, fp, fn))
        iou_ = iou.double().cpu()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        denom = tp_ + 0.5 * fp_ + 0.5 * fn_
        seen = denom > 0
        pq = torch.where(seen, iou_ / denom.clamp_min(0.5), nan)
        rq = torch.where(seen, tp_ / denom.clamp_min(0.5), nan)
        sq = torch.where(seen, torch.where(tp_ > 0, iou_ / tp_.clamp_min(1), 0.0), nan)
        cls_ = tuple(range(tp_.numel())) if classes is None else tuple(classes)
        return cls(pq, sq, rq, tp.cpu(), fp.cpu(), fn.cpu(), cls_, tuple(things))

    def subset(self, which: str = "all") -> tuple[int, ...]:
        """The classes of ``which`` ("all", "things", "stuff") among ``classes``."""
        if which == "all":
            return self.classes
        if which == "things":
            return tuple(c for c in self.classes if c in self.things)
        if which == "stuff":
            return tuple(c for c in self.classes if c not in self.things)
        raise ValueError(f"which must be all, things or stuff, got {which!r}")

    def mean(self, metric: str = "pq", which: str = "all") -> float:
        """NaN-skipping mean of ``metric`` ("pq", "sq", "rq") over the classes of ``which``."""
        if metric not in ("pq", "sq", "rq"):
            raise ValueError(f"metric must be pq, sq or rq, got {metric!r}")
        return SegMetrics._nanmean(getattr(self, metric), self.subset(which))

    @property
    def mpq(self) -> float:
        return self.mean("pq")

    @property
    def msq(self) -> float:
        return self.mean("sq")

    @property
    def mrq(self) -> float:
        return self.mean("rq")

    def as_dict(self, class_names: Sequence[str]) -> dict[str, float]:
        """Flat dict for logs: mPQ, mSQ, mRQ, their things/stuff means, PQ/<name>, ..."""
        out: dict[str, float] = {}
        for which, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
            for m in ("pq", "sq", "rq"):
                out[f"m{m.upper()}{suffix}"] = self.mean(m, which)
        for c in self.classes:
            for m in ("pq", "sq", "rq"):
                out[f"{m.upper()}/{class_names[c]}"] = float(getattr(self, m)[c])
        return out
