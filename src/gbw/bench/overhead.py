"""What GBW costs on top of the plain loss, on B x C x S x S logits (default 2 x 19 x 512 x 512).

Measures, interleaving the cases round by round so that machine noise hits all alike:
  * plain cross-entropy forward + backward (``F.cross_entropy``; half/bfloat16 logits are
    upcast to float32 first, as autocast does), the baseline;
  * GBW weights + weighted CE forward + backward (``GBW.cross_entropy``) for the paper's
    ``class`` variant, the authors' ``channel`` variant and the authors' preset, each unfused
    (``fused=False``: shared softmax, two passes) and fused (one pass over the logits,
    ``gbw.weighting.fused``; ``--fused-impl`` picks the implementation);
  * the weights alone (gradient signal + QP);
  * the QP solve: ours (on the device, and on the CPU) against quadprog (independent active-set
    solver) and cvxopt (the authors' solver) when installed;
  * peak memory of each loss case (CUDA: allocator peak above the inputs; CPU: peak RSS of a
    fresh subprocess above its inputs).

Usage: gbw bench overhead [--device cuda] [--cuda-graph] [--batch 2] [--size 512]
                          [--dtype bfloat16] [--fused-impl on|torch|triton] [--out FILE]
   or: python benchmarks/gbw_overhead.py [same options]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import gbw
from gbw.bench import overhead_arguments
from gbw.weighting import fused as fused_mod

PRESETS = ("class", "channel", "authors")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_inputs(
    batch: int, classes: int, size: int, device: str, seed: int = 0, dtype: str = "float32"
):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(batch, classes, size, size, generator=gen).to(device, DTYPES[dtype])
    y = torch.randint(0, classes, (batch, size, size), generator=gen)
    y[:, : size // 16] = 255  # some ignored rows, as pseudo-label margins make
    return z.requires_grad_(True), y.to(device)


def fused_label(impl: str, device: str, dtype: str = "float32") -> str:
    """The implementation ``fused=impl`` runs on this device, for table rows."""
    probe = torch.empty(0, device=device, dtype=DTYPES[dtype])
    return fused_mod.resolve(fused_mod.check_fused(impl), probe)


def _plain_ce(z: torch.Tensor, y: torch.Tensor) -> None:
    x = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # as autocast does
    F.cross_entropy(x, y, ignore_index=255).backward()


def loss_fns(classes: int, fused_impl: str = "on", label: str = "") -> dict[str, Callable]:
    """``case -> fn(z, y)``: plain CE, then each GBW preset unfused and fused."""
    make = {
        "class": lambda f: gbw.GBW(classes, fused=f),
        "channel": lambda f: gbw.GBW(classes, variant="channel", fused=f),
        "authors": lambda f: gbw.GBW.authors(classes, fused=f),
    }
    fns: dict[str, Callable] = {"plain CE": _plain_ce}
    for name in PRESETS:
        for tag, mode in (("unfused", False), (f"fused {label or fused_impl}", fused_impl)):
            s = make[name](mode)
            # the recipes' (authors') reduction, as in the numbers of BENCHMARKS.md
            fns[f"GBW {name}, {tag}"] = lambda z, y, s=s: s.cross_entropy(
                z, y, reduction="all_pixel_mean"
            ).backward()
    return fns


def weight_fns(classes: int) -> dict[str, Callable]:
    c, ch = gbw.GBW(classes), gbw.GBW(classes, variant="channel")  # weights(): one path
    return {
        "weights only, class": lambda z, y: c.weights(z.detach(), y),
        "weights only, channel": lambda z, y: ch.weights(z.detach(), y),
    }


def timer(device: str, clock: str = "wall") -> Callable[[Callable[[], object]], float]:
    """ms per call: wall time, or (``clock="process"``, CPU only) the CPU time of the whole
    process, all threads together: less disturbed by other jobs on a shared machine."""
    now = time.process_time if clock == "process" and device != "cuda" else time.perf_counter

    def run(fn: Callable[[], object]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = now()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (now() - t0) * 1e3

    return run


def time_cases(
    cases: dict[str, Callable[[], object]], device: str, rounds: int, clock: str = "wall"
) -> dict[str, float]:
    run = timer(device, clock)
    for fn in cases.values():  # warm-up
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            samples[k].append(run(fn))
    return {k: statistics.median(v) for k, v in samples.items()}


def cuda_graphed(fn: Callable[[], object], z: torch.Tensor) -> Callable[[], object]:
    """``fn`` (forward + backward on the leaf ``z``) captured once as a CUDA graph; the returned
    callable replays it. Capture fails if ``fn`` synchronises with the host, so a successful
    capture is itself the proof that GBW's step is sync-free."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (lazy initialisation)
        for _ in range(3):
            z.grad = None
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    z.grad = None
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def qp_cases(classes: int, device: str) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    g_np = rng.random(classes) * 1e-4
    g_dev = torch.tensor(g_np, device=device, dtype=torch.float32)
    g_cpu = torch.tensor(g_np)
    cases: dict[str, Callable[[], object]] = {
        f"ours, exact sort ({device})": lambda: gbw.solve_class_weights(g_dev, 1.0),
        "ours, exact sort (cpu)": lambda: gbw.solve_class_weights(g_cpu, 1.0),
    }
    if device == "cuda":
        # what a CPU solver costs inside a GPU step: copy g to the host (a sync) and back
        cases["ours on cpu + GPU round trip"] = lambda: gbw.solve_class_weights(
            g_dev.cpu(), 1.0
        ).to(device, non_blocking=True)
    try:
        import quadprog

        cons = np.hstack([np.ones((classes, 1)), np.eye(classes)])
        b = np.hstack([[classes], np.zeros(classes)])
        eye2 = 2.0 * np.eye(classes)
        cases["quadprog (active set)"] = lambda: quadprog.solve_qp(eye2, g_np, cons, b, meq=1)
    except ImportError:
        pass
    try:
        import cvxopt
        import cvxopt.solvers

        cvxopt.solvers.options.update(show_progress=False, maxiters=20, abstol=1e-4)
        P = cvxopt.matrix(2.0 * np.eye(classes))
        q = cvxopt.matrix(-g_np)
        G = cvxopt.matrix(-np.eye(classes))
        h = cvxopt.matrix(np.zeros(classes))
        A = cvxopt.matrix(np.ones((1, classes)))
        bb = cvxopt.matrix(np.array([float(classes)]))
        cases["cvxopt (authors' solver)"] = lambda: cvxopt.solvers.qp(P, q, G, h, A, bb)
    except ImportError:
        pass
    return cases


def qp_agreement(classes: int) -> str:
    """Largest |ours - quadprog| over 200 random g, as a sanity line."""
    try:
        import quadprog
    except ImportError:
        return "quadprog not installed"
    rng = np.random.default_rng(1)
    worst = 0.0
    cons = np.hstack([np.ones((classes, 1)), np.eye(classes)])
    b = np.hstack([[classes], np.zeros(classes)])
    for _ in range(200):
        g = rng.random(classes) * 10 ** rng.uniform(-6, 1)
        ref = quadprog.solve_qp(np.eye(classes), g / 2.0, cons, b, meq=1)[0]
        worst = max(
            worst, float(np.abs(gbw.solve_class_weights(torch.tensor(g)).numpy() - ref).max())
        )
    return f"max |ours - quadprog| over 200 random g (C={classes}): {worst:.1e}"


def peak_memory_cuda(args: argparse.Namespace) -> dict[str, float]:
    out = {}
    fns = loss_fns(args.classes, args.fused_impl)
    for name in fns:
        z, y = make_inputs(args.batch, args.classes, args.size, "cuda", dtype=args.dtype)
        fns[name](z, y)
        z.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fns[name](z, y)
        torch.cuda.synchronize()
        out[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        del z, y
    return out


def _maxrss_mib() -> float:
    """Peak resident memory of this process (MiB). VmHWM belongs to the address space, so it
    starts afresh at exec; ru_maxrss would inherit the parent's peak across fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_cpu(args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for name in loss_fns(args.classes, args.fused_impl):
        cmd = [
            sys.executable,
            "-m",
            "gbw.bench.overhead",
            "--_mem-case",
            name,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--classes",
            str(args.classes),
            "--dtype",
            args.dtype,
            "--fused-impl",
            args.fused_impl,
        ]
        # mmap every large block so freed memory goes back to the OS and the peak RSS of the
        # case is not hidden behind memory glibc kept from start-up
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[name] = float(res.stdout.strip().splitlines()[-1])
    return out


def _mem_case(args: argparse.Namespace) -> None:
    z, y = make_inputs(args.batch, args.classes, args.size, "cpu", dtype=args.dtype)
    z.grad = torch.zeros_like(z)  # the gradient buffer counts as input, as on the GPU
    base = _maxrss_mib()
    loss_fns(args.classes, args.fused_impl)[args._mem_case](z, y)
    print(_maxrss_mib() - base)


def hardware(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    overhead_arguments(p)
    run(p.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._mem_case:
        _mem_case(args)
        return
    rounds = args.rounds or (50 if args.device == "cuda" else 15)
    z, y = make_inputs(args.batch, args.classes, args.size, args.device, dtype=args.dtype)
    label = fused_label(args.fused_impl, args.device, args.dtype)
    clock = args.clock if args.device != "cuda" else "wall"

    def bind(fns: dict[str, Callable]) -> dict[str, Callable[[], object]]:
        return {k: (lambda f=f: f(z, y)) for k, f in fns.items()}

    def losses() -> dict[str, Callable[[], object]]:
        return bind(loss_fns(args.classes, args.fused_impl, label))

    loss_ms = time_cases(losses(), args.device, rounds, args.clock)
    weights_ms = time_cases(bind(weight_fns(args.classes)), args.device, rounds, args.clock)
    qp_us = {
        k: v * 1e3
        for k, v in time_cases(
            qp_cases(args.classes, args.device), args.device, max(rounds, 100)
        ).items()
    }
    mem = peak_memory_cuda(args) if args.device == "cuda" else peak_memory_cpu(args)
    mem = dict(zip(loss_ms, mem.values(), strict=True))  # same cases, same order
    base = loss_ms["plain CE"]
    shape = f"{args.batch} x {args.classes} x {args.size} x {args.size}"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    lines = [
        f"### GBW overhead, {shape} logits, {args.device} ({hardware(args.device)})",
        f"{dt.date.today().isoformat()}, torch {torch.__version__}, {rounds} interleaved rounds, "
        f"median; {args.dtype} logits{load}"
        + ("; CPU time of the process (all threads)." if clock == "process" else "."),
        "",
        "| case (forward + backward) | ms | x plain CE | peak extra memory (MiB) |",
        "|---|---|---|---|",
    ]
    for k in loss_ms:
        lines.append(f"| {k} | {loss_ms[k]:.2f} | {loss_ms[k] / base:.2f} | {mem[k]:.0f} |")
    for k, v in weights_ms.items():
        lines.append(f"| {k} (no loss) | {v:.2f} | {v / base:.2f} | - |")
    lines += ["", f"| QP solve, C = {args.classes} | us per solve |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in qp_us.items()]
    graph_ms: dict[str, float] = {}
    if args.cuda_graph and args.device == "cuda":
        cases = losses()
        graph_ms = time_cases({k: cuda_graphed(f, z) for k, f in cases.items()}, "cuda", rounds)
        g_base = graph_ms["plain CE"]
        lines += ["", "| case, captured as one CUDA graph | ms | x plain CE |", "|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {v / g_base:.2f} |" for k, v in graph_ms.items()]
    lines += ["", qp_agreement(args.classes)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "loss_ms": loss_ms,
                    "weights_ms": weights_ms,
                    "qp_us": qp_us,
                    "peak_mib": mem,
                    "cuda_graph_ms": graph_ms,
                    "device": hardware(args.device),
                    "shape": shape,
                    "dtype": args.dtype,
                    "clock": clock,
                    "fused_impl": label,
                    "torch": torch.__version__,
                    "date": dt.date.today().isoformat(),
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
