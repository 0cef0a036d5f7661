"""Datasets and loaders for the engine, with a data order that survives a kill.

Sample ``i`` of a run (per domain) is a pure function of ``(seed, domain, i)``: the index comes
from a seeded permutation of its epoch, and the sample's augmentation is re-seeded from the
same triple just before it is loaded. A run resumed at step ``s`` therefore continues at
sample ``s * batch_size`` with exactly the images and crops the uninterrupted run would have
used, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gbw.config import DatasetSpec, ExperimentConfig
from gbw.data.base import SegmentationDataset
from gbw.data.loader import reseed_transforms
from gbw.data.transforms import TrainTransform

DOMAINS = {"source": 0, "target": 1}


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def build_dataset(
    spec: DatasetSpec, exp: ExperimentConfig, *, train: bool, with_labels: bool
) -> SegmentationDataset:
    """A dataset from its config: MiniCity or a real dataset, with the training transform."""
    transform = None
    if train:
        transform = TrainTransform(
            scale=tuple(spec.resize) if spec.resize else None,
            crop_size=tuple(spec.crop) if spec.crop else None,
            cat_max_ratio=spec.cat_max_ratio,
            flip_prob=0.5 if spec.flip else 0.0,
            photometric=spec.photometric,
        )
    limit = spec.subset or None
    if spec.name == "minicity":
        from gbw.data.minicity import MiniCity

        ds = MiniCity(
            spec.split,
            spec.root or None,
            seed=0,
            size=exp.data.minicity_size,
            with_labels=with_labels,
            transform=transform,
        )
        if limit:
            ds.samples = ds.samples[:limit]
        return ds
    from gbw.data.real import dataset_class

    cls = dataset_class(spec.name)
    return cls(
        spec.root or None, spec.split, with_labels=with_labels, transform=transform, limit=limit
    )


def eval_classes(dataset: Dataset, which: str) -> tuple[int, ...] | None:
    """Classes entering the mean IoU: a named subset, or the dataset's own (MiniCity, SYNTHIA)."""
    from gbw.data.classes import EVAL_SUBSETS

    if which in EVAL_SUBSETS:
        return EVAL_SUBSETS[which]
    if which != "dataset":
        raise ValueError(f"eval.classes must be dataset, 19, 16 or 13, got {which!r}")
    own = getattr(dataset, "EVAL_CLASSES", None)
    if isinstance(own, dict):  # real datasets: {"19": (...), "16": (...)}
        return own.get("16") or own.get("19")
    return tuple(own) if own is not None else None


class InMemory(Dataset):
    """Decoded images and labels kept in RAM; the transform still runs per access."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset
        self.transform = dataset.transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._cache:
            files = self.dataset.samples[index]
            image = self.dataset.read_image(files.image)
            label = self.dataset.read_label(files.label) if self.dataset.with_labels else None
            self._cache[index] = (image, label)
        image, label = self._cache[index]
        if self.transform is not None:
            image, label = self.transform(image, label)
        return SegmentationDataset.to_sample(self.dataset.samples[index].name, image, label)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: re-seeds the dataset's transforms, then loads ``index``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        reseed_transforms(self.dataset, seed)
        return self.dataset[index]


class StepSampler(Sampler[tuple[int, int]]):
    """Endless ``(index, sample_seed)`` stream for one domain and rank, starting at ``start``.

    Epoch ``e`` is a permutation drawn from ``(seed, domain, e)``; under DDP rank ``r`` of ``w``
    takes global positions ``r, r + w, ...``. ``start`` counts this rank's samples already used.
    """

    def __init__(
        self, size: int, seed: int, domain: str, *, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if size <= 0:
            raise ValueError(f"the {domain} dataset is empty")
        self.size, self.seed, self.domain = size, seed, DOMAINS[domain]
        self.start, self.rank, self.world = start, rank, world
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(_seed_of(self.seed, self.domain, epoch))
            self._perm = torch.randperm(self.size, generator=gen)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        i = self.start
        while True:
            position = i * self.world + self.rank
            yield self._index(position), _seed_of(self.seed, self.domain, position, 1)
            i += 1

    def __len__(self) -> int:  # endless; a nominal length for progress displays
        return 2**62


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one process per core already


def build_train_loader(
    dataset: Dataset,
    exp: ExperimentConfig,
    domain: str,
    *,
    start_step: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless loader whose ``k``-th batch is the run's batch ``start_step + k``."""
    bs = exp.data.batch_size
    if exp.data.in_memory and isinstance(dataset, SegmentationDataset):
        dataset = InMemory(dataset)
    sampler = StepSampler(
        len(dataset), exp.seed, domain, start=start_step * bs, rank=rank, world=world
    )
    workers = exp.data.num_workers
    return DataLoader(
        SeededSamples(dataset),
        batch_size=bs,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )


def class_stats_for(exp: ExperimentConfig) -> np.ndarray | None:
    """Per-image source class pixel counts (N, C) for IF/PF weighting, or None if unneeded."""
    if exp.weighting.name not in ("if", "pf"):
        return None
    if exp.weighting.class_stats:
        path = Path(exp.weighting.class_stats)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: class statistics file not found")
        return np.load(path, allow_pickle=False)
    spec = exp.data.source
    if spec.name == "minicity":
        from gbw.data.minicity import load_class_stats

        return load_class_stats(spec.split, spec.root or None, size=exp.data.minicity_size)[1]
    from gbw.data.prepare import load_class_stats as load_real

    return load_real(spec.root or f"data/{spec.name}", spec.name)[1]
