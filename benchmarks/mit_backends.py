"""Training-step speed of MiT + DAFormer head per MiT backend, with/without fused attention.

One step = forward, cross-entropy on logits resized to the input (as mmseg does), backward,
AdamW (DAFormer's groups: head lr x10, no decay on LayerNorms). bf16 autocast on CUDA, fp32
on CPU. Random images and labels: no dataset or weights needed.

    python benchmarks/mit_backends.py                           # GPU: 2 x 512 x 512, MiT-B5
    python benchmarks/mit_backends.py --compile                 # also torch.compile each
    python benchmarks/mit_backends.py --size 128 --iters 2      # quick CPU run

Prints a markdown table (device, torch version, date in the heading).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gbw.models.daformer import DAFormer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="b5", help="MiT variant: b0..b5 or tiny (default b5)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512, help="square crop size (default 512)")
    p.add_argument("--iters", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--backends", default="smp,hf", help="comma-separated: smp,hf")
    p.add_argument(
        "--attention",
        default="both",
        choices=("both", "library", "sdpa"),
        help="the library's attention, the SDPA override, or both (default)",
    )
    p.add_argument("--compile", action="store_true", help="add torch.compile()d variants")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--classes", type=int, default=19)
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(
    args: argparse.Namespace, device: torch.device, backend: str, fused: bool, compiled: bool
) -> dict[str, object]:
    torch.manual_seed(0)
    model = (
        DAFormer(args.classes, encoder=args.variant, backend=backend, fused_attention=fused)
        .to(device)
        .train()
    )
    opt_kwargs = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.param_groups(6e-5), lr=6e-5, weight_decay=0.01, **opt_kwargs)
    net = torch.compile(model) if compiled else model
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> torch.Tensor:
        with amp:
            logits = net(x)["main"]
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 1 if compiled else 0)):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    loss = torch.tensor(float("nan"))
    for _ in range(args.iters):
        t = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "backend": backend,
        "attention": "sdpa" if fused else "library",
        "compiled": compiled,
        "ms": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        "warmup_s": warmup_s,
        "peak_gib": peak,
        "loss": float(loss),
    }


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, "
        name += f"{torch.get_num_threads()} threads)"
    versions = [f"torch {torch.__version__}"]
    for label, mod in (("smp", "segmentation_models_pytorch"), ("transformers", "transformers")):
        with contextlib.suppress(ImportError):
            versions.append(f"{label} {__import__(mod).__version__}")
    attention = {"both": (False, True), "library": (False,), "sdpa": (True,)}[args.attention]
    rows = []
    for backend in args.backends.split(","):
        for compiled in (False, True) if args.compile else (False,):
            for fused in attention:
                try:
                    rows.append(bench_one(args, device, backend.strip(), fused, compiled))
                except ImportError as err:  # a backend library missing or too old
                    print(f"  skipped {backend}: {err}", file=sys.stderr)
                    break
                r = rows[-1]
                print(
                    f"  {r['backend']:4s} {r['attention']:7s} compiled={compiled!s:5s} "
                    f"{r['ms']:8.1f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(
        f"\n### MiT-{args.variant} + DAFormer head, {args.batch} x {args.size} x {args.size}, "
        f"AdamW, {precision}"
    )
    print(
        f"{name}; {', '.join(versions)}; {dt.date.today().isoformat()}; "
        f"median of {args.iters} steps after {args.warmup} warm-up\n"
    )
    print(
        "| backend | attention | compiled | ms/step (median) | ms/step (min) | warm-up s "
        "| peak GiB | loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(
            f"| {r['backend']} | {r['attention']} | {'yes' if r['compiled'] else 'no'} "
            f"| {r['ms']:.1f} | {r['ms_min']:.1f} | {r['warmup_s']:.1f} | {peak} "
            f"| {r['loss']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    main()
