"""Run folders: where a run may write, and the only folders gbw ever deletes.

A run folder is ``out_dir/name`` with ``name`` one plain path component
(:func:`gbw.config.check_run_name`). gbw marks every run folder it creates with a ``.gbw-run``
file. ``--overwrite`` deletes a folder only when it carries that marker, is a real folder (not a
link), lies directly inside ``out_dir`` and is neither the working directory nor one of its
parents; it never deletes anything else. A folder that exists, is not empty and is not a gbw run
folder is never written into.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gbw.fileio import remove_stale_temps, write_text

MARKER = ".gbw-run"
# files that a fresh start in a reused folder (a start that failed before its first
# checkpoint) replaces; anything else in the folder is left alone
RUN_OUTPUTS = (
    "config.yaml",
    "meta.json",
    "scalars.csv",
    "metrics.json",
    "weights_summary.json",
    "rare_class_sampling.txt",
)


class RunExistsError(FileExistsError):
    """The run folder already holds a run (or foreign files) and may not be reused as asked."""


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a folder that gbw made for a run (it holds the marker)."""
    return (path / MARKER).is_file()


def _looks_like_old_run(path: Path) -> bool:
    # runs written before the marker existed: gbw's own config and meta files
    return (path / "config.yaml").is_file() and (path / "meta.json").is_file()


def has_checkpoints(run_dir: Path) -> bool:
    ckpt = run_dir / "checkpoints"
    return ckpt.is_dir() and any(p.suffix == ".ckpt" for p in ckpt.iterdir())


def check_deletable(run_dir: Path, out_dir: Path) -> None:
    """Raise :class:`RunExistsError` unless ``run_dir`` may be deleted by ``--overwrite``."""
    if run_dir.is_symlink():
        raise RunExistsError(f"{run_dir} is a symbolic link; --overwrite deletes only real folders")
    real = run_dir.resolve()
    parent = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if real.parent != parent:
        raise RunExistsError(
            f"{run_dir} does not lie directly inside out_dir {out_dir}; --overwrite refuses to "
            "delete it"
        )
    if real == cwd or real in cwd.parents:
        raise RunExistsError(
            f"{run_dir} is the working directory or one of its parents; --overwrite refuses "
            "to delete it"
        )
    if not is_run_folder(run_dir):
        raise RunExistsError(
            f"{run_dir} has no {MARKER} marker, so gbw did not create it as a run folder; "
            "--overwrite deletes only gbw's own run folders (delete it yourself or choose "
            "another name= or out_dir=)"
        )


def claim_run_dir(
    run_dir: Path, out_dir: Path, *, resuming: bool, overwrite: bool, dry_run: bool = False
) -> None:
    """Make ``run_dir`` ready for a run, or raise :class:`RunExistsError` before touching it.

    * missing or empty: created and marked;
    * a gbw run folder with checkpoints: kept when ``resuming``; deleted and recreated with
      ``overwrite`` (after :func:`check_deletable`); otherwise an error;
    * a gbw run folder without checkpoints (a start that failed early): reused, its run
      outputs replaced;
    * anything else that is not empty: an error, nothing written.

    Temporary files of an interrupted checkpoint write are removed. ``dry_run`` only raises
    what the real call would raise, changing nothing. Call on rank 0 only.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        ours = is_run_folder(run_dir) or _looks_like_old_run(run_dir)
        if not ours:
            raise RunExistsError(
                f"{run_dir} exists, is not empty and is not a gbw run folder (no {MARKER}); "
                "choose another name= or out_dir="
            )
        if has_checkpoints(run_dir) and not resuming:
            if not overwrite:
                raise RunExistsError(
                    f"{run_dir} already holds checkpoints; resume it with --resume, or choose "
                    "another name= or out_dir= (or --overwrite to start again)"
                )
            check_deletable(run_dir, out_dir)
            if dry_run:
                return
            shutil.rmtree(run_dir)
        elif dry_run:
            return
        elif not resuming:
            for name in RUN_OUTPUTS:
                (run_dir / name).unlink(missing_ok=True)
            if (run_dir / "tb").is_dir():
                shutil.rmtree(run_dir / "tb")
    if dry_run:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_run_folder(run_dir):
        write_text(run_dir / MARKER, "gbw run folder: `gbw train --overwrite` may delete it\n")
    remove_stale_temps(run_dir / "checkpoints")
    remove_stale_temps(run_dir)


__all__ = [
    "MARKER",
    "RunExistsError",
    "check_deletable",
    "claim_run_dir",
    "has_checkpoints",
    "is_run_folder",
]
