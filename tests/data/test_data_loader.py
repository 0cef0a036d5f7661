"""Seeded loaders with workers, rare-class sampling through a loader, the endless iterator."""

from __future__ import annotations

import torch

from gbw.data.gta import GTA5
from gbw.data.loader import ForeverIterator, build_loader
from gbw.data.prepare import prepare_dataset
from gbw.data.sampling import RareClassDataset, RareClassSampler
from gbw.data.transforms import TrainTransform


def batches(loader, n: int) -> list[dict]:
    it = ForeverIterator(loader)
    return [next(it) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return all(
        torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        for x, y in zip(a, b)
    )


def dataset(root, seed: int = 0) -> GTA5:
    return GTA5(root, transform=TrainTransform(crop_size=(16, 16), photometric=True, seed=seed))


def test_same_seed_same_batches_with_and_without_workers(tmp_path, fake):
    fake.gta(tmp_path / "gta", n=6)
    for workers in (0, 2):
        runs = []
        for seed in (7, 7, 8):
            loader = build_loader(dataset(tmp_path / "gta"), 2, num_workers=workers, seed=seed)
            assert loader.pin_memory == torch.cuda.is_available()
            runs.append(batches(loader, 5))  # 3 batches per epoch: crosses an epoch boundary
            del loader
        assert same(runs[0], runs[1])
        assert not same(runs[0], runs[2])
        assert runs[0][0]["image"].shape == (2, 3, 16, 16)


def test_rare_class_sampling_through_a_loader(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root, n=4, size=(64, 48))
    prepare_dataset("gta", root, progress=False)
    source = dataset(root)
    sampler = RareClassSampler.from_dataset(source, min_pixels=20, num_samples=6, seed=1)
    rcs = RareClassDataset(source, min_pixels=20)
    loader = build_loader(rcs, 2, num_workers=0, seed=0, sampler=sampler)
    got = batches(loader, 4)
    assert sampler.epoch == 2  # ForeverIterator restarted the sampler with set_epoch
    sampler.set_epoch(0)
    first_epoch = [c for _, c in sampler]
    assert [int(c) for b in got[:3] for c in b["rcs_class"]] == first_epoch


def test_forever_iterator_restarts(tmp_path, fake):
    fake.gta(tmp_path / "gta", n=3)
    loader = build_loader(dataset(tmp_path / "gta"), 2, num_workers=0, seed=0)
    it = ForeverIterator(loader)
    assert len(it) == 1
    names = [next(it)["name"] for _ in range(4)]
    assert it.epoch == 3 and all(len(n) == 2 for n in names)
