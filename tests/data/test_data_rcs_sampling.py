"""Rare-class sampling: the formula, the sampler's frequencies, determinism, the crop retry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gbw.data.base import SampleFiles, SegmentationDataset
from gbw.data.gta import GTA5
from gbw.data.prepare import prepare_dataset
from gbw.data.sampling import RareClassDataset, RareClassSampler, rcs_class_probabilities
from gbw.data.transforms import TrainTransform


def daformer_probs(counts: np.ndarray, temperature: float) -> dict[int, float]:
    """DAFormer's get_rcs_class_probs, restated: totals per class present, 1 - f, softmax / T."""
    totals = {c: int(counts[:, c].sum()) for c in range(counts.shape[1]) if counts[:, c].sum() > 0}
    freq = torch.tensor(list(totals.values()), dtype=torch.float64)
    freq = freq / freq.sum()
    prob = torch.softmax((1 - freq) / temperature, dim=-1)
    return dict(zip(totals, prob.tolist()))


def random_counts(seed: int = 0, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1e5, 2e2, 19)  # road-like to bicycle-like
    counts = (rng.random((n, 19)) < 0.7) * rng.poisson(scale, size=(n, 19))
    counts[:, 16] = 0  # a class absent from the whole set (SYNTHIA's terrain, say)
    return counts.astype(np.int64)


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_probabilities_match_daformer_formula(temperature):
    counts = random_counts()
    classes, freq, prob = rcs_class_probabilities(counts, temperature)
    assert 16 not in classes.tolist()
    expected = daformer_probs(counts, temperature)
    assert classes.tolist() == sorted(expected)
    np.testing.assert_allclose(prob, [expected[c] for c in classes.tolist()], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(freq.sum(), 1.0)
    assert prob.argmax() == freq.argmin()  # the rarest class is the likeliest


def test_sampler_frequencies_match_the_formula():
    counts = random_counts(1, n=60)
    sampler = RareClassSampler(counts, temperature=0.1, min_pixels=50, num_samples=40000, seed=3)
    picks = list(sampler)
    assert len(picks) == 40000
    drawn = np.bincount([c for _, c in picks], minlength=19) / len(picks)
    expected = np.zeros(19)
    expected[sampler.classes] = sampler.probabilities
    tolerance = 5 * np.sqrt(expected * (1 - expected) / len(picks)) + 1e-9
    assert np.all(np.abs(drawn - expected) <= tolerance)
    # Every image drawn for class c has strictly more than min_pixels of it.
    for index, c in picks[:2000]:
        assert counts[index, c] > 50


def test_min_pixels_is_strict_and_images_are_uniform_within_a_class():
    counts = np.zeros((4, 19), dtype=np.int64)
    counts[:, 0] = 10_000
    counts[0, 5] = 3000  # exactly min_pixels: not eligible (DAFormer: pixels > min_pixels)
    counts[1:, 5] = 3001
    sampler = RareClassSampler(counts, num_samples=30000, seed=0)
    assert sampler.pools[5].tolist() == [1, 2, 3]
    images = np.bincount([i for i, c in sampler if c == 5], minlength=4)
    assert images[0] == 0
    assert images[1:].min() > 0.9 * images[1:].mean()


def test_deterministic_for_a_seed_and_epoch():
    counts = random_counts(2)
    a = RareClassSampler(counts, num_samples=50, seed=11)
    b = RareClassSampler(counts, num_samples=50, seed=11)
    first, second = list(a), list(a)
    assert first == list(b)
    assert first != second  # the next epoch draws differently
    b.set_epoch(1)
    assert list(b) == second
    assert list(RareClassSampler(counts, num_samples=50, seed=12)) != first


def test_classes_without_eligible_image_are_dropped_and_logged(caplog):
    counts = np.zeros((3, 19), dtype=np.int64)
    counts[:, 0] = 50_000
    counts[0, 18] = 100  # bicycle present, but in no image above min_pixels
    counts[1, 11] = 5000
    with caplog.at_level(logging.INFO, logger="gbw.data.sampling"):
        sampler = RareClassSampler(counts, seed=0)
    assert sampler.classes.tolist() == [0, 11]
    full = daformer_probs(counts, 0.01)
    np.testing.assert_allclose(
        sampler.probabilities, np.array([full[0], full[11]]) / (full[0] + full[11])
    )
    assert "no image has more than 3000 pixels of bicycle" in caplog.text
    assert "rare-class sampling: T=0.01, min_pixels=3000, 3 images" in caplog.text
    assert "person" in caplog.text and "freq f_c" in caplog.text


class ArrayDataset(SegmentationDataset):
    """In-memory arrays behind the file interface."""

    def __init__(self, image: np.ndarray, label: np.ndarray, transform) -> None:
        super().__init__([SampleFiles("a", Path("img"), Path("lbl"))], transform=transform)
        self.arrays = {"img": image, "lbl": label}

    def read_image(self, path: Path) -> np.ndarray:
        return self.arrays[str(path)]

    def read_label(self, path: Path) -> np.ndarray:
        return self.arrays[str(path)]


def test_crop_is_retried_until_the_class_is_in_it():
    label = np.zeros((48, 48), dtype=np.uint8)
    label[:, 24:] = 1  # two big classes keep the cat_max_ratio check satisfied
    label[:16, :16] = 7  # the rare class sits in one corner: ~24% of crops hold > 100 pixels
    image = np.zeros((48, 48, 3), dtype=np.uint8)

    def fraction(min_crop_ratio: float) -> float:
        ds = ArrayDataset(image, label, TrainTransform(crop_size=(32, 32), flip_prob=0, seed=0))
        rcs = RareClassDataset(ds, min_pixels=100, min_crop_ratio=min_crop_ratio)
        hits = [int((rcs[(0, 7)]["label"] == 7).sum()) > 100 for _ in range(60)]
        return float(np.mean(hits))

    assert fraction(1.0) > 0.8  # 1 - 0.76**11 = 0.95 expected
    assert fraction(0.0) < 0.45
    ds = ArrayDataset(image, label, TrainTransform(crop_size=(32, 32), seed=0))
    sample = RareClassDataset(ds, min_pixels=100)[(0, 7)]
    assert int(sample["rcs_class"]) == 7
    assert RareClassDataset(ds)[0]["name"] == "a"  # plain index: plain sample


def test_from_dataset_aligns_statistics_by_name(tmp_path, fake):
    root = tmp_path / "gta"
    fake.gta(root, n=4, size=(64, 48))
    prepare_dataset("gta", root, progress=False)
    ds = GTA5(root, limit=3)
    sampler = RareClassSampler.from_dataset(ds, min_pixels=10, num_samples=20, seed=0)
    assert sampler.counts.shape == (3, 19)
    assert all(0 <= i < 3 for i, _ in sampler)
    with pytest.raises(ValueError, match="class statistics cover 1 of 3 samples"):
        RareClassSampler.from_dataset(ds, names=["images/00001.png"], counts=np.ones((1, 19)))
    with pytest.raises(ValueError, match="needs a labelled"):
        RareClassDataset(GTA5(root, with_labels=False))
