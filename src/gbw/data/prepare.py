"""``gbw data prepare``: trainId label PNGs and per-image class pixel counts, once per dataset.

For every labelled image it writes ``*_labelTrainIds.png`` next to the raw label (the names the
reference converters use, so trees prepared by either tool work with both) and counts the pixels
of each of the 19 classes. The counts feed rare-class sampling and the inverse image/pixel
frequency baselines through :func:`load_class_stats`.

Resumable and idempotent: each label PNG is written atomically, and each finished image appends
one line to a journal (``.gbw_prepare_<split>.jsonl`` in the root). A killed run continues where
it stopped; at the end the journal is merged into ``gbw_class_stats_<split>.json`` (written
atomically) and removed. A second run finds every output in place and does no work.

``panoptic=True`` (``--panoptic``; SYNTHIA and Cityscapes) also writes each image's panoptic map
(:mod:`gbw.data.panoptic`: ``*_panopticTrainIds.png`` next to the raw label, 16-bit) from the
label's instance channel (SYNTHIA) or ``*_gtFine_instanceIds.png`` (Cityscapes, with
cityscapesscripts' createPanopticImgs rules; needs ``pip install 'gbw[cityscapes]'``). Its
classes must equal the trainId label pixel for pixel. The class statistics do not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gbw.data.classes import CITYSCAPES_CLASSES, NUM_CLASSES
from gbw.data.io import write_png
from gbw.data.real import (
    PANOPTIC_SUFFIX,
    TRAIN_ID_SUFFIX,
    Pair,
    RealDataset,
    _list_files,
    parallel_map,
    read_prepared_label,
)
from gbw.data.registry import dataset_class
from gbw.fileio import write_text

STATS_FORMAT = "gbw-class-stats"
STATS_VERSION = 1


def stats_path(root: str | Path, split: str = "train") -> Path:
    """Where ``gbw data prepare`` writes the class statistics of ``split``."""
    return Path(root) / f"gbw_class_stats_{split}.json"


def journal_path(root: str | Path, split: str = "train") -> Path:
    return Path(root) / f".gbw_prepare_{split}.jsonl"


# --- class statistics ---------------------------------------------------------------------------


def class_pixel_counts(train_ids: np.ndarray) -> np.ndarray:
    """Pixels of each of the 19 classes in a trainId label (ignore excluded), int64 [19]."""
    return np.bincount(train_ids.ravel(), minlength=256)[:NUM_CLASSES].astype(np.int64)


def write_class_stats(
    path: Path, dataset: str, split: str, names: list[str], counts: np.ndarray
) -> None:
    """Write per-image class pixel counts as JSON, atomically."""
    payload = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "dataset": dataset,
        "split": split,
        "classes": list(CITYSCAPES_CLASSES),
        "names": names,
        "counts": counts.astype(np.int64).tolist(),
    }
    write_text(path, json.dumps(payload, separators=(",", ":")))


def _read_gbw_stats(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc.msg}); delete it and prepare again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != STATS_FORMAT:
        raise ValueError(f"{path}: not a gbw class statistics file (format {STATS_FORMAT!r})")
    if payload.get("version") != STATS_VERSION:
        raise ValueError(
            f"{path}: class statistics version {payload.get('version')}, expected {STATS_VERSION}"
        )
    names = [str(n) for n in payload["names"]]
    counts = np.asarray(payload["counts"], dtype=np.int64).reshape(len(names), NUM_CLASSES)
    return names, counts


def _read_daformer_stats(
    path: Path, cls: type[RealDataset], root: Path, split: str
) -> tuple[list[str], np.ndarray]:
    """DAFormer's ``sample_class_stats.json``: a list of {"file": <trainId label>, "<c>": n}."""
    entries = json.loads(path.read_text())
    by_label: dict[str, str] = {}
    for pair in cls.scan(root, split).pairs:
        rel = pair.prepared_label.relative_to(root)
        by_label["/".join(rel.parts)] = pair.name
    depth = len(next(iter(by_label)).split("/")) if by_label else 1
    names, rows = [], []
    for entry in entries:
        key = "/".join(Path(entry["file"]).parts[-depth:])
        if key not in by_label:
            continue  # e.g. a val file in Cityscapes' joint statistics
        row = np.zeros(NUM_CLASSES, dtype=np.int64)
        for c, n in entry.items():
            if c != "file":
                row[int(c)] = int(n)
        names.append(by_label[key])
        rows.append(row)
    if not names:
        raise ValueError(f"{path}: none of its files belong to {cls.TITLE} {split} under {root}")
    return names, np.stack(rows)


def load_class_stats(
    root: str | Path, dataset: str, split: str = "train"
) -> tuple[list[str], np.ndarray]:
    """Per-image class pixel counts of a prepared dataset.

    Returns:
        names: sample names (image paths relative to ``root``, as in the dataset's samples).
        counts: int64 array [N, 19], pixels of each trainId in each image at full resolution.

    Reads ``gbw_class_stats_<split>.json`` from ``gbw data prepare``; falls back to DAFormer's
    ``sample_class_stats.json`` (same counts, another format) when only that one exists.
    """
    root = Path(root)
    cls = dataset_class(dataset)
    path = stats_path(root, split)
    if path.is_file():
        return _read_gbw_stats(path)
    legacy = root / "sample_class_stats.json"
    if legacy.is_file():
        return _read_daformer_stats(legacy, cls, root, split)
    raise FileNotFoundError(
        f"{path}: class statistics not found; run `gbw data prepare {cls.NAME} --root {root}` first"
    )


# --- one image ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    dataset: str
    name: str
    image: str
    raw_label: str | None
    prepared_label: str
    panoptic_source: str | None = None  # with --panoptic: the file the map is made from
    panoptic_out: str | None = None


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception:
        raise ValueError(f"{path}: cannot decode image (corrupt or truncated file)") from None


def _prepare_one(job: _Job) -> dict:
    """Convert one label and count its classes; errors come back as a message, never raised."""
    cls = dataset_class(job.dataset)
    try:
        if job.raw_label is not None:
            raw = cls.read_raw_label(Path(job.raw_label))
            train_ids = cls.to_train_ids(raw)
            raw_counts = np.bincount(raw.ravel())
            unknown = [int(i) for i in np.flatnonzero(raw_counts) if i > cls.MAX_ID]
            ignored = [i for i in cls.IGNORED_IDS if i < raw_counts.size and raw_counts[i] > 0]
            label_file = job.raw_label
        else:  # only a prepared label exists (e.g. from the reference converters)
            train_ids = read_prepared_label(Path(job.prepared_label))
            unknown, ignored = [], []
            label_file = job.prepared_label
        width, height = _image_size(job.image)
        if train_ids.shape != (height, width):
            return {
                "name": job.name,
                "error": (
                    f"{label_file}: size {train_ids.shape[1]}x{train_ids.shape[0]} does not match "
                    f"image {width}x{height}"
                ),
            }
        if job.panoptic_out is not None:
            error = _prepare_panoptic(cls, job, train_ids)
            if error:
                return {"name": job.name, "error": error}
        if job.raw_label is not None:
            write_png(job.prepared_label, train_ids)
    except (OSError, ValueError) as exc:
        return {"name": job.name, "error": str(exc)}
    return {
        "name": job.name,
        "counts": class_pixel_counts(train_ids).tolist(),
        "unknown": unknown,
        "ignored": ignored,
    }


def _prepare_panoptic(cls: type[RealDataset], job: _Job, train_ids: np.ndarray) -> str | None:
    """Write the panoptic map of one image; a message when it does not fit its label."""
    from gbw.data.panoptic import semantic_of, write_panoptic

    assert job.panoptic_source is not None and job.panoptic_out is not None
    panoptic = cls.make_panoptic(Path(job.panoptic_source))
    if panoptic.shape != train_ids.shape:
        return (
            f"{job.panoptic_source}: size {panoptic.shape[1]}x{panoptic.shape[0]} does not match "
            f"the label {train_ids.shape[1]}x{train_ids.shape[0]}"
        )
    differ = int((semantic_of(panoptic) != train_ids).sum())
    if differ:
        return (
            f"{job.panoptic_source}: the classes of its panoptic map differ from the trainId "
            f"label at {differ} pixel(s); the two annotation files do not belong together"
        )
    write_panoptic(job.panoptic_out, panoptic)
    return None


# --- the whole dataset --------------------------------------------------------------------------


@dataclass
class SplitReport:
    """What ``prepare`` did for one split."""

    split: str
    total: int
    converted: int = 0
    reused: int = 0
    failures: list[str] = field(default_factory=list)
    unknown_ids: dict[str, list[int]] = field(default_factory=dict)
    ignored_ids: dict[str, list[int]] = field(default_factory=dict)
    stats_file: Path | None = None
    stats_written: bool = False
    panoptic: bool = False  # panoptic maps were asked for (and written where needed)


def _load_journal(path: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed run may be cut short
        if isinstance(entry, dict) and "name" in entry and "counts" in entry:
            entries[entry["name"]] = entry
    return entries


def _is_fresh(pair: Pair) -> bool:
    """The prepared label exists and is not older than its raw label."""
    if not pair.has_prepared:
        return False
    if not pair.has_raw:
        return True
    return pair.prepared_label.stat().st_mtime_ns >= pair.raw_label.stat().st_mtime_ns


def _panoptic_fresh(cls: type[RealDataset], pair: Pair) -> bool:
    """The panoptic map exists and is not older than the file it is made from."""
    if not pair.has_panoptic or pair.prepared_panoptic is None:
        return False
    source = cls.panoptic_source_for(pair.raw_label)
    if not source.is_file():
        return True
    return pair.prepared_panoptic.stat().st_mtime_ns >= source.stat().st_mtime_ns


def prepare_split(
    cls: type[RealDataset],
    root: Path,
    split: str,
    *,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
    panoptic: bool = False,
) -> SplitReport:
    """Prepare one split of ``cls`` under ``root`` (see the module docstring)."""
    from tqdm import tqdm

    pairs = cls.scan(root, split).pairs
    report = SplitReport(
        split=split, total=len(pairs), stats_file=stats_path(root, split), panoptic=panoptic
    )
    _remove_stale_temp_files({p.prepared_label.parent for p in pairs})
    final = stats_path(root, split)
    journal_file = journal_path(root, split)
    known: dict[str, list[int]] = {}
    if final.is_file() and not force:
        try:
            names, counts = _read_gbw_stats(final)
            known.update(zip(names, counts.tolist()))
        except (ValueError, KeyError):
            pass  # unreadable or old statistics: recomputed below
    journal = {} if force else _load_journal(journal_file)
    known.update({n: e["counts"] for n, e in journal.items()})
    if force:
        journal_file.unlink(missing_ok=True)

    todo: list[_Job] = []
    for pair in pairs:
        if pair.label is None:
            report.failures.append(
                f"{pair.raw_label}: label file not found (expected for image {pair.image})"
            )
            continue
        fresh = _is_fresh(pair) and (not panoptic or _panoptic_fresh(cls, pair))
        if not force and pair.name in known and fresh:
            report.reused += 1
            continue
        pan_source = pan_out = None
        if panoptic:
            pan_source = str(cls.panoptic_source_for(pair.raw_label))
            pan_out = str(pair.prepared_panoptic)
        todo.append(
            _Job(
                dataset=cls.NAME,
                name=pair.name,
                image=str(pair.image),
                raw_label=str(pair.raw_label) if pair.has_raw else None,
                prepared_label=str(pair.prepared_label),
                panoptic_source=pan_source,
                panoptic_out=pan_out,
            )
        )

    if todo:
        journal_file.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(journal_file, "a", encoding="utf-8") as log,
            tqdm(
                total=len(todo),
                desc=f"{cls.NAME} {split}",
                unit="img",
                disable=not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            for result in parallel_map(_prepare_one, todo, workers, ordered=False):
                bar.update(1)
                if on_result is not None:
                    on_result(result)
                if "error" in result:
                    report.failures.append(result["error"])
                    continue
                # One line per image, flushed, so that a killed run loses at most this image.
                log.write(json.dumps(result, separators=(",", ":")) + "\n")
                log.flush()
                known[result["name"]] = result["counts"]
                report.converted += 1
                if result["unknown"]:
                    report.unknown_ids[result["name"]] = result["unknown"]
                if result["ignored"]:
                    report.ignored_ids[result["name"]] = result["ignored"]

    if report.failures:
        return report  # keep the journal: the next run redoes only what failed
    names = [p.name for p in pairs]
    if todo or not final.is_file() or force or _stats_names(final) != names:
        counts = np.asarray([known[n] for n in names], dtype=np.int64).reshape(
            len(names), NUM_CLASSES
        )
        write_class_stats(final, cls.NAME, split, names, counts)
        report.stats_written = True
    journal_file.unlink(missing_ok=True)
    return report


def _remove_stale_temp_files(folders: Iterable[Path]) -> None:
    """Delete the temp files of label writes that a killed run left behind."""
    for folder in folders:
        for name in _list_files(folder, ".tmp"):
            if name.startswith(".") and (TRAIN_ID_SUFFIX in name or PANOPTIC_SUFFIX in name):
                (folder / name).unlink(missing_ok=True)


def _stats_names(path: Path) -> list[str] | None:
    try:
        return _read_gbw_stats(path)[0]
    except (ValueError, KeyError):
        return None


def prepare_dataset(
    dataset: str,
    root: str | Path | None = None,
    *,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    splits: Iterable[str] | None = None,
    panoptic: bool = False,
) -> list[SplitReport]:
    """Prepare every split of ``dataset`` under ``root``; FileNotFoundError on a wrong root.

    ``panoptic``: also write the panoptic maps (ValueError for a dataset without instances,
    ImportError naming ``gbw[cityscapes]`` when cityscapesscripts is missing for Cityscapes).
    """
    cls = dataset_class(dataset)
    root = Path(root) if root is not None else Path(cls.DEFAULT_ROOT)
    splits = tuple(splits) if splits is not None else cls.SPLITS
    if panoptic and not cls.HAS_INSTANCES:
        raise ValueError(
            f"{cls.TITLE} has no instance annotations; --panoptic is for synthia and cityscapes"
        )
    if panoptic and cls.NAME == "cityscapes":
        from gbw.data.panoptic import cityscapes_panoptic_table

        cityscapes_panoptic_table()  # fail before any work when cityscapesscripts is missing
    error = cls.layout_error(root, splits)
    if error:
        raise FileNotFoundError(error)
    return [
        prepare_split(
            cls, root, s, workers=workers, force=force, progress=progress, panoptic=panoptic
        )
        for s in splits
    ]


__all__ = [
    "SplitReport",
    "class_pixel_counts",
    "load_class_stats",
    "prepare_dataset",
    "prepare_split",
    "stats_path",
    "write_class_stats",
]
