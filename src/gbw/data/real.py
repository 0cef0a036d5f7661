"""What GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes share: file discovery in the reference layout
(``data/gta``, ``data/synthia``, ``data/cityscapes``), raw-id -> trainId lookup tables, the
prepared-label fast path and the errors that name the file.

Each dataset class only states its layout and its id table; the reading rules live here once.
Labels are read from ``*_labelTrainIds.png`` when ``gbw data prepare`` (or the reference
converters, which use the same names) already wrote them, and mapped from the raw ids on the fly
otherwise, with one vectorised table lookup.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from gbw.data.base import Sample, SampleFiles, SegmentationDataset, Transform
from gbw.data.classes import EVAL_SUBSETS, IGNORE_INDEX, NUM_CLASSES
from gbw.data.io import decode_rgb, read_label_png

TRAIN_ID_SUFFIX = "_labelTrainIds.png"
PANOPTIC_SUFFIX = "_panopticTrainIds.png"  # `gbw data prepare --panoptic` (gbw.data.panoptic)


@dataclass(frozen=True)
class Pair:
    """One image and where its labels are (or should be) on disk."""

    name: str  # image path relative to the dataset root, the sample's id
    image: Path
    raw_label: Path  # the dataset's own label file (raw ids)
    prepared_label: Path  # the trainId PNG written by `gbw data prepare`
    has_raw: bool
    has_prepared: bool
    prepared_panoptic: Path | None = None  # the panoptic map `prepare --panoptic` writes
    has_panoptic: bool = False

    @property
    def label(self) -> Path | None:
        """The label file to read: the prepared one when present (fast path), else the raw one."""
        if self.has_prepared:
            return self.prepared_label
        return self.raw_label if self.has_raw else None


@dataclass
class Scan:
    """Everything found for one split: image/label pairs and raw labels without an image."""

    split: str
    pairs: list[Pair]
    orphan_labels: list[Path]


def _list_files(folder: Path, suffix: str) -> list[str]:
    """Names of the regular files in ``folder`` ending with ``suffix``, sorted (one scandir)."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.name.endswith(suffix) and e.is_file())
    except FileNotFoundError:
        return []


def _list_dirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir())
    except FileNotFoundError:
        return []


class RealDataset(SegmentationDataset):
    """A dataset on disk in the DAFormer/HRDA/MIC layout.

    Args:
        root: dataset root (default: ``DEFAULT_ROOT``, e.g. ``data/gta``).
        split: one of ``SPLITS``.
        with_labels: read labels (source training and evaluation). Target training sets are
            built with ``False`` so their labels can never reach a training step.
        transform: ``(image, label) -> (image, label)`` on uint8 arrays, e.g.
            :class:`gbw.data.transforms.TrainTransform`.
        pseudo_margins: (top, bottom, left, right) pixels of the *full* image whose pseudo-labels
            are not trusted (HRDA/MIC: 30, 240, 30, 30). Adds a ``valid_pseudo_mask`` bool (H, W)
            to each sample, carried through the transform's crop and flip.
        limit: keep only the first ``limit`` images (sorted by name), for quick runs.
        with_panoptic: add each image's panoptic map (:mod:`gbw.data.panoptic`) as
            ``"panoptic"`` (int64 (H, W)), cropped and flipped with the label; needs labels and
            the files of ``gbw data prepare <dataset> --panoptic``.
    """

    NAME: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    DEFAULT_ROOT: ClassVar[str] = ""
    SPLITS: ClassVar[tuple[str, ...]] = ("train",)
    EXPECTED_COUNTS: ClassVar[dict[str, int]] = {}
    # (width, height) every image must have, or None where the dataset has no single size.
    IMAGE_SIZE: ClassVar[tuple[int, int] | None] = None
    # Raw ids that may legitimately appear in a label file (0..MAX_ID); others are "unknown".
    MAX_ID: ClassVar[int] = 255
    ID_TO_TRAIN_ID: ClassVar[dict[int, int]] = {}
    # Ids that exist in the dataset's class list but are mapped to ignore on purpose, with why.
    IGNORED_IDS: ClassVar[dict[int, str]] = {}
    LABEL_DTYPE: ClassVar[type] = np.uint8
    EVAL_CLASSES: ClassVar[dict[str, tuple[int, ...]]] = {"19": EVAL_SUBSETS["19"]}
    LAYOUT_HINT: ClassVar[str] = ""
    # the dataset has instance annotations (`gbw data prepare --panoptic`)
    HAS_INSTANCES: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        *,
        with_labels: bool = True,
        transform: Transform | None = None,
        pseudo_margins: Sequence[int] | None = None,
        limit: int | None = None,
        with_panoptic: bool = False,
    ) -> None:
        root = Path(root) if root is not None else Path(self.DEFAULT_ROOT)
        if split not in self.SPLITS:
            raise ValueError(f"{self.TITLE} has no split {split!r}; expected one of {self.SPLITS}")
        error = self.layout_error(root, [split], with_labels=with_labels)
        if error:
            raise FileNotFoundError(error)
        scan = self.scan(root, split)
        pairs = scan.pairs[:limit] if limit is not None else scan.pairs
        if not pairs:
            raise FileNotFoundError(
                f"{root / self.image_dir(split)}: no {self.TITLE} images found "
                f"(expected {self.LAYOUT_HINT})"
            )
        if with_labels:
            missing = [p for p in pairs if p.label is None]
            if missing:
                raise FileNotFoundError(
                    f"{missing[0].raw_label}: label file not found (expected for image "
                    f"{missing[0].image}); {len(missing)} of {len(pairs)} labels are missing, "
                    f"run `gbw data check {self.NAME} --root {root}` for the full list"
                )
        if with_panoptic:
            self._check_panoptic(root, pairs, with_labels)
        super().__init__(
            [SampleFiles(p.name, p.image, p.label) for p in pairs],
            with_labels=with_labels,
            transform=transform,
        )
        self.root = root
        self.split = split
        self.pairs = pairs
        self.pseudo_margins = tuple(pseudo_margins) if pseudo_margins is not None else None
        self.with_panoptic = with_panoptic

    def _check_panoptic(self, root: Path, pairs: list[Pair], with_labels: bool) -> None:
        if not self.HAS_INSTANCES:
            raise ValueError(f"{self.TITLE} has no instance annotations: no panoptic maps")
        if not with_labels:
            raise ValueError(
                "with_panoptic needs with_labels=True (target training sets carry no labels)"
            )
        missing = [p for p in pairs if not p.has_panoptic]
        if missing:
            raise FileNotFoundError(
                f"{missing[0].prepared_panoptic}: panoptic map not found ({len(missing)} of "
                f"{len(pairs)} missing); run `gbw data prepare {self.NAME} --panoptic --root "
                f"{root}` first"
            )

    # --- layout -----------------------------------------------------------------------------

    @classmethod
    def image_dir(cls, split: str) -> str:
        """Image folder of ``split``, relative to the root."""
        raise NotImplementedError

    @classmethod
    def label_dir(cls, split: str) -> str:
        """Label folder of ``split``, relative to the root."""
        raise NotImplementedError

    @classmethod
    def required_dirs(cls, splits: Sequence[str], *, with_labels: bool = True) -> list[str]:
        dirs: list[str] = []
        for split in splits:
            dirs.append(cls.image_dir(split))
            if with_labels:
                dirs.append(cls.label_dir(split))
        return list(dict.fromkeys(dirs))

    @classmethod
    def layout_error(
        cls, root: Path, splits: Sequence[str] | None = None, *, with_labels: bool = True
    ) -> str | None:
        """The wrong-root message naming ``root`` and the expected sub-folders, or None if fine."""
        expected = cls.required_dirs(splits or cls.SPLITS, with_labels=with_labels)
        listing = ", ".join(f"{d}/" for d in expected)
        if not root.is_dir():
            return (
                f"{root}: folder not found; expected a {cls.TITLE} root with the sub-folders "
                f"{listing} ({cls.LAYOUT_HINT})"
            )
        missing = [d for d in expected if not (root / d).is_dir()]
        if missing:
            return (
                f"{root}: not a {cls.TITLE} root; missing sub-folder(s) "
                f"{', '.join(f'{d}/' for d in missing)} (expected {listing}; {cls.LAYOUT_HINT})"
            )
        return None

    @classmethod
    def list_images(cls, root: Path, split: str) -> list[Path]:
        """All image files of ``split``, sorted."""
        raise NotImplementedError

    @classmethod
    def raw_label_for(cls, root: Path, split: str, image: Path) -> Path:
        """Where the raw label of ``image`` lives."""
        raise NotImplementedError

    @classmethod
    def prepared_label_for(cls, raw_label: Path) -> Path:
        """Where ``gbw data prepare`` writes the trainId label of ``raw_label``."""
        return raw_label.with_name(raw_label.name[: -len(".png")] + TRAIN_ID_SUFFIX)

    @classmethod
    def list_raw_labels(cls, root: Path, split: str) -> list[Path]:
        """All raw label files of ``split`` (to find labels that have no image)."""
        raise NotImplementedError

    @classmethod
    def prepared_panoptic_for(cls, raw_label: Path) -> Path:
        """Where ``gbw data prepare --panoptic`` writes the panoptic map of ``raw_label``."""
        return raw_label.with_name(raw_label.name[: -len(".png")] + PANOPTIC_SUFFIX)

    @classmethod
    def panoptic_source_for(cls, raw_label: Path) -> Path:
        """The file the panoptic map of ``raw_label`` is made from (datasets with instances)."""
        raise ValueError(f"{cls.TITLE} has no instance annotations")

    @classmethod
    def make_panoptic(cls, source: Path) -> np.ndarray:
        """The panoptic ids (int64 (H, W), :mod:`gbw.data.panoptic`) from ``source``."""
        raise ValueError(f"{cls.TITLE} has no instance annotations")

    @classmethod
    def scan(cls, root: str | Path, split: str) -> Scan:
        """Pair every image of ``split`` with its label files, one directory listing per folder."""
        root = Path(root)
        images = cls.list_images(root, split)
        raw_labels = cls.list_raw_labels(root, split)
        present = set(raw_labels)
        # The prepared labels sit next to the raw ones; list those folders once.
        prepared: set[Path] = set()
        panoptic: set[Path] = set()
        for folder in sorted(
            {p.parent for p in raw_labels}
            | {cls.raw_label_for(root, split, i).parent for i in images}
        ):
            prepared.update(folder / n for n in _list_files(folder, TRAIN_ID_SUFFIX))
            if cls.HAS_INSTANCES:
                panoptic.update(folder / n for n in _list_files(folder, PANOPTIC_SUFFIX))
        pairs = []
        expected_raw = set()
        for image in images:
            raw = cls.raw_label_for(root, split, image)
            expected_raw.add(raw)
            done = cls.prepared_label_for(raw)
            pan = cls.prepared_panoptic_for(raw) if cls.HAS_INSTANCES else None
            pairs.append(
                Pair(
                    name=image.relative_to(root).as_posix(),
                    image=image,
                    raw_label=raw,
                    prepared_label=done,
                    has_raw=raw in present,
                    has_prepared=done in prepared,
                    prepared_panoptic=pan,
                    has_panoptic=pan in panoptic,
                )
            )
        orphans = [p for p in raw_labels if p not in expected_raw]
        return Scan(split=split, pairs=pairs, orphan_labels=orphans)

    # --- labels -----------------------------------------------------------------------------

    @classmethod
    def read_raw_label(cls, path: Path) -> np.ndarray:
        """The raw id map of a dataset label file, (H, W) integers."""
        arr = read_label_png(path)
        if arr.ndim != 2:
            raise ValueError(
                f"{path}: expected a single-channel label image, got {arr.shape[2]} channels"
            )
        return arr

    @classmethod
    def lookup_table(cls) -> np.ndarray:
        """raw id -> trainId table covering every value of ``LABEL_DTYPE`` (255 = ignore)."""
        return _lookup_table(cls)

    @classmethod
    def to_train_ids(cls, raw: np.ndarray) -> np.ndarray:
        """Map raw ids to trainIds (uint8) with one table lookup."""
        if raw.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"label ids must be uint8 or uint16, got {raw.dtype}")
        return np.take(_lookup_table(cls, raw.dtype), raw)

    @classmethod
    def unknown_ids(cls, raw: np.ndarray) -> list[int]:
        """Ids in ``raw`` outside the dataset's id range 0..MAX_ID."""
        if raw.size == 0 or int(raw.max()) <= cls.MAX_ID:
            return []
        counts = np.bincount(raw.ravel())
        return [int(i) for i in np.flatnonzero(counts[cls.MAX_ID + 1 :]) + cls.MAX_ID + 1]

    def read_image(self, path: Path) -> np.ndarray:
        return decode_rgb(path)

    def read_label(self, path: Path) -> np.ndarray:
        if path.name.endswith(TRAIN_ID_SUFFIX):
            return read_prepared_label(path)
        return self.to_train_ids(self.read_raw_label(path))

    # --- samples ----------------------------------------------------------------------------

    def load(self, index: int) -> tuple[np.ndarray, ...]:
        """(image, label) as the base class, plus the panoptic ids with ``with_panoptic``."""
        image, label = super().load(index)
        if not self.with_panoptic:
            return image, label
        from gbw.data.panoptic import read_panoptic

        path = self.pairs[index].prepared_panoptic
        panoptic = read_panoptic(path)
        if panoptic.shape != image.shape[:2]:
            raise ValueError(
                f"{path}: size {panoptic.shape[1]}x{panoptic.shape[0]} does not match image "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return image, label, panoptic

    def make_sample(
        self,
        index: int,
        image: np.ndarray,
        label: np.ndarray | None,
        panoptic: np.ndarray | None = None,
    ) -> Sample:
        if self.pseudo_margins is None and panoptic is None:
            return super().make_sample(index, image, label)
        from gbw.data.panoptic import from_transform_code, to_transform_code
        from gbw.data.transforms import margin_mask

        # HRDA/MIC: the margin mask is drawn on the full image and then cropped with it, so only
        # crops at the image border lose pseudo-labels. The panoptic map travels as a mask too
        # (nearest, in its transform code: padding is void).
        masks = []
        if self.pseudo_margins is not None:
            masks.append(margin_mask(image.shape[0], image.shape[1], self.pseudo_margins))
        if panoptic is not None:
            masks.append(to_transform_code(panoptic))
        if self.transform is not None:
            apply = getattr(self.transform, "apply", None)
            if apply is None:
                raise TypeError(
                    "pseudo_margins and panoptic maps need a transform with an "
                    "apply(image, label, masks) method (gbw.data.transforms.TrainTransform) to "
                    "crop them with the image"
                )
            image, label, masks = apply(image, label, masks)
        out = self.to_sample(self.samples[index].name, image, label)
        if self.pseudo_margins is not None:
            out["valid_pseudo_mask"] = torch.from_numpy(np.ascontiguousarray(masks.pop(0)))
        if panoptic is not None:
            out["panoptic"] = torch.from_numpy(from_transform_code(masks.pop(0)))
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"n={len(self)}, with_labels={self.with_labels})"
        )


class FlatFolderDataset(RealDataset):
    """A dataset whose images and labels sit in two flat folders with the same file names
    (GTA5: ``images``/``labels``; SYNTHIA: ``RGB``/``GT/LABELS``)."""

    IMAGE_DIR: ClassVar[str] = ""
    LABEL_DIR: ClassVar[str] = ""

    @classmethod
    def image_dir(cls, split: str) -> str:
        return cls.IMAGE_DIR

    @classmethod
    def label_dir(cls, split: str) -> str:
        return cls.LABEL_DIR

    @classmethod
    def list_images(cls, root: Path, split: str) -> list[Path]:
        base = root / cls.image_dir(split)
        return [base / n for n in _list_files(base, ".png")]

    @classmethod
    def raw_label_for(cls, root: Path, split: str, image: Path) -> Path:
        return root / cls.label_dir(split) / image.name

    @classmethod
    def list_raw_labels(cls, root: Path, split: str) -> list[Path]:
        base = root / cls.label_dir(split)
        prepared = (TRAIN_ID_SUFFIX, PANOPTIC_SUFFIX)
        return [base / n for n in _list_files(base, ".png") if not n.endswith(prepared)]


def _init_cv_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def parallel_map(
    fn: Callable[[Any], Any], jobs: list, workers: int, *, ordered: bool = True
) -> Iterator[Any]:
    """``map(fn, jobs)`` over ``workers`` processes (in this process when 1); ``ordered``
    keeps results in job order (``check``'s report), else they come as they finish."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    from gbw.data.loader import worker_context  # forkserver: see there

    with worker_context().Pool(workers, initializer=_init_cv_worker) as pool:
        imap = pool.imap if ordered else pool.imap_unordered
        yield from imap(fn, jobs, chunksize=4)


def read_prepared_label(path: Path) -> np.ndarray:
    """A ``*_labelTrainIds.png``: single-channel uint8 trainIds."""
    arr = read_label_png(path)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected a single-channel 8-bit trainId image, got shape {arr.shape} "
            f"{arr.dtype}; delete it and run `gbw data prepare` again"
        )
    return arr


@functools.cache
def _lookup_table_cached(cls: type[RealDataset], size: int) -> np.ndarray:
    table = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw_id, train_id in cls.ID_TO_TRAIN_ID.items():
        if not (0 <= train_id < NUM_CLASSES):
            raise ValueError(f"{cls.__name__}: trainId {train_id} for id {raw_id} is out of range")
        table[raw_id] = train_id
    table.setflags(write=False)
    return table


def _lookup_table(cls: type[RealDataset], dtype: np.dtype | type | None = None) -> np.ndarray:
    dtype = np.dtype(dtype or cls.LABEL_DTYPE)
    return _lookup_table_cached(cls, 1 << (8 * dtype.itemsize))


def bad_train_ids(label: np.ndarray) -> list[int]:
    """Values in a trainId label that are neither 0..18 nor 255."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[:NUM_CLASSES] = 0
    counts[IGNORE_INDEX] = 0
    return [int(i) for i in np.flatnonzero(counts)]
