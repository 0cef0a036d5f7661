"""``gbw bench``: speed and memory measurements whose results go to BENCHMARKS.md.

* ``overhead``: GBW weights + weighted loss vs the plain loss, the QP solve, peak memory.
"""

from __future__ import annotations

import argparse


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="{overhead}", required=True)
    from gbw.bench import overhead

    o = sub.add_parser(
        "overhead",
        help="GBW cost on top of plain cross-entropy",
        description=overhead.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    overhead.add_arguments(o)


def run_bench(args: argparse.Namespace) -> int:
    if args.bench == "overhead":
        from gbw.bench import overhead

        overhead.run(args)
    return 0
