"""``MiniCity``: the embedded benchmark behind the same interface as GTA5 / Cityscapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gbw.data.base import SampleFiles, SegmentationDataset, Transform
from gbw.data.io import read_gray
from gbw.data.minicity.cache import SPLITS, ensure_minicity
from gbw.data.minicity.stats import EVAL_CLASSES


class MiniCity(SegmentationDataset):
    """One split of MiniCity, generated on first use under ``root`` (see ``ensure_minicity``).

    Splits: ``source_train`` (labelled synthetic), ``source_val`` (held-out synthetic, to
    measure the domain gap), ``target_train`` (unlabelled real: ``with_labels`` defaults to
    False so its labels cannot reach a training step), ``target_val`` (evaluation only).
    Labels are Cityscapes trainIds; ``EVAL_CLASSES`` are the trainIds MiniCity draws.
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
        super().__init__(samples, with_labels=with_labels, transform=transform)

    def read_label(self, path: Path) -> np.ndarray:
        label = read_gray(path)
        if label.dtype != np.uint8:
            raise ValueError(f"{path}: expected a uint8 trainId PNG, got {label.dtype}")
        return label
