"""Datasets and loaders for the engine, with a data order that survives a kill.

Sample ``i`` of a run (per domain) is a pure function of ``(seed, domain, i)``: the index comes
from a seeded permutation of its epoch, and the sample's augmentation is re-seeded from the
same triple just before it is loaded. A run resumed at step ``s`` therefore continues at
sample ``s * batch_size`` with exactly the images and crops the uninterrupted run would have
used, whatever the number of workers. Rare-class sampling (``data.source.rcs``) keeps this
property: the class and image of position ``i`` are drawn from a generator seeded by the same
triple (:class:`RareClassStepSampler`).
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
from gbw.data.loader import reseed_transforms, worker_context
from gbw.data.sampling import RareClassDataset, RareClassSampler
from gbw.data.transforms import TrainTransform

DOMAINS = {"source": 0, "target": 1}


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def train_transform(spec: DatasetSpec) -> TrainTransform:
    """The training transform a dataset spec describes (resize, crop, flip, photometric)."""
    return TrainTransform(
        scale=tuple(spec.resize) if spec.resize else None,
        keep_ratio=spec.keep_ratio,
        crop_size=tuple(spec.crop) if spec.crop else None,
        cat_max_ratio=spec.cat_max_ratio,
        flip_prob=0.5 if spec.flip else 0.0,
        photometric=spec.photometric,
    )


def build_dataset(
    spec: DatasetSpec, exp: ExperimentConfig, *, train: bool, with_labels: bool
) -> SegmentationDataset:
    """A dataset from its config: MiniCity or a real dataset, with the training transform."""
    transform = train_transform(spec) if train else None
    limit = spec.subset or None
    if spec.panoptic and not with_labels:
        raise ValueError(
            "data.target.panoptic: panoptic maps are labels; the target training set has none"
        )
    if spec.pseudo_margins is not None and spec.name == "minicity":
        raise ValueError(
            "data.*.pseudo_margins needs a real dataset (gta, synthia, cityscapes); for MiniCity "
            "use the crop-level uda.pseudo_margins"
        )
    if spec.name == "minicity":
        from gbw.data.minicity import MiniCity

        ds = MiniCity(
            spec.split,
            spec.root or None,
            seed=0,
            size=exp.data.minicity_size,
            with_labels=with_labels,
            transform=transform,
            with_panoptic=spec.panoptic,
        )
        if limit:
            ds.samples = ds.samples[:limit]
        return ds
    if spec.name == "folder":
        return _folder_dataset(spec, exp, with_labels=with_labels, transform=transform)
    from gbw.data.registry import dataset_class

    cls = dataset_class(spec.name)
    extra: dict[str, Any] = {}
    if spec.pseudo_margins is not None:
        extra["pseudo_margins"] = tuple(spec.pseudo_margins)
    if spec.panoptic:
        extra["with_panoptic"] = True
    return cls(
        spec.root or None,
        spec.split,
        with_labels=with_labels,
        transform=transform,
        limit=limit,
        **extra,
    )


def _folder_dataset(
    spec: DatasetSpec, exp: ExperimentConfig, *, with_labels: bool, transform: Any
) -> SegmentationDataset:
    """Your own data (:mod:`gbw.data.folder`); its class count must be the model's."""
    from gbw.data.folder import FolderDataset

    if spec.pseudo_margins is not None:
        raise ValueError("data.*.pseudo_margins: not supported for name=folder datasets")
    if not spec.labels_map:
        raise ValueError("data.*.labels_map: a folder dataset needs its label map YAML")
    ds = FolderDataset(
        spec.root,
        spec.split,
        labels_map=spec.labels_map,
        image_dir=spec.image_dir,
        label_dir=spec.label_dir,
        with_labels=with_labels,
        transform=transform,
        limit=spec.subset or None,
    )
    if exp.model.num_classes != ds.NUM_CLASSES:
        raise ValueError(
            f"model.num_classes={exp.model.num_classes} but {spec.labels_map} names "
            f"{ds.NUM_CLASSES} classes"
        )
    return ds


def eval_classes(dataset: Dataset, which: str) -> tuple[int, ...] | None:
    """Classes entering the mean IoU: a named subset, or the dataset's own (MiniCity, SYNTHIA)."""
    from gbw.data.classes import EVAL_SUBSETS

    if which in EVAL_SUBSETS:
        return EVAL_SUBSETS[which]
    if which != "dataset":
        raise ValueError(f"eval.classes must be dataset, 19, 16 or 13, got {which!r}")
    own = getattr(dataset, "EVAL_CLASSES", None)
    if isinstance(own, dict):  # real datasets: {"19": (...), "16": (...)}
        return own.get("19") or next(iter(own.values()))  # the full set; 16/13 by name
    return tuple(own) if own is not None else None


class InMemory(Dataset):
    """Decoded images and labels kept in RAM; the transform still runs per access."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset
        self.transform = dataset.transform
        self._cache: dict[int, tuple[np.ndarray | None, ...]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def with_labels(self) -> bool:
        return self.dataset.with_labels

    def load(self, index: int) -> tuple[np.ndarray | None, ...]:
        """The decoded arrays of sample ``index`` (decoded once, then from RAM)."""
        if index not in self._cache:
            self._cache[index] = self.dataset.load(index)
        return self._cache[index]

    def make_sample(self, index: int, *arrays: np.ndarray | None) -> Any:
        return self.dataset.make_sample(index, *arrays)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make_sample(index, *self.load(index))  # type: ignore[return-value]


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


class RareClassStepSampler(StepSampler):
    """:class:`StepSampler` with DAFormer's rare-class sampling: ``((index, class), seed)``.

    Position ``i``'s class ``c ~ P(c)`` and image (uniform among those with more than
    ``min_pixels`` of ``c``) come from a generator seeded by ``(seed, domain, i)``, so the
    order is deterministic and resumable like the plain sampler's. The class/image tables
    are those of a :class:`gbw.data.sampling.RareClassSampler`; the ``(index, class)`` key is
    served by :class:`gbw.data.sampling.RareClassDataset` (crop retry for the class).
    """

    def __init__(
        self,
        rcs: RareClassSampler,
        seed: int,
        domain: str,
        *,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__(rcs.counts.shape[0], seed, domain, start=start, rank=rank, world=world)
        self.rcs = rcs

    def key(self, position: int) -> tuple[int, int]:
        """The ``(dataset index, class)`` drawn for global position ``position``."""
        rng = np.random.default_rng(_seed_of(self.seed, self.domain, position, 2))
        c = int(self.rcs.classes[rng.choice(len(self.rcs.classes), p=self.rcs.probabilities)])
        pool = self.rcs.pools[c]
        return int(pool[rng.integers(pool.size)]), c

    def __iter__(self) -> Iterator[tuple[tuple[int, int], int]]:  # type: ignore[override]
        i = self.start
        while True:
            position = i * self.world + self.rank
            yield self.key(position), _seed_of(self.seed, self.domain, position, 1)
            i += 1


def rare_class_sampler(dataset: SegmentationDataset, exp: ExperimentConfig) -> RareClassSampler:
    """The RCS class distribution of the source set, from its per-image class statistics
    (MiniCity's ``class_stats.json``; ``gbw data prepare`` files for real datasets)."""
    spec = exp.data.source
    kwargs: dict[str, Any] = {
        "temperature": spec.rcs_temperature,
        "min_pixels": spec.rcs_min_pixels,
        "seed": exp.seed,
    }
    if spec.name == "minicity":
        from gbw.data.minicity import load_class_stats

        names, counts = load_class_stats(spec.split, spec.root or None, size=exp.data.minicity_size)
        return RareClassSampler.from_dataset(dataset, names, counts, **kwargs)
    if spec.name == "folder":
        from gbw.data.folder import load_folder_stats

        classes = dataset.CLASSES
        names, counts = load_folder_stats(spec.root, spec.split, classes)
        return RareClassSampler.from_dataset(dataset, names, counts, class_names=classes, **kwargs)
    return RareClassSampler.from_dataset(dataset, **kwargs)


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
    """An endless loader whose ``k``-th batch is the run's batch ``start_step + k``.

    With ``data.source.rcs`` the source samples are drawn by rare-class sampling; with
    ``data.<domain>.panoptic`` each sample also carries its detection targets
    (``"instances"``, computed in the workers after the crop; a list in the batch).
    """
    bs = exp.data.batch_size
    spec = exp.data.source if domain == "source" else exp.data.target
    rcs = None
    if spec.rcs:
        if domain != "source":
            raise ValueError(
                "data.target.rcs: rare-class sampling needs labels; only data.source.rcs may "
                "be true"
            )
        if not isinstance(dataset, SegmentationDataset):
            raise TypeError(f"rare-class sampling needs a SegmentationDataset, got {dataset!r}")
        rcs = rare_class_sampler(dataset, exp)
    if exp.data.in_memory and isinstance(dataset, SegmentationDataset):
        dataset = InMemory(dataset)
    sampler: StepSampler
    if rcs is not None:
        dataset = RareClassDataset(
            dataset,  # type: ignore[arg-type]
            min_pixels=spec.rcs_min_pixels,
            min_crop_ratio=spec.rcs_min_crop_ratio,
        )
        sampler = RareClassStepSampler(
            rcs, exp.seed, domain, start=start_step * bs, rank=rank, world=world
        )
    else:
        sampler = StepSampler(
            len(dataset), exp.seed, domain, start=start_step * bs, rank=rank, world=world
        )
    collate = None
    if spec.panoptic:
        from gbw.data.panoptic import WithInstances, collate_panoptic

        dataset, collate = WithInstances(dataset), collate_panoptic
    workers = exp.data.num_workers
    return DataLoader(
        SeededSamples(dataset),
        batch_size=bs,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        collate_fn=collate,
        persistent_workers=workers > 0,
        multiprocessing_context=worker_context() if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        # Its own generator: starting an iterator draws a base seed, which would otherwise come
        # from the global RNG and shift a resumed run's dropout / DropPath draws (the samples
        # themselves are re-seeded per position by SeededSamples either way).
        generator=torch.Generator().manual_seed(_seed_of(exp.seed, DOMAINS[domain], 3)),
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
    if spec.name == "folder":
        from gbw.data.folder import load_folder_stats

        ds = build_dataset(spec, exp, train=False, with_labels=False)
        return load_folder_stats(spec.root, spec.split, ds.CLASSES)[1]
    from gbw.data.prepare import load_class_stats as load_real

    return load_real(spec.root or f"data/{spec.name}", spec.name)[1]
