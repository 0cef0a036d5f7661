"""``MiniCity``: the embedded benchmark behind the same interface as GTA5 / Cityscapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gbw.data.base import Sample, SampleFiles, SegmentationDataset, Transform
from gbw.data.io import read_gray, read_png_unchanged
from gbw.data.minicity.cache import SPLITS, ensure_minicity
from gbw.data.minicity.panoptic import decode_png16, from_transform_code, to_transform_code
from gbw.data.minicity.stats import EVAL_CLASSES


class MiniCity(SegmentationDataset):
    """One split of MiniCity, generated on first use under ``root`` (see ``ensure_minicity``).

    Splits: ``source_train`` (labelled synthetic), ``source_val`` (held-out synthetic, to
    measure the domain gap), ``target_train`` (unlabelled real: ``with_labels`` defaults to
    False so its labels cannot reach a training step), ``target_val`` (evaluation only).
    Labels are Cityscapes trainIds; ``EVAL_CLASSES`` are the trainIds MiniCity draws.

    ``with_panoptic=True`` adds ``"panoptic"``: an int64 (H, W) map of ``trainId * 1000 + k``
    for thing instances, ``trainId * 1000`` for stuff and ``255 * 1000`` for void
    (:mod:`gbw.data.minicity.panoptic`), carried through the same resize, crop, flip and
    padding as the label; that needs a transform with ``apply(image, label, masks)`` such as
    :class:`gbw.data.transforms.TrainTransform`.
    """

    EVAL_CLASSES: tuple[int, ...] = EVAL_CLASSES

    def __init__(
        self,
        split: str,
        root: str | Path | None = None,
        *,
        seed: int = 0,
        size: str = "default",
        with_labels: bool | None = None,
        with_panoptic: bool = False,
        transform: Transform | None = None,
        workers: int = 1,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown MiniCity split {split!r}; choose one of {list(SPLITS)}")
        self.split = split
        self.dir = ensure_minicity(root, seed=seed, size=size, workers=workers)
        folder = self.dir / SPLITS[split][1]
        names = json.loads((folder / "class_stats.json").read_text())["names"]
        samples = [
            SampleFiles(
                name=n, image=self.dir / n, label=self.dir / n.replace("/images/", "/labels/")
            )
            for n in names
        ]
        if with_labels is None:
            with_labels = split != "target_train"
        if with_panoptic and not with_labels:
            raise ValueError(
                f"MiniCity({split!r}, with_panoptic=True) needs with_labels=True: a panoptic map "
                "carries the semantic label"
            )
        if with_panoptic and transform is not None and not hasattr(transform, "apply"):
            raise TypeError(
                "MiniCity(with_panoptic=True): the transform must have apply(image, label, "
                f"masks) (e.g. gbw.data.transforms.TrainTransform), got {transform!r}"
            )
        self.with_panoptic = with_panoptic
        super().__init__(samples, with_labels=with_labels, transform=transform)

    def read_label(self, path: Path) -> np.ndarray:
        label = read_gray(path)
        if label.dtype != np.uint8:
            raise ValueError(f"{path}: expected a uint8 trainId PNG, got {label.dtype}")
        return label

    def panoptic_path(self, index: int) -> Path:
        return self.dir / self.samples[index].name.replace("/images/", "/panoptic/")

    def read_panoptic(self, index: int) -> np.ndarray:
        """The untransformed int64 panoptic map of sample ``index``."""
        path = self.panoptic_path(index)
        return decode_png16(read_png_unchanged(path), path)

    def make_sample(self, index: int, image: np.ndarray, label: np.ndarray | None) -> Sample:
        if not self.with_panoptic:
            return super().make_sample(index, image, label)
        panoptic = self.read_panoptic(index)
        if panoptic.shape != image.shape[:2]:
            raise ValueError(
                f"{self.panoptic_path(index)}: size {panoptic.shape[::-1]} does not match the "
                f"image {image.shape[1::-1]}"
            )
        if self.transform is not None:
            # The transform pads masks with 0; the code maps 0 to void (see panoptic.py).
            image, label, (code,) = self.transform.apply(  # type: ignore[attr-defined]
                image, label, [to_transform_code(panoptic)]
            )
            panoptic = from_transform_code(code)
        sample = self.to_sample(self.samples[index].name, image, label)
        sample["panoptic"] = torch.from_numpy(np.ascontiguousarray(panoptic, dtype=np.int64))
        return sample
