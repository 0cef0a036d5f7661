"""Your own dataset: a folder of images and a folder of label PNGs matched by name.

Layout (``data.<domain>.name: folder``; ``image_dir`` / ``label_dir`` default to ``images`` and
``labels``; ``split`` is a sub-folder of each, ``split: ""`` uses them directly)::

    <root>/images/<split>/**/<stem>.<png|jpg|jpeg|webp|bmp|tif|tiff>
    <root>/labels/<split>/**/<stem>.png        (same relative path and stem)

Labels are single-channel PNGs (8- or 16-bit grey, or palette PNGs whose *indices* are the
ids) holding raw ids. A label map YAML (``labels_map``) turns them into trainIds and names the
classes::

    classes: [road, building, vegetation, sky, car]   # trainIds 0..4, in this order
    ids:                                              # raw id -> trainId; unlisted -> ignore
      1: 0
      2: 1
      7: 2
      9: 3
      12: 4
    ignore: [0, 255]          # optional: raw ids that are ignore on purpose (no warning)
    palette: [[128, 64, 128], ...]   # optional colours for gbw predict

Without ``ids`` the labels already hold trainIds (0..C-1, 255 = ignore). ``gbw data check
folder`` reports every problem with the file it is about (pairing both ways, decoding, sizes,
unknown ids); ``gbw data prepare folder`` writes per-image class pixel counts to
``<root>/gbw_class_stats_<split>.json`` for rare-class sampling and the frequency baselines.
Labels are mapped on the fly (one table lookup), so no label files are written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gbw.data.base import SampleFiles, SegmentationDataset, Transform
from gbw.data.classes import IGNORE_INDEX
from gbw.data.io import decode_rgb, read_label_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
STATS_FORMAT = "gbw-class-stats"
STATS_VERSION = 1


@dataclass(frozen=True)
class LabelMap:
    """Class names and the raw id -> trainId table of a folder dataset."""

    classes: tuple[str, ...]
    ids: dict[int, int] | None  # None: labels already hold trainIds
    ignore: frozenset[int] = frozenset({IGNORE_INDEX})
    palette: tuple[tuple[int, int, int], ...] | None = None
    path: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def table(self, size: int = 65536) -> np.ndarray:
        """Lookup table raw id -> trainId (uint8) over ``size`` ids; unknown ids -> 255."""
        lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
        if self.ids is None:
            n = min(self.num_classes, size)
            lut[:n] = np.arange(n, dtype=np.uint8)
        else:
            for raw, train in self.ids.items():
                if raw < size:
                    lut[raw] = train
        return lut

    def known(self, raw: int) -> bool:
        """Is ``raw`` an id the map expects (mapped or ignored on purpose)?"""
        if raw in self.ignore:
            return True
        if self.ids is None:
            return 0 <= raw < self.num_classes
        return raw in self.ids


def load_label_map(path: str | Path) -> LabelMap:
    """Read and check a label map YAML (format in the module docstring); errors name the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label map not found (data.*.labels_map / --labels-map)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "classes" not in data:
        raise ValueError(f"{path}: expected a mapping with 'classes' (and optionally 'ids')")
    unknown = set(data) - {"classes", "ids", "ignore", "palette"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected classes, ids, ...")
    classes = data["classes"]
    if not isinstance(classes, list) or not classes or len(classes) > 255:
        raise ValueError(f"{path}: 'classes' must be a list of 1..255 class names")
    if len(set(map(str, classes))) != len(classes):
        raise ValueError(f"{path}: 'classes' holds a name twice")
    n = len(classes)
    ids = None
    if data.get("ids") is not None:
        if not isinstance(data["ids"], dict):
            raise ValueError(f"{path}: 'ids' must map raw ids to trainIds, e.g. '7: 0'")
        ids = {}
        for raw, train in data["ids"].items():
            if not isinstance(raw, int) or not 0 <= raw < 65536:
                raise ValueError(f"{path}: ids: raw id {raw!r} is not an integer in 0..65535")
            if not isinstance(train, int) or not (0 <= train < n or train == IGNORE_INDEX):
                raise ValueError(
                    f"{path}: ids: {raw}: {train!r} is not a trainId (0..{n - 1}, or 255 = ignore)"
                )
            ids[raw] = train
    ignore = data.get("ignore", [IGNORE_INDEX])
    if not isinstance(ignore, list) or not all(isinstance(i, int) for i in ignore):
        raise ValueError(f"{path}: 'ignore' must be a list of raw ids")
    palette = data.get("palette")
    if palette is not None:
        ok = isinstance(palette, list) and len(palette) == n
        ok = ok and all(
            isinstance(c, list) and len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette
        )
        if not ok:
            raise ValueError(f"{path}: 'palette' must list one [r, g, b] (0..255) per class")
        palette = tuple(tuple(int(v) for v in c) for c in palette)
    return LabelMap(
        classes=tuple(str(c) for c in classes),
        ids=ids,
        ignore=frozenset(ignore) | ({IGNORE_INDEX} if ids is None else frozenset()),
        palette=palette,  # type: ignore[arg-type]
        path=str(path),
    )


# --- files --------------------------------------------------------------------------------------


@dataclass
class FolderScan:
    """Images paired with labels by relative stem, and what did not pair."""

    pairs: list[SampleFiles]
    images_without_label: list[Path] = field(default_factory=list)
    labels_without_image: list[Path] = field(default_factory=list)
    duplicate_stems: list[tuple[Path, Path]] = field(default_factory=list)


def _walk(folder: Path, suffixes: Sequence[str]) -> tuple[dict[str, Path], list[tuple[Path, Path]]]:
    """(relative stem (posix, no extension) -> file, pairs of files sharing a stem), for the
    files with one of ``suffixes``."""
    found: dict[str, Path] = {}
    dupes: list[tuple[Path, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in suffixes:
                continue
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if stem in found:
                dupes.append((found[stem], path))
                continue
            found[stem] = path
    return found, dupes


def folder_paths(root: str | Path, split: str, image_dir: str, label_dir: str) -> tuple[Path, Path]:
    root = Path(root)
    images, labels = root / image_dir, root / label_dir
    if split:
        images, labels = images / split, labels / split
    return images, labels


def scan_folder(
    root: str | Path, split: str = "", image_dir: str = "images", label_dir: str = "labels"
) -> FolderScan:
    """Pair ``<images>/<rel>/<stem>.<ext>`` with ``<labels>/<rel>/<stem>.png``; FileNotFoundError
    naming the folder when the image folder does not exist."""
    images_root, labels_root = folder_paths(root, split, image_dir, label_dir)
    if not images_root.is_dir():
        raise FileNotFoundError(
            f"{images_root}: image folder not found (expected <root>/{image_dir}/<split>/...; "
            "data.*.image_dir, data.*.split)"
        )
    images, dupes = _walk(images_root, IMAGE_SUFFIXES)
    labels = _walk(labels_root, (".png",))[0] if labels_root.is_dir() else {}
    pairs = [
        SampleFiles(p.relative_to(Path(root)).as_posix(), p, labels.get(stem))
        for stem, p in sorted(images.items())
    ]
    return FolderScan(
        pairs=pairs,
        images_without_label=[images[s] for s in sorted(images) if s not in labels],
        labels_without_image=[labels[s] for s in sorted(labels) if s not in images],
        duplicate_stems=dupes,
    )


# --- the dataset --------------------------------------------------------------------------------


class FolderDataset(SegmentationDataset):
    """Images and raw-id label PNGs in two folders (module docstring), labels as trainIds.

    ``CLASSES``, ``NUM_CLASSES`` and ``EVAL_CLASSES`` come from the label map.
    """

    NAME = "folder"

    def __init__(
        self,
        root: str | Path,
        split: str = "",
        *,
        labels_map: str | Path,
        image_dir: str = "images",
        label_dir: str = "labels",
        with_labels: bool = True,
        transform: Transform | None = None,
        limit: int | None = None,
    ) -> None:
        if not str(root):
            raise ValueError("data.*.root: a folder dataset needs its root folder")
        self.label_map = load_label_map(labels_map)
        scan = scan_folder(root, split, image_dir, label_dir)
        pairs = scan.pairs[:limit] if limit else scan.pairs
        if not pairs:
            raise FileNotFoundError(
                f"{folder_paths(root, split, image_dir, label_dir)[0]}: no images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        if with_labels:
            missing = [p for p in pairs if p.label is None]
            if missing:
                labels_root = folder_paths(root, split, image_dir, label_dir)[1]
                raise FileNotFoundError(
                    f"{missing[0].image}: no label {labels_root}/<same path>.png; "
                    f"{len(missing)} of {len(pairs)} images have none (gbw data check folder)"
                )
        super().__init__(pairs, with_labels=with_labels, transform=transform)
        self.root, self.split = Path(root), split
        self.CLASSES = self.label_map.classes
        self.NUM_CLASSES = self.label_map.num_classes
        self.EVAL_CLASSES = tuple(range(self.NUM_CLASSES))
        self._lut = self.label_map.table()

    def read_image(self, path: Path) -> np.ndarray:
        return decode_rgb(path)

    def read_label(self, path: Path) -> np.ndarray:
        return map_label(read_raw_label(path), self._lut, path)

    def __repr__(self) -> str:
        return f"FolderDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def read_raw_label(path: Path) -> np.ndarray:
    """A label PNG's stored ids (grey levels, 16-bit values or palette indices), (H, W)."""
    arr = read_label_png(path)
    if arr.ndim != 2:
        raise ValueError(
            f"{path}: expected a single-channel label PNG (grey or palette), got "
            f"{arr.shape[2]} channels"
        )
    return arr


def map_label(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype not in (np.uint8, np.uint16, np.int32):
        raise ValueError(f"{path}: label values of type {raw.dtype}; expected 8- or 16-bit")
    return np.take(lut, np.clip(raw, 0, lut.size - 1))


# --- check and prepare --------------------------------------------------------------------------


@dataclass
class FolderReport:
    """``gbw data check|prepare folder``: problems (fail), notes, per-class pixel counts."""

    root: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0
    pairs: int = 0
    names: list[str] = field(default_factory=list)
    counts: np.ndarray | None = None
    stats_file: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, classes: Sequence[str] = ()) -> str:
        lines = [f"folder dataset at {self.root}: {self.images} images, {self.pairs} labelled"]
        if self.counts is not None and len(classes):
            total = self.counts.sum(0)
            share = total / max(int(total.sum()), 1)
            present = (self.counts > 0).sum(0)
            lines.append(f"  {'class':<16}{'pixels %':>9}{'images':>8}")
            for name, s, k in zip(classes, share, present):
                lines.append(f"  {name:<16}{100 * s:>9.2f}{int(k):>8}")
        from gbw.data.check import verdict_lines

        lines += verdict_lines(self.notes, self.problems, self.root, "folder dataset")
        if self.stats_file is not None:
            lines.append(f"class statistics -> {self.stats_file}")
        return "\n".join(lines)


def _check_one(job: tuple[SampleFiles, LabelMap]) -> dict[str, Any]:
    files, label_map = job
    out: dict[str, Any] = {"problems": [], "unknown": [], "counts": None}
    shape = None
    try:
        shape = decode_rgb(files.image).shape
    except (OSError, ValueError) as exc:
        out["problems"].append(str(exc))
    if files.label is None:
        return out
    try:
        raw = read_raw_label(files.label)
    except (OSError, ValueError) as exc:
        out["problems"].append(str(exc))
        return out
    if shape is not None and raw.shape != shape[:2]:
        out["problems"].append(
            f"{files.label}: size {raw.shape[1]}x{raw.shape[0]} does not match image "
            f"{shape[1]}x{shape[0]}"
        )
    values = np.unique(raw)
    unknown = [int(v) for v in values if not label_map.known(int(v))]
    if unknown:
        out["unknown"] = unknown
    train = map_label(raw, label_map.table(), files.label)
    n = label_map.num_classes
    out["counts"] = np.bincount(train.ravel(), minlength=256)[:n].astype(np.int64).tolist()
    return out


def check_folder(
    root: str | Path,
    labels_map: str | Path,
    *,
    split: str = "",
    image_dir: str = "images",
    label_dir: str = "labels",
    workers: int = 1,
    write_stats: bool = False,
) -> FolderReport:
    """Decode every image and label, report each problem with its file; with ``write_stats``
    also write the class statistics (``gbw data prepare folder``) when nothing is wrong."""
    from gbw.data.prepare import stats_path
    from gbw.data.real import parallel_map
    from gbw.fileio import write_text

    root = Path(root)
    report = FolderReport(root)
    try:
        label_map = load_label_map(labels_map)
        scan = scan_folder(root, split, image_dir, label_dir)
    except (FileNotFoundError, ValueError) as exc:
        report.problems.append(str(exc))
        return report
    report.images = len(scan.pairs)
    if not scan.pairs:
        report.problems.append(f"{folder_paths(root, split, image_dir, label_dir)[0]}: no images")
    for image in scan.images_without_label:
        report.problems.append(f"{image}: no label PNG with the same relative name")
    for label in scan.labels_without_image:
        report.problems.append(f"{label}: label has no image with the same relative name")
    for first, second in scan.duplicate_stems:
        report.problems.append(f"{second}: same name as {first} (one label cannot serve both)")
    labelled = [p for p in scan.pairs if p.label is not None]
    report.pairs = len(labelled)
    rows: list[list[int]] = []
    unknown: dict[int, list[Path]] = {}
    results = parallel_map(_check_one, [(p, label_map) for p in scan.pairs], workers)
    for files, result in zip(scan.pairs, results):
        report.problems += result["problems"]
        for v in result["unknown"]:
            unknown.setdefault(v, []).append(files.label)  # type: ignore[arg-type]
        if result["counts"] is not None:
            report.names.append(files.name)
            rows.append(result["counts"])
    for v, files in sorted(unknown.items()):
        report.problems.append(
            f"{files[0]}: raw id {v} is not in {label_map.path} (ids or ignore); found in "
            f"{len(files)} label(s), read as ignore (255)"
        )
    n = label_map.num_classes
    report.counts = np.asarray(rows, dtype=np.int64).reshape(len(rows), n)
    absent = [label_map.classes[c] for c in range(n) if report.counts[:, c].sum() == 0]
    if absent and labelled:
        report.notes.append(f"class(es) with no labelled pixel: {', '.join(absent)}")
    stats = stats_path(root, split or "all")
    if write_stats and report.ok:
        payload = {
            "format": STATS_FORMAT,
            "version": STATS_VERSION,
            "dataset": "folder",
            "split": split,
            "classes": list(label_map.classes),
            "names": report.names,
            "counts": report.counts.tolist(),
        }
        write_text(stats, json.dumps(payload, separators=(",", ":")))
        report.stats_file = stats
    elif not write_stats and not stats.is_file():
        report.notes.append(
            f"{stats}: no class statistics yet (rare-class sampling and frequency baselines "
            "need them); run gbw data prepare folder with the same options"
        )
    return report


def load_folder_stats(
    root: str | Path, split: str, classes: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """(sample names, (N, C) class pixel counts) written by ``gbw data prepare folder``."""
    from gbw.data.prepare import stats_path

    path = stats_path(root, split or "all")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: class statistics not found; run `gbw data prepare folder --root {root} "
            "--labels-map ...` first"
        )
    payload = json.loads(path.read_text())
    if payload.get("format") != STATS_FORMAT or payload.get("classes") != list(classes):
        raise ValueError(
            f"{path}: statistics of other classes ({payload.get('classes')}); run gbw data "
            "prepare folder again"
        )
    names = [str(n) for n in payload["names"]]
    return names, np.asarray(payload["counts"], dtype=np.int64).reshape(len(names), len(classes))
