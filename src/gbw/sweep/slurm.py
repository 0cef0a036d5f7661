"""``gbw sweep --launcher slurm``: the same runs as SLURM jobs, through submitit.

Every run that is not finished becomes one job of one job array (at most ``--jobs`` at once,
``slurm_array_parallelism``; submitit's local executor starts them all at once), each on one
task with the GPUs, CPUs, memory and time limit given. A job calls
:func:`gbw.sweep.worker.run_one` - the code a local worker runs - so it resumes from the run's
last checkpoint; on a time-out or pre-emption submitit requeues it and the requeued job
continues from that checkpoint. The sweep process waits for all jobs, then writes the
manifest and the report. submitit keeps its own files in ``DIR/submitit/``.

After a sweep process is stopped, its submitted jobs keep running on the cluster; a second
``gbw sweep`` on the same folder while they run would find their runs locked (they fail fast
instead of training a folder twice). Install with ``pip install "gbw[slurm]"``. The tests run
it with submitit's local executor (``cluster="local"``), never on a real cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit

from gbw.sweep.worker import run_one


class TrainJob(submitit.helpers.Checkpointable):
    """One run as a requeueable submitit job (the requeued job resumes, never restarts)."""

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        return run_one(task)

    def checkpoint(self, task: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(), {**task, "fresh": False})


def make_executor(out: Path, jobs: int, options: dict[str, Any]) -> submitit.Executor:
    """An AutoExecutor for ``options`` (cluster, partition, time_min, gpus, cpus, mem_gb)."""
    executor = submitit.AutoExecutor(
        folder=out / "submitit" / "%j", cluster=options.get("cluster") or "slurm"
    )
    params: dict[str, Any] = {
        "name": f"gbw-sweep-{out.resolve().name}",
        "timeout_min": int(options.get("time_min") or 24 * 60),
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": int(options.get("cpus") or 4),
        "gpus_per_node": int(options.get("gpus") if options.get("gpus") is not None else 1),
        "slurm_array_parallelism": jobs,
    }
    if options.get("mem_gb"):
        params["mem_gb"] = float(options["mem_gb"])
    if options.get("partition"):
        params["slurm_partition"] = options["partition"]
    executor.update_parameters(**params)
    return executor


def run_submitit(
    out: Path,
    todo: Sequence[tuple[Any, bool]],
    jobs: int,
    options: dict[str, Any],
    log: Any,
    on_done: Any = lambda: None,
) -> None:
    """Submit ``(run, fresh)`` pairs, wait for them and set each run's status (and job id in
    the manifest: ``on_done()`` after the submission and after each job)."""
    executor = make_executor(out, jobs, options)
    with executor.batch():
        submitted = [(r, executor.submit(TrainJob(), r.task(out, fresh))) for r, fresh in todo]
    for run, job in submitted:
        run.job = str(job.job_id)
    on_done()
    ids = ", ".join(job.job_id for _, job in submitted[:5]) + (
        ", ..." if len(submitted) > 5 else ""
    )
    log(f"submitted {len(submitted)} runs as {executor.cluster} jobs ({ids})")
    for n, (run, job) in enumerate(submitted, 1):
        try:
            result = job.result()
        except Exception as exc:  # the job itself failed (killed, out of memory, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            result = {"status": "failed", "error": f"job {job.job_id}: {first}"}
            result["error"] += f"; submitit log: {job.paths.stderr}"
        run.status = result["status"]
        run.error = result.get("error", "")
        run.seconds = float(result.get("seconds", 0.0))
        what = "finished" if run.status == "finished" else f"FAILED ({run.error})"
        log(f"[{n}/{len(submitted)}] {run.spec.name} (job {job.job_id}): {what}")
        on_done()
