"""Run a sweep: decide what each run needs, write the manifest, train the runs, report.

Layout of a sweep folder ``DIR``::

    DIR/manifest.json          the config, overrides, grids, seeds, baseline and every run
                               (name, setting, seed, folder, status); rewritten as runs end
    DIR/configs/<run>.yaml     each run's resolved config (``gbw train DIR/configs/<run>.yaml
                               --resume`` trains the same run by hand)
    DIR/runs/<run>/            the ordinary run folders (checkpoints, logs, metrics.json)
    DIR/logs/<run>.log         everything a run printed, one block per attempt
    DIR/sweep.md, .csv, .json  the report (``gbw report --sweep DIR``)

Each run is in one of four states when the sweep starts: *finished* (``metrics.json`` at
``train.max_iters`` and a ``config.yaml`` equal to the run's config; skipped), *resume*
(``checkpoints/last.ckpt`` and an equal config), *new*, or *conflict* (results of a different
config in its folder: an error before anything runs, unless ``--overwrite`` restarts it).
Configs are compared without ``out_dir``, so a moved sweep folder still matches.

Local runs go to ``--jobs`` worker processes (each imports torch once and trains its runs one
after another with ``cores // jobs`` threads, at most ``$OMP_NUM_THREADS``; on GPUs, worker
``k`` sees GPU ``k mod n`` through ``CUDA_VISIBLE_DEVICES``). A failed run is reported with its
log and the others go on; the exit code is 1 if any run failed. SIGTERM or Ctrl-C stops the
workers (their runs keep their last checkpoint) and the same command continues the sweep; on
Linux the workers also stop when the sweep process is killed outright (SIGKILL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from gbw.config import ConfigError, ExperimentConfig, config_difference
from gbw.fileio import write_json, write_text
from gbw.sweep.manifest import MANIFEST, read_finished_metrics
from gbw.sweep.plan import RunSpec, validate


class SweepInterrupted(Exception):
    """The sweep process got SIGTERM or SIGINT; the same command continues the sweep."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@dataclass
class PlannedRun:
    spec: RunSpec
    exp: ExperimentConfig
    state: str  # finished | resume | new | conflict
    detail: str = ""
    status: str = ""  # after this invocation: finished | failed | interrupted | pending
    error: str = ""
    seconds: float = 0.0
    job: str = ""  # the SLURM job id (--launcher slurm)

    def task(self, out: Path, fresh: bool) -> dict[str, Any]:
        name = self.spec.name
        return {
            "config": str(out / "configs" / f"{name}.yaml"),
            "run_dir": str(out / "runs" / name),
            "log": str(out / "logs" / f"{name}.log"),
            "lock": str(out / ".locks" / f"{name}.lock"),
            "fresh": fresh,
        }


@dataclass
class SweepResult:
    out: Path
    runs: list[PlannedRun] = field(default_factory=list)
    report: Path | None = None

    @property
    def failed(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.status == "failed"]


def config_dict(exp: ExperimentConfig) -> dict[str, Any]:
    """``gbw.config.to_dict(exp)`` for the plain dataclasses of a config, ~200x faster (a
    study resolves ~100 configs before its first run; the tests check the two agree)."""
    return dataclasses.asdict(exp)


def run_state(exp: ExperimentConfig, run_dir: Path) -> tuple[str, str]:
    """(state, detail) of one run folder; see the module docstring for the states."""
    import yaml

    has_ckpt = (run_dir / "checkpoints" / "last.ckpt").exists()
    has_metrics = (run_dir / "metrics.json").exists()
    try:
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        stored = None
    if not isinstance(stored, dict):
        if has_ckpt or has_metrics:
            return "conflict", "results but no readable config.yaml"
        return "new", ""
    diff = config_difference(stored, config_dict(exp))
    if diff:
        if has_ckpt or has_metrics:
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            return "conflict", f"config differs in {', '.join(diff[:3])}{more}"
        return "new", ""
    if read_finished_metrics(run_dir, exp.train.max_iters) is not None:
        return "finished", ""
    return ("resume", "") if has_ckpt else ("new", "")


def plan_runs(specs: Sequence[RunSpec], out: Path, overwrite: bool = False) -> list[PlannedRun]:
    """Validate every run, find its state; conflicts are an error unless ``overwrite``."""
    exps = validate(specs, out / "runs")
    planned = []
    for spec, exp in zip(specs, exps):
        state, detail = run_state(exp, out / "runs" / spec.name)
        planned.append(PlannedRun(spec, exp, state, detail))
    conflicts = [p for p in planned if p.state == "conflict"]
    if conflicts and not overwrite:
        first = conflicts[0]
        raise ConfigError(
            f"{len(conflicts)} run folder(s) in {out / 'runs'} hold results of another config "
            f"(e.g. {first.spec.name}: {first.detail}); use another --out, or --overwrite to "
            "train them again"
        )
    return planned


def write_manifest(out: Path, info: dict[str, Any], planned: Sequence[PlannedRun]) -> Path:
    runs = []
    for p in planned:
        name = p.spec.name
        entry = p.spec.as_dict() | {
            "run_dir": f"runs/{name}",
            "config_file": f"configs/{name}.yaml",
            "log": f"logs/{name}.log",
            "status": p.status or ("finished" if p.state == "finished" else "pending"),
        }
        if p.error:
            entry["error"] = p.error
        if p.job:
            entry["job"] = p.job
        runs.append(entry)
    data = {
        "format": 1,
        **info,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
        "runs": runs,
    }
    path = out / MANIFEST
    write_json(path, data)
    return path


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep process per folder at a time."""
    fd = os.open(out / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode().strip() or "?"
            raise ConfigError(f"{out} is in use by another gbw sweep (pid {other})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise SweepInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_threads(jobs: int) -> int:
    """Threads per local worker: the usable cores shared by the jobs, at most
    ``$OMP_NUM_THREADS`` when that is set (more threads than cores only slow CPU runs down)."""
    threads = max(1, _usable_cores() // jobs)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(env)) if env.isdigit() and int(env) > 0 else threads


def _gpu_ids(planned: Sequence[PlannedRun]) -> list[str]:
    """The GPUs the workers share round-robin; none if every run is on the CPU."""
    if all(p.exp.train.accelerator == "cpu" for p in planned):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class _Worker:
    def __init__(self, ctx: Any, env: dict[str, str], threads: int) -> None:
        from gbw.sweep.worker import worker_main

        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=worker_main, args=(child, env, threads, os.getpid()), name="gbw-sweep-worker"
        )
        self.proc.start()
        child.close()
        self.run: PlannedRun | None = None
        self.started = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _run_local(
    out: Path,
    todo: Sequence[tuple[PlannedRun, bool]],
    jobs: int,
    log: Any,
    on_done: Any = lambda: None,
) -> None:
    """Train ``(run, fresh)`` pairs on ``jobs`` local worker processes; sets each run's status
    and calls ``on_done()`` after each run."""
    ctx = mp.get_context("spawn")
    threads = worker_threads(jobs)
    gpus = _gpu_ids([p for p, _ in todo])
    pending = deque(todo)
    slots: list[_Worker | None] = [None] * min(jobs, len(todo))
    done_times: list[float] = []
    total = len(todo)
    t_start = time.perf_counter()

    def env_for(k: int) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
        return env

    def finish(w: _Worker, result: dict[str, Any]) -> None:
        run = w.run
        assert run is not None
        run.status = result["status"]
        run.error = result.get("error", "")
        run.seconds = time.perf_counter() - w.started
        w.run = None
        done_times.append(run.seconds)
        n_done = len(done_times)
        if run.status == "finished":
            what = f"finished in {run.seconds:.0f} s, target mIoU {100 * result['mIoU']:.1f}"
        else:
            what = f"FAILED ({run.error}); log: {out / 'logs' / (run.spec.name + '.log')}"
        eta = ""
        if pending or any(s is not None and s.run is not None for s in slots):
            left = (time.perf_counter() - t_start) / n_done * (total - n_done)
            eta = f"; about {left / 60:.0f} min left" if left > 120 else f"; {left:.0f} s left"
        log(f"[{n_done}/{total}] {run.spec.name}: {what}{eta}")
        on_done()

    try:
        while pending or any(s is not None and s.run is not None for s in slots):
            for k, w in enumerate(slots):
                if pending and (w is None or w.run is None):
                    if w is None or not w.proc.is_alive():
                        w = slots[k] = _Worker(ctx, env_for(k), threads)
                    run, fresh = pending.popleft()
                    w.run, w.started = run, time.perf_counter()
                    w.conn.send(run.task(out, fresh))
            busy = [w for w in slots if w is not None and w.run is not None]
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for w in busy:
                if w.conn in ready or w.proc.sentinel in ready:
                    try:
                        result = w.conn.recv() if w.conn.poll() else None
                    except (EOFError, OSError):
                        result = None
                    if result is None:
                        w.proc.join(5)
                        code = w.proc.exitcode
                        result = {
                            "status": "failed",
                            "error": f"worker process died (exit code {code})",
                        }
                        finish(w, result)
                        w.stop()
                        slots[slots.index(w)] = None
                    else:
                        finish(w, result)
        for w in slots:
            if w is not None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
                w.proc.join(30)
    finally:
        for w in slots:
            if w is not None:
                if w.run is not None:
                    w.run.status = "interrupted"
                w.stop()


def run_sweep(
    specs: Sequence[RunSpec],
    out: str | Path,
    *,
    info: dict[str, Any],
    jobs: int = 1,
    launcher: str = "local",
    overwrite: bool = False,
    dry_run: bool = False,
    slurm: dict[str, Any] | None = None,
    report: bool = True,
    log: Any = print,
) -> SweepResult:
    """Plan, train and report ``specs`` in ``out`` (see the module docstring).

    ``info`` goes into the manifest (config, overrides, grids, seeds, baseline, ...).
    Raises :class:`ConfigError` before anything runs for bad configs, grids or conflicts, and
    :class:`SweepInterrupted` after stopping the workers on SIGTERM / SIGINT.
    """
    out = Path(out)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected at least 1")
    planned = plan_runs(specs, out, overwrite)
    result = SweepResult(out, planned)
    counts = {s: sum(p.state == s for p in planned) for s in ("finished", "resume", "new")}
    redo = sum(p.state == "conflict" for p in planned)
    log(
        f"sweep {out}: {len(planned)} runs - {counts['finished']} finished (skipped), "
        f"{counts['resume']} to resume, {counts['new']} new"
        + (f", {redo} to train again (--overwrite)" if redo else "")
    )
    if dry_run:
        for p in planned:
            log(f"  {p.spec.name:<40} {p.state:<9} {' '.join(p.spec.overrides)}")
        return result
    for sub in ("configs", "runs", "logs", ".locks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # CPU results depend on the thread count (reduction order): the manifest records it
    info = {**info, "launcher": launcher, "jobs": jobs}
    if launcher == "local":
        info["threads_per_run"] = worker_threads(jobs)
    with sweep_lock(out):
        import yaml

        for p in planned:  # what gbw.config.save_config writes
            text = yaml.safe_dump(config_dict(p.exp), sort_keys=False)
            write_text(out / "configs" / f"{p.spec.name}.yaml", text)
        _prepare_data([p.exp for p in planned if p.state != "finished"])
        write_manifest(out, info, planned)
        todo = [(p, p.state in ("new", "conflict")) for p in planned if p.state != "finished"]
        for p in planned:
            p.status = "finished" if p.state == "finished" else "pending"
        try:
            with _signals_raise():
                if todo and launcher == "local":
                    cores = _usable_cores()
                    log(
                        f"training {len(todo)} runs on {jobs} local worker(s) with "
                        f"{worker_threads(jobs)} thread(s) each ({cores} cores)"
                    )
                    _run_local(out, todo, jobs, log, lambda: write_manifest(out, info, planned))
                elif todo and launcher == "slurm":
                    try:
                        from gbw.sweep.slurm import run_submitit
                    except ImportError as exc:
                        raise ConfigError(
                            f"--launcher slurm needs submitit ({exc}); pip install 'gbw[slurm]'"
                        ) from None

                    run_submitit(
                        out,
                        todo,
                        jobs,
                        slurm or {},
                        log,
                        lambda: write_manifest(out, info, planned),
                    )
                elif todo:
                    raise ConfigError(f"--launcher {launcher!r}: expected local or slurm")
        finally:
            write_manifest(out, info, planned)
    failed = result.failed
    n_ok = sum(p.status == "finished" for p in planned)
    log(f"sweep {out}: {n_ok} of {len(planned)} runs finished, {len(failed)} failed")
    for p in failed:
        log(f"  failed: {p.spec.name}: {p.error}; log: {out / 'logs' / (p.spec.name + '.log')}")
    if report and n_ok:
        from gbw.sweep.report import write_sweep_report

        result.report = write_sweep_report(out, baseline=info.get("baseline"), log=log)
    return result


def _prepare_data(exps: Sequence[ExperimentConfig]) -> None:
    """Generate the MiniCity copies the runs read once, before the workers start (no races)."""
    wanted = set()
    for exp in exps:
        for spec in (exp.data.source, exp.data.target, exp.data.val):
            if spec.name == "minicity":
                wanted.add((spec.root or None, exp.data.minicity_size))
    if wanted:
        from gbw.data.minicity import ensure_minicity

        for root, size in sorted(wanted, key=str):
            ensure_minicity(root, seed=0, size=size)
