"""Tile sizes of the fused GBW Triton kernels: time each (pixels per program, warps) choice.

Usage (CUDA only): python benchmarks/fused_blocks.py [--size 512] [--dtype bfloat16]

Times GBW ``class`` + weighted CE forward + backward with ``fused="triton"`` eagerly and
replayed as one CUDA graph, for a few ``(BLOCK_P, NUM_WARPS)`` pairs of
``gbw.weighting._fused_triton``; prints a markdown table. The fastest pair belongs in that
module's constants (today: 128 pixels, 4 warps, chosen without a GPU).
"""

from __future__ import annotations

import argparse

import torch

import gbw
from gbw.bench.overhead import DTYPES, cuda_graphed, make_inputs, time_cases

PAIRS = ((64, 2), (128, 4), (128, 8), (256, 4), (256, 8), (512, 8))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("fused_blocks.py needs a CUDA device")
    from gbw.weighting import _fused_triton as ft

    z, y = make_inputs(2, 19, args.size, "cuda", dtype=args.dtype)
    s = gbw.GBW(19, fused="triton")

    def step() -> None:
        s.cross_entropy(z, y).backward()

    print(f"### fused GBW Triton tiles, 2 x 19 x {args.size}^2 {args.dtype}, "
          f"{torch.cuda.get_device_name()}\n")  # fmt: skip
    print("| BLOCK_P | warps | eager ms | CUDA graph ms |\n|---|---|---|---|")
    default = (ft.BLOCK_P, ft.NUM_WARPS)
    try:
        for block, warps in PAIRS:
            ft.BLOCK_P, ft.NUM_WARPS = block, warps
            eager = time_cases({"e": step}, "cuda", args.rounds)["e"]
            graph = time_cases({"g": cuda_graphed(step, z)}, "cuda", args.rounds)["g"]
            print(f"| {block} | {warps} | {eager:.3f} | {graph:.3f} |", flush=True)
    finally:
        ft.BLOCK_P, ft.NUM_WARPS = default


if __name__ == "__main__":
    main()
