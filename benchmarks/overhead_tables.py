"""Tables for BENCHMARKS.md from ``gbw bench overhead --json`` files (one per dtype and size).

Usage: python benchmarks/overhead_tables.py RESULTS_DIR [--pattern 'overhead_*.json']

Prints one markdown table per dtype: every loss case at every size, eager and (when measured)
replayed as one CUDA graph, each as ms and as a multiple of plain CE in the same run, with the
peak extra memory; then one line per size saying whether the fused path meets issue 14's
target (GBW weights + weighted CE forward + backward at most 1.5x plain CE).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

TARGET = 1.5


def _size(shape: str) -> str:
    return shape.split(" x ", 2)[-1].replace(" x ", "x")


def tables(runs: list[dict]) -> str:
    by_dtype: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_dtype[r.get("dtype", "float32")].append(r)
    out: list[str] = []
    for dtype, rs in sorted(by_dtype.items()):
        rs.sort(key=lambda r: int(_size(r["shape"]).split("x")[0]))
        first = rs[0]
        out += [
            f"#### {dtype} logits, {first['device']}, torch {first.get('torch', '?')}, "
            f"{first.get('date', '?')}",
            "",
            "| logits | case (forward + backward) | eager ms | x plain CE | CUDA graph ms "
            "| x plain CE | peak extra MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        verdicts = []
        for r in rs:
            eager, graph, mem = r["loss_ms"], r.get("cuda_graph_ms") or {}, r["peak_mib"]
            e0, g0 = eager["plain CE"], graph.get("plain CE")
            for case, ms in eager.items():
                gms = graph.get(case)
                g_txt = f"{gms:.3f} | {gms / g0:.2f}" if gms is not None and g0 else "- | -"
                out.append(
                    f"| {r['shape']} | {case} | {ms:.3f} | {ms / e0:.2f} | {g_txt} "
                    f"| {mem.get(case, float('nan')):.0f} |"
                )
            for case, ms in eager.items():
                if ", fused" not in case:
                    continue
                ratios = {"eager": ms / e0}
                if case in graph and g0:
                    ratios["graph"] = graph[case] / g0
                met = "met" if max(ratios.values()) <= TARGET else "NOT met"
                text = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
                verdicts.append(f"- {_size(r['shape'])}, {case}: {text} ({met})")
        out += ["", f"Target <= {TARGET}x plain CE:", *verdicts, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--pattern", default="overhead_*.json")
    args = p.parse_args(argv)
    runs = [json.loads(f.read_text()) for f in sorted(args.results.glob(args.pattern))]
    if not runs:
        raise SystemExit(f"{args.results}: no files matching {args.pattern}")
    print(tables(runs))


if __name__ == "__main__":
    main()
