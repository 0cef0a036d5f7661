"""The ``gbw sweep`` and ``gbw study`` commands (argparse only: no torch at import time).

``register(subparsers)`` adds both to the main CLI; each command function imports what it
needs when it runs.
"""

from __future__ import annotations

import argparse
import sys

SWEEP_EPILOG = """\
run folders: DIR/runs/<grid values>-s<seed>, each value as <last key component>=<value>,
joined by '+' (e.g. name=gbw+rcs=true-s3; 's<seed>' without grids). Finished runs are
skipped, interrupted ones resume from checkpoints/last.ckpt: after a kill, run the same
command again. Exit code: 0 all runs finished, 1 some failed, 2 bad arguments or configs.

examples:
  gbw sweep configs/minicity/self_training.yaml --seeds 1,2,3 \\
      --grid weighting.name=none,gbw,if --out sweeps/st --jobs 2
  gbw sweep configs/minicity/self_training.yaml train.max_iters=200 --seeds 1,2 \\
      --grid weighting.lam=0.1,1,10 --grid weighting.scale=none,mean
  gbw report --sweep sweeps/st --baseline weighting.name=none
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_launch_arguments(p: argparse.ArgumentParser, jobs: int = 1) -> None:
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=jobs,
        help="runs at once (local: worker processes with cores/jobs threads each, at most "
        f"$OMP_NUM_THREADS, GPUs round-robin; slurm: the job array's parallelism); default {jobs}",
    )
    p.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default="local",
        help="local processes (default) or SLURM jobs through submitit (pip install 'gbw[slurm]')",
    )
    p.add_argument("--overwrite", action="store_true", help="train again runs whose config changed")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state only")
    s = p.add_argument_group("slurm (with --launcher slurm)")
    s.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's)")
    s.add_argument("--slurm-time", type=_positive_int, default=24 * 60, help="minutes per job")
    s.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per job (default 1)")
    s.add_argument("--slurm-cpus", type=_positive_int, default=4, help="CPUs per job (default 4)")
    s.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per job")
    s.add_argument(
        "--submitit-cluster",
        choices=["slurm", "local", "debug"],
        default="slurm",
        help="submitit executor: slurm (default); local runs the jobs on this machine (tests)",
    )


def launch_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`gbw.sweep.runner.run_sweep` given on the command line."""
    return {
        "jobs": args.jobs,
        "launcher": args.launcher,
        "overwrite": args.overwrite,
        "dry_run": args.dry_run,
        "slurm": {
            "cluster": args.submitit_cluster,
            "partition": args.slurm_partition,
            "time_min": args.slurm_time,
            "gpus": args.slurm_gpus,
            "cpus": args.slurm_cpus,
            "mem_gb": args.slurm_mem_gb,
        },
    }


def _interruptible(command):
    """A killed sweep (SIGTERM, Ctrl-C) exits with 128 + signal and says how to continue."""

    def run(args: argparse.Namespace) -> int:
        from gbw.sweep.runner import SweepInterrupted

        try:
            return command(args)
        except SweepInterrupted as exc:
            print(
                f"gbw {args.command} interrupted ({exc}); run the same command again to continue",
                file=sys.stderr,
            )
            return 128 + exc.signum

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep`` and ``study`` to the CLI's sub-command parsers."""
    p = subparsers.add_parser(
        "sweep",
        help="train a grid of settings x seeds as run folders, resumably; then report",
        description="Train every combination of the --grid values with every seed, each as an "
        "ordinary run folder in --out, several at once (--jobs), skipping finished runs; then "
        "write the seed-paired report (gbw report --sweep).",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML experiment file (see configs/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides for every run, right after CONFIG (as in gbw train)",
    )
    p.add_argument("--seeds", default="1", help="comma-separated seeds (default: 1)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="one config key and its values (override syntax; commas inside [] or quotes "
        "stay in a value); repeat for a product of grids",
    )
    p.add_argument("--out", default=None, help="sweep folder (default: sweeps/<config name>)")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="KEY=VALUE",
        help="the setting others are compared with, e.g. weighting.name=none (default: the "
        "first value of the first grid)",
    )
    _add_launch_arguments(p)
    p.set_defaults(func=_interruptible(_cmd_sweep))

    p = subparsers.add_parser(
        "study",
        help="the paper's analysis on MiniCity: weightings x settings x seeds, paired",
        description="A fixed sweep on MiniCity - source-only and self-training; no weighting, "
        "GBW (paper and authors' variants, a λ curve), IF, PF, LBW, focal; rare-class "
        "sampling - with 5 seeds (the λ curve 3), then DIR/study.md with the tables of the "
        "paper's Section 4 (paired deltas, 95 % intervals, verdicts) and its figures. "
        "Resumable: run the same command again after a kill.",
    )
    p.add_argument("--out", default="study_out", help="study folder (default: study_out)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the same pipeline on tiny data, 2 seeds, 4 iterations per run (tests)",
    )
    p.add_argument(
        "--configs",
        default=None,
        help="folder with source_only.yaml and self_training.yaml (default: configs/minicity)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="where MiniCity is generated and cached (default: ~/.cache/gbw)",
    )
    # 2 one-thread runs at once beat one two-thread run on 2 cores: 4 DACS runs of 100 steps
    # took 130 s with --jobs 2 and 994 s with --jobs 1 on the shared 2-core machine (2026-12-01)
    _add_launch_arguments(p, jobs=2)
    p.set_defaults(func=_interruptible(_cmd_study))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gbw.sweep.plan import expand, parse_grid, parse_seeds
    from gbw.sweep.runner import run_sweep

    grids = [parse_grid(g) for g in args.grid]
    seeds = parse_seeds(args.seeds)
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"{args.config}: config file not found")
    out = Path(args.out) if args.out else Path("sweeps") / Path(args.config).stem
    specs = expand(args.config, seeds, grids, args.overrides)
    if args.baseline:
        from gbw.sweep.report import baseline_pairs

        baseline_pairs(
            list(dict.fromkeys(s.setting for s in specs)),
            {s.setting: s.values for s in specs},
            args.baseline,
        )  # a bad --baseline fails before anything runs
    info = {
        "kind": "sweep",
        "config": args.config,
        "overrides": list(args.overrides),
        "grids": [{"key": g.key, "values": list(g.values)} for g in grids],
        "seeds": seeds,
        "baseline": args.baseline,
    }
    result = run_sweep(specs, out, info=info, **launch_options(args))
    return 1 if result.failed else 0


def _cmd_study(args: argparse.Namespace) -> int:
    from gbw.sweep.study import run_study

    return run_study(args, launch_options(args))
