"""``gbw data check``: is a dataset on disk complete and readable, exactly as training will read it?

Checks the layout (wrong root), image counts per split (GTA5 24,966; SYNTHIA 9,400; Cityscapes
2,975 train / 500 val; fewer with ``subset=True``), image/label pairing both ways, that every file
decodes, image sizes, label/image size agreement, label formats (SYNTHIA: 16-bit 3-channel) and
label values (raw ids within the dataset's id range, prepared labels within 0..18 and 255) and,
where ``gbw data prepare --panoptic`` wrote them (required with ``panoptic=True``), the panoptic
maps: 16-bit format, classes within 0..18 or void, size, and classes equal to the label's.

Every problem is one line that starts with the file (or folder) it is about and says what was
expected; all problems are collected before reporting, so one run lists every bad file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gbw.data.io import decode_rgb
from gbw.data.prepare import stats_path
from gbw.data.real import (
    Pair,
    RealDataset,
    bad_train_ids,
    parallel_map,
    read_prepared_label,
)
from gbw.data.registry import dataset_class


@dataclass
class CheckReport:
    """Problems (make the check fail) and notes (information only) for one dataset root."""

    dataset: str
    root: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """The human-readable report printed by the CLI."""
        cls = dataset_class(self.dataset)
        lines = [f"{cls.TITLE} at {self.root}"]
        for split, n in self.found.items():
            expected = cls.EXPECTED_COUNTS.get(split)
            lines.append(
                f"  {split}: {n} images (expected {expected}), "
                f"{self.checked.get(split, 0)} image/label pairs checked"
            )
        lines += verdict_lines(self.notes, self.problems, self.root, f"{cls.TITLE} tree")
        return "\n".join(lines)


def verdict_lines(notes: list[str], problems: list[str], root: Path, what: str) -> list[str]:
    """The end of a check report: the notes, the problems, and OK or FAILED."""
    lines = []
    if notes:
        lines.append(f"notes ({len(notes)}):")
        lines += [f"  {n}" for n in notes]
    if problems:
        lines.append(f"problems ({len(problems)}):")
        lines += [f"  {p}" for p in problems]
        lines.append(f"FAILED: {len(problems)} problem(s) in {root}")
    else:
        lines.append(f"OK: {root} is a complete, readable {what}")
    return lines


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


@dataclass
class PairResult:
    """What decoding one image/label pair found."""

    problems: list[str] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # (width, height) when the image decoded
    ignored_ids: list[int] = field(default_factory=list)  # IGNORED_IDS present in the raw label


def check_pair(
    cls: type[RealDataset],
    pair: Pair,
    expected_size: tuple[int, int] | None,
    require_panoptic: bool = False,
) -> PairResult:
    """Decode one image and its label file(s) and report what is wrong with them."""
    result = PairResult()
    problems = result.problems
    image_shape: tuple[int, ...] | None = None
    try:
        image_shape = decode_rgb(pair.image).shape
        result.image_size = (image_shape[1], image_shape[0])
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
    if image_shape is not None and expected_size is not None:
        width, height = expected_size
        if image_shape[:2] != (height, width):
            problems.append(f"{pair.image}: size {_size(image_shape)}, expected {width}x{height}")

    def same_size(path: Path, shape: tuple[int, ...]) -> None:
        if image_shape is not None and shape[:2] != image_shape[:2]:
            problems.append(
                f"{path}: size {_size(shape)} does not match image {_size(image_shape)}"
            )

    train_ids = None  # the label as trainIds, to compare the panoptic map with
    if pair.has_raw:
        try:
            raw = cls.read_raw_label(pair.raw_label)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
        else:
            same_size(pair.raw_label, raw.shape)
            unknown = cls.unknown_ids(raw)
            if unknown:
                shown = ", ".join(str(i) for i in unknown[:10]) + (
                    ", ..." if len(unknown) > 10 else ""
                )
                problems.append(
                    f"{pair.raw_label}: unknown label id(s) {shown} "
                    f"(expected {cls.TITLE} ids 0..{cls.MAX_ID})"
                )
            result.ignored_ids = [i for i in cls.IGNORED_IDS if bool((raw == i).any())]
            train_ids = cls.to_train_ids(raw) if raw.dtype in (np.uint8, np.uint16) else None
    if pair.has_prepared:
        try:
            prepared = read_prepared_label(pair.prepared_label)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
        else:
            same_size(pair.prepared_label, prepared.shape)
            bad = bad_train_ids(prepared)
            if bad:
                problems.append(
                    f"{pair.prepared_label}: value(s) {', '.join(map(str, bad[:10]))} are not "
                    f"trainIds (expected 0..18 or 255); delete it and run gbw data prepare again"
                )
            elif train_ids is None:
                train_ids = prepared
    if pair.has_panoptic:
        _check_panoptic(pair, train_ids, same_size, problems)
    elif require_panoptic:
        problems.append(
            f"{pair.prepared_panoptic}: panoptic map not found (expected for image {pair.image}); "
            f"run `gbw data prepare {cls.NAME} --panoptic`"
        )
    if not pair.has_raw and not pair.has_prepared:
        problems.append(f"{pair.raw_label}: label file not found (expected for image {pair.image})")
    return result


def _check_panoptic(
    pair: Pair,
    train_ids: np.ndarray | None,
    same_size: Callable[[Path, tuple[int, ...]], None],
    problems: list[str],
) -> None:
    """Decode a prepared panoptic map; its size and classes must match the image and label."""
    from gbw.data.panoptic import read_panoptic, semantic_of

    assert pair.prepared_panoptic is not None
    try:
        panoptic = read_panoptic(pair.prepared_panoptic)
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
        return
    same_size(pair.prepared_panoptic, panoptic.shape)
    if train_ids is not None and train_ids.shape == panoptic.shape:
        differ = int((semantic_of(panoptic) != train_ids).sum())
        if differ:
            problems.append(
                f"{pair.prepared_panoptic}: classes differ from the label at {differ} pixel(s); "
                "run `gbw data prepare --panoptic --force` again"
            )


def _check_job(job: tuple[str, Pair, tuple[int, int] | None, bool]) -> PairResult:
    name, pair, expected_size, require_panoptic = job
    return check_pair(dataset_class(name), pair, expected_size, require_panoptic)


def check_dataset(
    dataset: str,
    root: str | Path | None = None,
    *,
    subset: bool = False,
    limit: int | None = None,
    workers: int = 1,
    splits: Iterable[str] | None = None,
    expected_size: tuple[int, int] | str | None = "default",
    expected_counts: dict[str, int] | None = None,
    progress: bool = False,
    panoptic: bool = False,
) -> CheckReport:
    """Check a dataset tree and return every problem found (see the module docstring).

    Args:
        dataset: "gta", "synthia" or "cityscapes".
        root: the dataset root (default: ``data/<dataset>``).
        subset: the tree holds only part of the dataset: fewer images than the official count
            are fine (more are still a problem).
        limit: decode only the first ``limit`` pairs of each split (counts are still checked).
        workers: processes decoding in parallel.
        splits: the splits to check (default: all of the dataset's).
        expected_size: (width, height) every image must have; "default" = the dataset's own
            (Cityscapes 2048x1024, SYNTHIA 1280x760, GTA5 any), None = do not check.
        expected_counts: override the official image counts (tests, other releases).
        panoptic: every image must have its panoptic map (``gbw data prepare --panoptic``);
            without it, the maps that exist are checked.
    """
    from tqdm import tqdm

    cls = dataset_class(dataset)
    root = Path(root) if root is not None else Path(cls.DEFAULT_ROOT)
    report = CheckReport(dataset=cls.NAME, root=root)
    splits = tuple(splits) if splits is not None else cls.SPLITS
    error = cls.layout_error(root, splits)
    if error:
        report.problems.append(error)
        return report
    if panoptic and not cls.HAS_INSTANCES:
        report.problems.append(f"{root}: {cls.TITLE} has no instance annotations (--panoptic)")
        return report
    size = cls.IMAGE_SIZE if expected_size == "default" else expected_size
    counts = {**cls.EXPECTED_COUNTS, **(expected_counts or {})}
    for split in splits:
        scan = cls.scan(root, split)
        n = len(scan.pairs)
        report.found[split] = n
        expected = counts.get(split)
        image_dir = root / cls.image_dir(split)
        if expected is not None and n != expected and not (subset and 0 < n < expected):
            hint = "" if subset or n > expected else "; pass --subset for a partial copy"
            report.problems.append(
                f"{image_dir}: found {n} images, expected {expected} ({cls.TITLE} {split}){hint}"
            )
        elif subset and expected is not None and n < expected:
            report.notes.append(f"{image_dir}: subset of {n} of {expected} images")
        for orphan in scan.orphan_labels:
            report.problems.append(f"{orphan}: label has no image in {image_dir}")
        pairs = scan.pairs[:limit] if limit is not None else scan.pairs
        jobs = [(cls.NAME, p, size, panoptic) for p in pairs]
        bar = tqdm(
            total=len(jobs), desc=f"check {cls.NAME} {split}", unit="img", disable=not progress
        )
        odd_sizes: Counter[tuple[int, int]] = Counter()
        first_odd: Path | None = None
        ignored: dict[int, list[Path]] = {}
        typical = getattr(cls, "TYPICAL_SIZE", None)
        with bar:
            for pair, result in zip(pairs, parallel_map(_check_job, jobs, workers)):
                report.problems += result.problems
                if size is None and typical and result.image_size not in (None, typical):
                    odd_sizes[result.image_size] += 1  # type: ignore[index]
                    first_odd = first_odd or pair.image
                for i in result.ignored_ids:
                    ignored.setdefault(i, []).append(pair.raw_label)
                bar.update(1)
        report.checked[split] = len(jobs)
        # Information worth one line each, not one per file.
        if odd_sizes:
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in odd_sizes.most_common())
            report.notes.append(
                f"{image_dir}: {sum(odd_sizes.values())} images are not {typical[0]}x{typical[1]}"
                f": {sizes}; e.g. {first_odd}"
            )
        for i, files in sorted(ignored.items()):
            report.notes.append(
                f"{root / cls.label_dir(split)}: id {i} present in {len(files)} label(s), "
                f"{cls.IGNORED_IDS[i]}; gbw maps it to ignore (255); e.g. {files[0]}"
            )
        with_panoptic = sum(p.has_panoptic for p in scan.pairs)
        if cls.HAS_INSTANCES and not panoptic and 0 < with_panoptic < n:
            report.notes.append(
                f"{root}: {with_panoptic} of {n} {split} panoptic maps prepared; run "
                f"`gbw data prepare {cls.NAME} --panoptic --root {root}` for the others"
            )
        prepared = sum(p.has_prepared for p in scan.pairs)
        if prepared < n:
            report.notes.append(
                f"{root}: {prepared} of {n} {split} labels prepared; "
                f"run `gbw data prepare {cls.NAME} --root {root}` for the fast path"
            )
        if not stats_path(root, split).is_file():
            report.notes.append(
                f"{stats_path(root, split)}: no class statistics yet (rare-class sampling and "
                f"frequency baselines need them); run `gbw data prepare {cls.NAME} --root {root}`"
            )
    return report
