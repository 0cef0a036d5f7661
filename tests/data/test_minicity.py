"""MiniCity: deterministic generation, documented class statistics, dataset interface, cache."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from gbw.data.classes import IGNORE_INDEX, NUM_CLASSES, THING_CLASSES
from gbw.data.io import read_gray
from gbw.data.minicity import (
    CONFUSABLE_PAIRS,
    EVAL_CLASSES,
    PRIOR_SHIFT,
    SIZES,
    SOURCE_UNDER_1PCT,
    SPLITS,
    MiniCity,
    Size,
    class_table,
    default_root,
    describe,
    ensure_minicity,
    load_class_stats,
    minicity_dir,
    render_counts,
)
from gbw.data.minicity import cache as cache_mod
from gbw.data.minicity.domains import SOURCE, TARGET
from gbw.data.minicity.scene import render
from gbw.data.minicity.stats import (
    instance_areas,
    label_counts,
    present_medians,
    render_split,
)
from gbw.data.minicity.textures import texture_bank

N_STATS = 100  # images per domain re-rendered to check the documented statistics
HW = (SIZES["default"].height, SIZES["default"].width)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated quick copy shared by the read-only tests (serial generation)."""
    return ensure_minicity(tmp_path_factory.mktemp("mc"), seed=0, size="quick", workers=1)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    """A 9-image size for the cache-behaviour tests."""
    monkeypatch.setitem(SIZES, "tiny", Size(4, 1, 2, 2))
    return "tiny"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(label, panoptic) of the first N_STATS training images of each domain, in memory."""
    return {d: render_split(f"{d}_train", N_STATS) for d in ("source", "target")}


@pytest.fixture(scope="module")
def counts(rendered: dict) -> dict[str, np.ndarray]:
    return {d: label_counts([lab for lab, _ in maps]) for d, maps in rendered.items()}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---- determinism ---------------------------------------------------------------------------


def test_render_is_deterministic_per_image_seed() -> None:
    for domain in (SOURCE, TARGET):
        a = render(domain, np.random.default_rng([0, 2, 7]), HW)
        b = render(domain, np.random.default_rng([0, 2, 7]), HW)
        c = render(domain, np.random.default_rng([0, 2, 8]), HW)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[2], c[2])
        assert a[0].dtype == np.uint8 and a[0].shape == (*HW, 3)
        assert a[1].dtype == np.uint8 and a[1].shape == HW
        assert a[2].dtype == np.int64 and a[2].shape == HW


def test_generation_is_byte_identical_across_runs(quick: Path, tmp_path: Path) -> None:
    again = ensure_minicity(tmp_path, seed=0, size="quick", workers=1)
    assert again.name == quick.name
    a, b = _files(quick), _files(again)
    assert len(a) == 3 * 100 + 4 + 1  # images + labels + panoptic, 4 class_stats, meta
    assert a == b


def test_worker_processes_do_not_change_the_output(tmp_path: Path, tiny: str) -> None:
    serial = ensure_minicity(tmp_path / "serial", size=tiny, workers=1)
    parallel = ensure_minicity(tmp_path / "parallel", size=tiny, workers=2)
    assert _files(serial) == _files(parallel)


def test_seed_changes_the_data(quick: Path, tmp_path: Path, tiny: str) -> None:
    a = ensure_minicity(tmp_path, seed=0, size=tiny, workers=1)
    b = ensure_minicity(tmp_path, seed=1, size=tiny, workers=1)
    assert a != b
    img = "source/train/images/00000.png"
    assert (a / img).read_bytes() != (b / img).read_bytes()


# ---- documented statistics -------------------------------------------------------------


def test_documented_source_imbalance(counts: dict[str, np.ndarray]) -> None:
    """The "Imbalanced" criterion of docs/minicity.md (measured on the default size's 1,000
    source images by benchmarks/minicity_criteria.py) on the first N_STATS, with slack."""
    share = counts["source"].sum(0) / counts["source"].sum()
    under = [c for c in range(NUM_CLASSES) if share[c] < 0.01]
    assert len(under) >= 6, under
    for c in SOURCE_UNDER_1PCT:
        assert share[c] < 0.01, (c, share[c])
    assert len(SOURCE_UNDER_1PCT) >= 6
    assert share.max() / share.min() >= 250, share.max() / share.min()
    # Frequent classes dominate: road + building + sky are over half of the source pixels.
    assert share[[0, 2, 10]].sum() > 0.5


def test_every_class_is_visible_where_it_occurs(counts: dict[str, np.ndarray]) -> None:
    """The "Visible" criterion (median pixels per image where a class occurs >= 40, measured
    on the default size by benchmarks/minicity_criteria.py) with slack for 100 images."""
    for d, cnt in counts.items():
        med = present_medians(cnt)
        assert np.isfinite(med).all(), d
        assert med.min() >= 30, (d, {c: med[c] for c in np.flatnonzero(med < 40)})
        assert np.median(med) >= 100, d


def test_thing_instances_are_visible(rendered: dict) -> None:
    """Median visible area of the thing instances of each class (criterion: >= 25 px)."""
    for d, maps in rendered.items():
        areas: dict[int, list[int]] = {}
        for _, pan in maps:
            for c, a in instance_areas(pan).items():
                areas.setdefault(c, []).extend(a)
        assert set(areas) == set(THING_CLASSES), (d, sorted(areas))
        for c, a in areas.items():
            assert np.median(a) >= 25, (d, c, np.median(a), len(a))


def test_documented_prior_shift(counts: dict[str, np.ndarray]) -> None:
    src = counts["source"].sum(0) / counts["source"].sum()
    tgt = counts["target"].sum(0) / counts["target"].sum()
    for c, sign in PRIOR_SHIFT.items():
        assert sign * (tgt[c] - src[c]) > 0, (c, src[c], tgt[c])
        # A real shift, not noise: at least 1.3x in the documented direction.
        ratio = tgt[c] / src[c] if sign > 0 else src[c] / tgt[c]
        assert ratio > 1.3, (c, ratio)


def test_all_eval_classes_are_drawn(counts: dict[str, np.ndarray]) -> None:
    assert tuple(range(NUM_CLASSES)) == EVAL_CLASSES
    for d in ("source", "target"):
        present = counts[d].sum(0) > 0
        assert all(present[c] for c in EVAL_CLASSES), (d, np.flatnonzero(~present))


def test_confusable_pairs_are_rare_vs_frequent(counts: dict[str, np.ndarray]) -> None:
    share = counts["source"].sum(0)
    for rare, frequent in CONFUSABLE_PAIRS:
        assert share[rare] < share[frequent]


def test_class_stats_match_labels_and_in_memory_render(quick: Path) -> None:
    for split, (_, folder, _) in SPLITS.items():
        names, counts = load_class_stats(split, quick.parent, seed=0, size="quick")
        assert counts.dtype == np.int64 and counts.shape == (SIZES["quick"].count(split), 19)
        for name, row in zip(names[:3], counts[:3]):
            label = read_gray(quick / name.replace("/images/", "/labels/"))
            assert np.array_equal(np.bincount(label.ravel(), minlength=256)[:19], row)
        assert names[0] == f"{folder}/images/00000.png"
    _, src = load_class_stats("source_train", quick.parent, seed=0, size="quick")
    assert np.array_equal(render_counts("source_train", 5), src[:5])


def test_class_table_and_describe(quick: Path) -> None:
    rows = class_table(quick.parent, seed=0, size="quick")
    assert [r.train_id for r in rows] == list(range(19))
    assert sum(r.source_pixels for r in rows) == pytest.approx(100.0)
    # shares of labelled pixels: the target's ignored bonnet is not in the denominator
    assert sum(r.target_pixels for r in rows) == pytest.approx(100.0)
    text = describe(quick.parent, seed=0, size="quick")
    assert len(text.splitlines()) == 2 + 19 and "| 16 | train |" in text


# ---- dataset interface --------------------------------------------------------------------


def test_dataset_samples_follow_the_interface(quick: Path) -> None:
    ds = MiniCity("source_train", quick.parent, size="quick")
    assert len(ds) == SIZES["quick"].source_train and ds.EVAL_CLASSES == EVAL_CLASSES
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, *HW)
    assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
    assert s["label"].dtype == torch.int64 and s["label"].shape == HW
    assert s["name"] == "source/train/images/00000.png"
    assert set(s["label"].unique().tolist()) <= set(EVAL_CLASSES)  # source: no ignore pixels

    val = MiniCity("target_val", quick.parent, size="quick")[0]
    assert IGNORE_INDEX in val["label"].unique().tolist()  # the ego-vehicle bonnet


def test_target_train_hides_labels_by_default(quick: Path) -> None:
    ds = MiniCity("target_train", quick.parent, size="quick")
    assert "label" not in ds[0]
    assert "label" in MiniCity("target_train", quick.parent, size="quick", with_labels=True)[0]
    with pytest.raises(ValueError, match="unknown MiniCity split"):
        MiniCity("target_test", quick.parent, size="quick")


def test_dataset_applies_transform(quick: Path) -> None:
    def flip(image: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        return image[:, ::-1], None if label is None else label[:, ::-1]

    plain = MiniCity("source_val", quick.parent, size="quick")[1]
    flipped = MiniCity("source_val", quick.parent, size="quick", transform=flip)[1]
    assert torch.equal(plain["image"].flip(-1), flipped["image"])
    assert torch.equal(plain["label"].flip(-1), flipped["label"])


# ---- cache ---------------------------------------------------------------------------------


def test_cache_is_reused(quick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("regenerated a complete cache")

    monkeypatch.setattr(cache_mod, "_generate", boom)
    assert ensure_minicity(quick.parent, seed=0, size="quick") == quick


def test_regenerates_when_the_version_changes(
    tmp_path: Path, tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ensure_minicity(tmp_path, size=tiny, workers=1)
    monkeypatch.setattr(cache_mod, "VERSION", "v999")
    new = ensure_minicity(tmp_path, size=tiny, workers=1)
    assert new != old and "v999" in new.name
    assert json.loads((new / "meta.json").read_text())["version"] == "v999"


def test_generation_is_atomic(tmp_path: Path, tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = cache_mod._render_one
    calls = []

    def dies_midway(job: tuple) -> list[int]:
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if the user hit Ctrl-C halfway through
        return real(job)

    monkeypatch.setattr(cache_mod, "_render_one", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_minicity(tmp_path, size=tiny, workers=1)
    assert list(tmp_path.iterdir()) == []  # no half cache, no temp dir left behind
    monkeypatch.setattr(cache_mod, "_render_one", real)
    assert (ensure_minicity(tmp_path, size=tiny, workers=1) / "meta.json").is_file()


def test_stale_temp_dirs_and_incomplete_copies_are_replaced(tmp_path: Path, tiny: str) -> None:
    final = minicity_dir(tmp_path, 0, tiny)
    dead = tmp_path / f".{final.name}.tmp-{2**22 + 12345}-abc"  # beyond pid_max: a killed run
    (dead / "source").mkdir(parents=True)
    final.mkdir()
    (final / "junk.png").write_bytes(b"half")  # an incomplete copy without meta.json
    out = ensure_minicity(tmp_path, size=tiny, workers=1)
    assert out == final and not dead.exists() and not (final / "junk.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_default_root_and_unknown_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GBW_DATA", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("GBW_DATA")
    assert default_root() == Path.home() / ".cache" / "gbw" / "minicity"
    with pytest.raises(ValueError, match="unknown MiniCity size"):
        ensure_minicity(tmp_path, size="huge")


def test_textures_come_from_bundled_files_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access during texture loading")

    texture_bank.cache_clear()
    monkeypatch.setattr(socket, "socket", no_network)
    bank = texture_bank()
    assert set(bank.grey) == {"brick", "grass", "gravel", "camera", "moon"}
    for t in bank.grey.values():
        assert np.isfinite(t).all() and abs(float(t.mean())) < 1e-3
    for p in bank.colour.values():
        assert p.ndim == 3 and p.shape[2] == 3 and p.min() >= 0.0 and p.max() <= 1.0
