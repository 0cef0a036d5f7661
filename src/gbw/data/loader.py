"""Data loaders that keep a GPU fed and give the same batches for the same seed.

Decoding a 1914x1052 PNG takes tens of milliseconds on one CPU core (see
``benchmarks/results/data_loading.md``), so training loads in worker processes, persistent
across epochs, with pinned host memory for asynchronous copies to the GPU.

Reproducibility: the loader's ``torch.Generator`` is seeded, so shuffling and the per-worker
base seeds are fixed; each worker re-seeds the transforms it holds from its own seed in
:func:`seed_worker`. With ``num_workers=0`` the transforms are re-seeded from ``seed`` once when
the loader is built. Batches therefore depend on (seed, num_workers), not on timing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info


def reseed_transforms(dataset: object, seed: int) -> int:
    """Re-seed every transform with a ``reseed`` method reachable from ``dataset``.

    Follows ``.dataset`` (RareClassDataset, Subset) and ``.datasets`` (ConcatDataset) links.
    Returns how many transforms were re-seeded.
    """
    seen = 0
    stack = [dataset]
    visited: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        transform = getattr(obj, "transform", None)
        if transform is not None and hasattr(transform, "reseed"):
            # Distinct streams per transform, derived from the one seed.
            transform.reseed(int(np.random.SeedSequence([seed, seen]).generate_state(1)[0]))
            seen += 1
        inner = getattr(obj, "dataset", None)
        if inner is not None:
            stack.append(inner)
        stack.extend(getattr(obj, "datasets", ()) or ())
    return seen


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy, ``random`` and the dataset's transforms for this worker.

    ``torch.initial_seed()`` in a worker is the loader's base seed + worker id, and the base seed
    comes from the loader's seeded generator, so every worker stream is reproducible.
    """
    info = get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    except ImportError:  # pragma: no cover - opencv is a dependency
        pass
    if info is not None:
        reseed_transforms(info.dataset, seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 2,
    seed: int = 0,
    sampler: Sampler | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    persistent_workers: bool = True,
) -> DataLoader:
    """A seeded DataLoader with worker processes and pinned memory.

    Args:
        dataset: any map-style dataset (a :class:`RareClassDataset` with a RareClassSampler).
        batch_size: samples per batch.
        num_workers: decoding processes (0 = decode in the training process).
        seed: seeds shuffling, worker seeds and transforms.
        sampler: e.g. :class:`gbw.data.sampling.RareClassSampler`; disables ``shuffle``.
        shuffle: shuffle when no sampler is given.
        drop_last: drop the last incomplete batch (training keeps static shapes).
        pin_memory: page-locked batches for async host->GPU copies (default: when CUDA exists).
        prefetch_factor: batches each worker prepares ahead.
        persistent_workers: keep workers (and their decoded state) alive between epochs.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    reseed_transforms(dataset, seed)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {
            "worker_init_fn": seed_worker,
            "prefetch_factor": prefetch_factor,
            "persistent_workers": persistent_workers,
            "multiprocessing_context": worker_context(),
        }
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        **extra,
    )


def worker_context() -> Any:
    """The start method of data-loading workers: ``forkserver`` where it exists (workers fork
    from a fresh single-threaded server; a plain fork of a process that already runs threads
    - torch's, TensorBoard's, tqdm's monitor - can deadlock in the child), else ``spawn``."""
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


class ForeverIterator:
    """Endless iteration over a loader: restarts it when exhausted (TLlib's
    ``ForeverDataIterator``), so source and target loaders of different lengths can be zipped
    by iteration count. Calls ``set_epoch`` on the sampler before each pass when it has one.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.epoch = 0
        self._iterator = self._start()

    def _start(self) -> Iterator[Any]:
        sampler = getattr(self.loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        return iter(self.loader)

    def __iter__(self) -> ForeverIterator:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self._iterator = self._start()
            try:
                return next(self._iterator)
            except StopIteration:
                raise RuntimeError(
                    "ForeverIterator: the loader yields no batch (dataset smaller than one batch "
                    "with drop_last=True?)"
                ) from None

    def __len__(self) -> int:
        return len(self.loader)
