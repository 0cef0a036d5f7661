"""``gbw bench``: speed and memory measurements whose results go to BENCHMARKS.md.

* ``overhead``: GBW weights + weighted loss vs the plain loss, the QP solve, peak memory.
* ``step``: seconds per training iteration of a recipe at its real sizes on random data, peak
  GPU memory, the projected time of the whole run, with and without GBW.
"""

from __future__ import annotations

import argparse


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="{overhead,step}", required=True)
    from gbw.bench import overhead, step

    o = sub.add_parser(
        "overhead",
        help="GBW cost on top of plain cross-entropy",
        description=overhead.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    overhead.add_arguments(o)
    st = sub.add_parser(
        "step",
        help="seconds per training iteration of a recipe (random data), with and without GBW",
        description=step.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    step.add_arguments(st)


def run_bench(args: argparse.Namespace) -> int:
    if args.bench == "overhead":
        from gbw.bench import overhead

        overhead.run(args)
    elif args.bench == "step":
        from gbw.bench import step

        step.run(args)
    return 0
