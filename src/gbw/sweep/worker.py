"""One run of a sweep, trained where it is called: a local worker process or a SLURM job.

:func:`run_one` trains (or resumes) one run from its stored config file, with everything it
prints - Python and C level - appended to the run's log file. It holds a lock on the run so
that two processes never train the same folder (an orphan of a killed sweep, a second sweep on
the same folder). :func:`worker_main` is the loop of a local worker process: it imports torch
once and trains the runs the sweep sends it, one after another.

Torch is imported only inside the functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_file``; yields False if another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def _output_to(log_file: Path) -> Iterator[None]:
    """Send ``sys.stdout``/``sys.stderr`` (print, logging, tqdm) and file descriptors 1 and 2
    (C libraries) to ``log_file``, appending."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    streams = sys.stdout, sys.stderr
    stream = open(fd, "a", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = stream
        yield
    finally:
        stream.flush()
        sys.stdout, sys.stderr = streams
        stream.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for d in (fd, *saved):
            os.close(d)


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train one run; ``task`` holds ``config``, ``run_dir``, ``log``, ``lock`` and ``fresh``.

    ``fresh`` deletes the run's own folder first (a stale attempt without a checkpoint, or a
    run whose config changed, restarted with ``--overwrite``); otherwise the run resumes from
    ``checkpoints/last.ckpt`` if it has one. Returns ``{"status": "finished" | "failed", ...}``.
    """
    run_dir, log = Path(task["run_dir"]), Path(task["log"])
    with _exclusive(Path(task["lock"])) as mine:
        if not mine:
            return {
                "status": "failed",
                "error": f"{run_dir} is being trained by another process (lock {task['lock']})",
            }
        with _output_to(log):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"=== gbw sweep run {run_dir.name}: attempt started {stamp}, pid {os.getpid()}")
            try:
                import torch

                from gbw.config import load_config
                from gbw.engine.trainer import train

                exp = load_config(task["config"])
                fresh = bool(task.get("fresh"))
                # each run sets its own kernels (gbw.engine.trainer.configure_kernels)
                torch.use_deterministic_algorithms(False)
                # fresh: start again in the run's own folder (gbw.engine.run_folder decides
                # what may be deleted); otherwise resume where a checkpoint exists
                result = train(
                    exp, run_dir=run_dir, resume=False if fresh else "auto", overwrite=fresh
                )
            except Exception as exc:
                traceback.print_exc()
                return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            print(f"=== finished: mIoU {100 * result.metrics['mIoU']:.2f}, {result.seconds:.0f} s")
            return {
                "status": "finished",
                "mIoU": float(result.metrics["mIoU"]),
                "steps": result.steps,
                "seconds": result.seconds,
            }


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the sweep process dies, even by SIGKILL (no orphan training)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_main(conn: Any, env: dict[str, str], threads: int, parent: int) -> None:
    """A local worker process: set its device and threads, then train the runs it is sent."""
    os.environ.update(env)
    _die_with_parent()
    if os.getppid() != parent:  # the sweep died before the line above took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep process handles Ctrl-C
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(run_one(task))
