"""Rare-class sampling (RCS), DAFormer (Hoyer et al., CVPR 2022, Sec. 3.3).

Source images are drawn so that rare classes appear more often:

1. class frequency ``f_c`` = pixels of class c / all labelled pixels, over the whole source set
   (per-image counts from ``gbw data prepare``); classes with no pixel at all are left out;
2. ``P(c) = softmax((1 - f_c) / T)`` with temperature ``T`` (0.01): the lower ``T``, the more
   probability mass goes to the rarest classes;
3. draw a class c ~ P, then an image uniformly among those with *more than* ``min_pixels``
   (3000) pixels of c;
4. crop it with the usual random crop, re-drawn up to 10 times until the crop holds more than
   ``min_crop_ratio * min_pixels`` pixels of c (DAFormer 0.5, HRDA 2.0).

This follows ``get_rcs_class_probs`` and ``UDADataset.get_rare_class_sample`` of
lhoyer/DAFormer (``mmseg/datasets/uda_dataset.py``): the frequencies are pixel frequencies over
all images (the ``min_pixels`` filter only decides which images a class can be drawn from), and
the comparisons are strict. One difference: DAFormer stops with an assertion when a class has no
image above ``min_pixels``; here such a class is left out (with a warning) and the remaining
probabilities renormalised, which happens only on small subsets of a dataset.

Steps 1-3 are a :class:`RareClassSampler`. Step 4 needs the chosen class inside the dataset, so
the sampler yields ``(index, class)`` pairs and :class:`RareClassDataset` wraps the source dataset
to run the crop retry on the decoded arrays (no second file read, unlike DAFormer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from gbw.data.base import Sample, SegmentationDataset
from gbw.data.classes import CITYSCAPES_CLASSES

log = logging.getLogger(__name__)

RCS_TEMPERATURE = 0.01
RCS_MIN_PIXELS = 3000
RCS_MIN_CROP_RATIO = 0.5  # DAFormer; HRDA and MIC use 2.0
RCS_CROP_RETRIES = 10


def rcs_class_probabilities(
    counts: np.ndarray, temperature: float = RCS_TEMPERATURE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DAFormer's RCS class distribution from per-image class pixel counts.

    Args:
        counts: int array [N images, C classes] of pixel counts.
        temperature: softmax temperature T.

    Returns:
        classes: the classes with at least one pixel, ascending.
        freq: their pixel frequencies f_c (sum 1).
        prob: P(c) = softmax((1 - f_c) / T) over those classes.
    """
    if temperature <= 0:
        raise ValueError(f"RCS temperature must be > 0, got {temperature}")
    totals = np.asarray(counts, dtype=np.float64).sum(axis=0)
    classes = np.flatnonzero(totals > 0)
    if classes.size == 0:
        raise ValueError("RCS: the class statistics contain no labelled pixel")
    freq = totals[classes] / totals[classes].sum()
    logits = (1.0 - freq) / temperature
    prob = np.exp(logits - logits.max())  # shift for stability; softmax is shift-invariant
    return classes, freq, prob / prob.sum()


class RareClassSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, class)`` pairs by DAFormer's rare-class sampling.

    Deterministic for a seed: epoch ``e`` draws from ``numpy.random.default_rng([seed, e])``.
    Each ``iter()`` advances the epoch unless :meth:`set_epoch` set it (the DistributedSampler
    convention, used by :class:`gbw.data.loader.ForeverIterator`).

    Args:
        counts: int array [N, 19], per-image class pixel counts, row i for dataset index i
            (:meth:`from_dataset` aligns them by sample name).
        temperature: RCS temperature T.
        min_pixels: an image can be drawn for class c only with more than this many c pixels.
        num_samples: pairs per epoch (default N).
        seed: the sampler's seed.
        class_names: names for the log (default: the Cityscapes classes).
    """

    def __init__(
        self,
        counts: np.ndarray,
        *,
        temperature: float = RCS_TEMPERATURE,
        min_pixels: int = RCS_MIN_PIXELS,
        num_samples: int | None = None,
        seed: int = 0,
        class_names: Sequence[str] = CITYSCAPES_CLASSES,
    ) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 2:
            raise ValueError(f"counts must be [N images, C classes], got shape {counts.shape}")
        self.counts = counts
        self.temperature = temperature
        self.min_pixels = min_pixels
        self.seed = seed
        self.epoch = 0
        self.num_samples = int(num_samples) if num_samples is not None else counts.shape[0]
        self.class_names = tuple(class_names)
        classes, freq, prob = rcs_class_probabilities(counts, temperature)
        pools = {int(c): np.flatnonzero(counts[:, c] > min_pixels) for c in classes}
        empty = [c for c, pool in pools.items() if pool.size == 0]
        if empty:
            log.warning(
                "RCS: no image has more than %d pixels of %s; these classes are never drawn",
                min_pixels,
                ", ".join(self._name(c) for c in empty),
            )
        keep = np.array([pools[int(c)].size > 0 for c in classes])
        if not keep.any():
            raise ValueError(f"RCS: no class has an image with more than {min_pixels} pixels")
        #: Pixel frequency f_c and probability P(c) of every class with pixels (before dropping).
        self.frequencies = dict(zip(classes.tolist(), freq.tolist()))
        self.all_probabilities = dict(zip(classes.tolist(), prob.tolist()))
        self.classes = classes[keep]
        self.probabilities = prob[keep] / prob[keep].sum()
        self.pools = {int(c): pools[int(c)] for c in self.classes}
        log.info("%s", self.describe())

    @classmethod
    def from_dataset(
        cls,
        dataset: SegmentationDataset,
        names: Sequence[str] | None = None,
        counts: np.ndarray | None = None,
        **kwargs: object,
    ) -> RareClassSampler:
        """Build the sampler for ``dataset``, aligning statistics rows to its samples by name.

        Without ``names``/``counts`` the statistics of ``gbw data prepare`` are loaded from the
        dataset's root (datasets with ``root``, ``NAME`` and ``split``, i.e. the real ones).
        """
        if names is None or counts is None:
            from gbw.data.prepare import load_class_stats

            names, counts = load_class_stats(dataset.root, dataset.NAME, dataset.split)  # type: ignore[attr-defined]
        row = {n: i for i, n in enumerate(names)}
        wanted = [s.name for s in dataset.samples]
        missing = [n for n in wanted if n not in row]
        if missing:
            raise ValueError(
                f"class statistics cover {len(wanted) - len(missing)} of {len(wanted)} samples "
                f"(first missing: {missing[0]}); run `gbw data prepare` again"
            )
        aligned = np.asarray(counts, dtype=np.int64)[[row[n] for n in wanted]]
        return cls(aligned, **kwargs)  # type: ignore[arg-type]

    def _name(self, c: int) -> str:
        return self.class_names[c] if c < len(self.class_names) else str(c)

    def describe(self) -> str:
        """The class frequency / probability table that is logged at construction."""
        lines = [
            f"rare-class sampling: T={self.temperature}, min_pixels={self.min_pixels}, "
            f"{self.counts.shape[0]} images",
            f"  {'class':<14} {'freq f_c':>10} {'P(c)':>10} {'images':>7}",
        ]
        for c, f in sorted(self.frequencies.items(), key=lambda kv: kv[1]):
            pool = self.pools.get(c)
            p = self.all_probabilities[c] if pool is not None else 0.0
            lines.append(
                f"  {self._name(c):<14} {f:>10.5f} {p:>10.5f} "
                f"{(pool.size if pool is not None else 0):>7}"
            )
        return "\n".join(lines)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        picks = rng.choice(len(self.classes), size=self.num_samples, p=self.probabilities)
        for k in picks:
            c = int(self.classes[k])
            pool = self.pools[c]
            yield int(pool[rng.integers(pool.size)]), c


class RareClassDataset(Dataset):
    """Wraps a labelled source dataset to serve ``(index, class)`` keys from RareClassSampler.

    The sample's random crop (from the dataset's transform) is re-drawn up to ``crop_retries``
    times until it holds more than ``min_crop_ratio * min_pixels`` pixels of the chosen class;
    as in DAFormer, the last re-draw is kept unchecked. A plain integer key returns the plain
    sample. The chosen class is added to the sample as ``rcs_class``.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        *,
        min_pixels: int = RCS_MIN_PIXELS,
        min_crop_ratio: float = RCS_MIN_CROP_RATIO,
        crop_retries: int = RCS_CROP_RETRIES,
    ) -> None:
        if not dataset.with_labels:
            raise ValueError("rare-class sampling needs a labelled (source) dataset")
        self.dataset = dataset
        self.min_pixels = min_pixels
        self.min_crop_ratio = min_crop_ratio
        self.crop_retries = crop_retries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, c = int(key[0]), int(key[1])
        arrays = self.dataset.load(index)  # (image, label, ...): e.g. a panoptic map too
        sample = self.dataset.make_sample(index, *arrays)
        if self.min_crop_ratio > 0:
            needed = self.min_pixels * self.min_crop_ratio
            for _ in range(self.crop_retries):
                if int((sample["label"] == c).sum()) > needed:  # type: ignore[operator]
                    break
                sample = self.dataset.make_sample(index, *arrays)
        sample["rcs_class"] = torch.tensor(c)
        return sample
