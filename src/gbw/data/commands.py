"""The ``gbw data`` command: ``prepare`` and ``check`` the real datasets.

``register(subparsers)`` adds it to the main CLI; each sub-command sets ``func``, which takes the
parsed arguments and returns the exit code (0 fine, 1 problems found, 2 wrong usage or root).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gbw.data.registry import DATASET_NAMES, dataset_class

_LAYOUTS = """\
expected layouts (as in DAFormer, HRDA and MIC):
  data/gta/images/<id>.png, data/gta/labels/<id>.png                 (GTA5, 24,966 images)
  data/synthia/RGB/<id>.png, data/synthia/GT/LABELS/<id>.png         (SYNTHIA-RAND-CITYSCAPES,
                                                                      9,400 images)
  data/cityscapes/leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png
  data/cityscapes/gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png (Cityscapes, 2,975 / 500)
  <root>/images/<split>/**/<stem>.<ext>, <root>/labels/<split>/**/<stem>.png
                       (folder: your own data, with --labels-map; see docs/own_data.md)
"""
DATASETS = (*DATASET_NAMES, "folder")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data {prepare,check}`` to the CLI's sub-command parsers."""
    data = subparsers.add_parser(
        "data",
        help="prepare and check the real datasets (GTA5, SYNTHIA, Cityscapes)",
        description="Prepare and check GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes on disk.",
        epilog=_LAYOUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = data.add_subparsers(dest="data_command", metavar="{prepare,check}", required=True)

    prepare = commands.add_parser(
        "prepare",
        help="write trainId label PNGs and per-image class statistics (resumable)",
        description=(
            "Write <label>_labelTrainIds.png next to every raw label (Cityscapes trainIds, "
            "255 = ignore) and per-image class pixel counts to <root>/gbw_class_stats_<split>.json "
            "(used by rare-class sampling and the inverse-frequency baselines). Resumable: a "
            "killed run continues where it stopped; a second run does no work."
        ),
        epilog=_LAYOUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("dataset", choices=DATASETS, help="which dataset")
    prepare.add_argument(
        "--root", type=Path, default=None, help="dataset root (default: data/<dataset>)"
    )
    prepare.add_argument(
        "--workers",
        type=_positive_int,
        default=_default_workers(),
        help="processes converting labels in parallel (default: %(default)s)",
    )
    prepare.add_argument(
        "--force", action="store_true", help="redo every label, even those already prepared"
    )
    prepare.add_argument(
        "--panoptic",
        action="store_true",
        help="also write panoptic maps (<label>_panopticTrainIds.png) from the instance "
        "annotations (synthia, cityscapes; cityscapes needs `pip install 'gbw[cityscapes]'`)",
    )
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_folder_arguments(prepare)
    prepare.set_defaults(func=run_prepare)

    check = commands.add_parser(
        "check",
        help="check layout, counts, pairing, sizes and label values; non-zero exit on problems",
        description=(
            "Decode every image and label and report each problem with the file it is about: "
            "wrong root, image counts, missing or orphan labels, size mismatches, corrupt files, "
            "label formats and unknown label ids. Exits 1 when anything is wrong."
        ),
        epilog=_LAYOUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("dataset", choices=DATASETS, help="which dataset")
    check.add_argument(
        "--root", type=Path, default=None, help="dataset root (default: data/<dataset>)"
    )
    check.add_argument(
        "--subset",
        action="store_true",
        help="the tree is a partial copy: fewer images than the official count are fine",
    )
    check.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="decode only the first N images of each split (counts are still checked)",
    )
    check.add_argument(
        "--workers",
        type=_positive_int,
        default=_default_workers(),
        help="processes decoding in parallel (default: %(default)s)",
    )
    check.add_argument(
        "--panoptic",
        action="store_true",
        help="require the panoptic maps of `gbw data prepare --panoptic` (they are checked "
        "wherever they exist even without this flag)",
    )
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_folder_arguments(check)
    check.set_defaults(func=run_check)


def _add_folder_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("folder datasets (your own data, docs/own_data.md)")
    g.add_argument("--labels-map", type=Path, default=None, help="label map YAML (classes, ids)")
    g.add_argument("--split", default="", help="sub-folder of images/ and labels/ (default: none)")
    g.add_argument("--image-dir", default="images", help="image folder under --root")
    g.add_argument("--label-dir", default="labels", help="label folder under --root")


def run_folder(args: argparse.Namespace, *, prepare: bool) -> int:
    """``gbw data check|prepare folder``: 0 fine, 1 problems found, 2 wrong usage."""
    from gbw.data.folder import check_folder, load_label_map

    if args.root is None or args.labels_map is None:
        print("error: a folder dataset needs --root and --labels-map", file=sys.stderr)
        return 2
    try:
        classes = load_label_map(args.labels_map).classes
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = check_folder(
        args.root,
        args.labels_map,
        split=args.split,
        image_dir=args.image_dir,
        label_dir=args.label_dir,
        workers=args.workers,
        write_stats=prepare,
    )
    print(report.format(classes))
    if prepare and not report.ok:
        print("class statistics not written; fix the files above and run the command again")
    return 0 if report.ok else 1


def run_prepare(args: argparse.Namespace) -> int:
    """``gbw data prepare``: returns 0 when every label was prepared, 1 on failures, 2 on a
    wrong root."""
    from gbw.data.prepare import prepare_dataset

    if args.dataset == "folder":
        return run_folder(args, prepare=True)
    cls = dataset_class(args.dataset)
    root = args.root if args.root is not None else Path(cls.DEFAULT_ROOT)
    try:
        reports = prepare_dataset(
            args.dataset,
            root,
            workers=args.workers,
            force=args.force,
            progress=not args.no_progress,
            panoptic=args.panoptic,
        )
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = False
    for r in reports:
        print(
            f"{cls.NAME} {r.split}: {r.total} labels, {r.converted} converted, "
            f"{r.reused} already prepared, {len(r.failures)} failed"
            + (" (with panoptic maps)" if r.panoptic else "")
        )
        for name, ids in sorted(r.unknown_ids.items()):
            print(f"  warning: {name}: unknown label id(s) {ids} mapped to ignore (255)")
        for name, ids in sorted(r.ignored_ids.items()):
            print(f"  note: {name}: id(s) {ids} present, mapped to ignore (255)")
        if r.failures:
            failed = True
            for msg in r.failures:
                print(f"  error: {msg}")
            print(
                f"  class statistics not written; fix the files above and run the command "
                f"again (finished labels are kept), or `gbw data check {cls.NAME} --root {root}`"
            )
        elif r.stats_written:
            print(f"  class statistics -> {r.stats_file}")
        else:
            print(f"  class statistics up to date: {r.stats_file}")
    return 1 if failed else 0


def run_check(args: argparse.Namespace) -> int:
    """``gbw data check``: prints the report; 0 when the tree is fine, 1 otherwise."""
    from gbw.data.check import check_dataset

    if args.dataset == "folder":
        return run_folder(args, prepare=False)
    report = check_dataset(
        args.dataset,
        args.root,
        subset=args.subset,
        limit=args.limit,
        workers=args.workers,
        progress=not args.no_progress,
        panoptic=args.panoptic,
    )
    print(report.format())
    return 0 if report.ok else 1
