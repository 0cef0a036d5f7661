"""``gbw bench``: speed and memory measurements whose results go to BENCHMARKS.md.

* ``overhead``: GBW weights + weighted loss vs the plain loss, the QP solve, peak memory.
* ``step``: seconds per training iteration of a recipe at its real sizes on random data, peak
  GPU memory, the projected time of the whole run, with and without GBW.
"""

from __future__ import annotations

import argparse

OVERHEAD_HELP = """\
What GBW costs on top of the plain loss, on B x C x S x S logits (default 2 x 19 x 512 x 512):
plain cross-entropy forward + backward (the baseline); GBW weights + weighted CE forward +
backward for the paper's class variant, the authors' channel variant and the authors' preset,
each unfused and through the fused pass (gbw.weighting.fused, --fused-impl);
the weights alone; the QP solve against quadprog and cvxopt when installed; peak memory of
each case. The cases are interleaved round by round so that machine noise hits all alike.
Details: the docstring of gbw.bench.overhead.

  gbw bench overhead [--device cuda] [--batch 2] [--size 512] [--out FILE] [--cuda-graph]
                     [--dtype bfloat16] [--fused-impl on|torch|triton] [--clock wall|process]
"""

STEP_HELP = """\
Seconds per training iteration of a recipe at its real input sizes, with and without GBW,
built exactly as `gbw train` builds it (model, optimisers, precision, step runner, CUDA graph
on one GPU) and run on random tensors of the recipe's input sizes: no dataset needed.
Reports the median s/it, peak GPU memory allocated and reserved, the projected time of the
whole run and GBW's share of the step. Details: the docstring of gbw.bench.step.

  gbw bench step configs/advent/gta2cs.yaml --iters 30 --warmup 5 --out results.md
  gbw bench step configs/dacs/gta2cs.yaml --size 64,64 --iters 2 --warmup 1   # CPU smoke run
  gbw bench step configs/hrda/gta2cs.yaml train.cuda_graph=false   # eager, for comparison
"""


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """``gbw bench {overhead,step}``; no torch import (``gbw bench --help`` stays fast)."""
    sub = p.add_subparsers(dest="bench", metavar="{overhead,step}", required=True)
    o = sub.add_parser(
        "overhead",
        help="GBW cost on top of plain cross-entropy",
        description=OVERHEAD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    overhead_arguments(o)
    st = sub.add_parser(
        "step",
        help="seconds per training iteration of a recipe (random data), with and without GBW",
        description=STEP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    step_arguments(st)


def run_bench(args: argparse.Namespace) -> int:
    if args.bench == "overhead":
        from gbw.bench import overhead

        overhead.run(args)
    elif args.bench == "step":
        from gbw.bench import step

        step.run(args)
    return 0


def overhead_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--size", type=int, default=512)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["bfloat16", "float16", "float32"],
        help="logits' dtype",
    )
    p.add_argument(
        "--fused-impl",
        default="on",
        choices=["on", "torch", "triton"],
        help="implementation of the fused cases (on: triton on CUDA, torch elsewhere)",
    )
    p.add_argument("--rounds", type=int, default=0, help="timing rounds (default: 50 GPU, 15 CPU)")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "process"],
        help="CPU only: wall time (default) or the process's CPU time over all threads",
    )
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--json", default=None, help="also write raw numbers as JSON")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time every case captured as one CUDA graph (GPU only)",
    )
    p.add_argument("--_mem-case", default=None, help=argparse.SUPPRESS)


def step_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (configs/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--iters", type=int, default=30, help="timed iterations (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    p.add_argument(
        "--weightings",
        default="none,gbw",
        help="comma-separated weighting.name values to measure, each in a fresh build",
    )
    p.add_argument(
        "--size", default=None, help="H,W of both domains' images instead of the recipe's"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=None, help="append the markdown table to this file")
    p.add_argument("--json", default=None, help="write the measurements as JSON")
