"""The one dataset interface every domain implements (GTA5, SYNTHIA, Cityscapes, MiniCity).

A sample is a dict:
  ``image``: float32 tensor (3, H, W), RGB in [0, 1]. Normalisation belongs to the model
             (DeepLabV2 subtracts a BGR mean, MiT uses ImageNet mean/std), so that mixing and
             photometric augmentation act on plain images.
  ``label``: int64 tensor (H, W) of Cityscapes trainIds, 255 = ignore. Present only when the
             dataset was built with ``with_labels=True``; target-domain training sets are
             built without, so target labels can never reach a training step.
  ``name``:  str, the sample's id (relative image path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gbw.data.classes import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES

Sample = dict[str, object]
Transform = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class SampleFiles:
    """Where one sample lives on disk."""

    name: str
    image: Path
    label: Path | None


class SegmentationDataset(Dataset):
    """A list of (image, label) files read as uint8 RGB + trainId arrays, then transformed.

    Subclasses fill ``self.samples`` and implement :meth:`read_label` (raw file -> trainIds).
    ``transform`` takes and returns ``(image HxWx3 uint8, label HxW uint8 | None)``.
    """

    CLASSES: tuple[str, ...] = CITYSCAPES_CLASSES
    NUM_CLASSES: int = NUM_CLASSES
    IGNORE_INDEX: int = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[SampleFiles],
        *,
        with_labels: bool = True,
        transform: Transform | None = None,
    ) -> None:
        self.samples = list(samples)
        self.with_labels = with_labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, path: Path) -> np.ndarray:
        from gbw.data.io import read_rgb

        return read_rgb(path)

    def read_label(self, path: Path) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode sample ``index`` before any transform: ((H, W, 3) uint8 RGB, (H, W) uint8 | None).

        Split from :meth:`__getitem__` so that rare-class sampling can re-run a random crop on
        the same decoded arrays without reading the files again.
        """
        files = self.samples[index]
        image = self.read_image(files.image)
        label = None
        if self.with_labels:
            if files.label is None:
                raise ValueError(f"{type(self).__name__}: sample {files.name!r} has no label file")
            label = self.read_label(files.label)
            if label.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"{files.label}: size {label.shape[1]}x{label.shape[0]} does not match image "
                    f"{image.shape[1]}x{image.shape[0]}"
                )
        return image, label

    def make_sample(self, index: int, image: np.ndarray, label: np.ndarray | None) -> Sample:
        """Transform decoded arrays and convert them to the sample dict of the module docstring."""
        if self.transform is not None:
            image, label = self.transform(image, label)
        return self.to_sample(self.samples[index].name, image, label)

    @staticmethod
    def to_sample(name: str, image: np.ndarray, label: np.ndarray | None) -> Sample:
        """Arrays -> the sample dict: float32 (3, H, W) image in [0, 1], int64 (H, W) label."""
        image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on those
            image = image.copy()
        out: Sample = {
            "image": torch.from_numpy(image).permute(2, 0, 1).float() / 255.0,
            "name": name,
        }
        if label is not None:
            # The int64 conversion copies, so read-only decoder output is fine here.
            out["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return out

    def __getitem__(self, index: int) -> Sample:
        # load() may return more arrays than (image, label): a panoptic map, for instance;
        # make_sample takes them in the same order
        return self.make_sample(index, *self.load(index))
