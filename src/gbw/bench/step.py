"""Seconds per training iteration of a recipe at its real input sizes, with and without GBW.

Builds the method exactly as ``gbw train`` does (:func:`gbw.engine.trainer.setup_method`: same
model, optimisers, Fabric wrapping and precision, bf16 autocast on CUDA; the same
deterministic-algorithms setting; the same step runner, :mod:`gbw.engine.stepper`, so on one
CUDA device the iteration is captured as one CUDA graph unless ``train.cuda_graph=false``; the
same class-weight tracking) and runs it on random tensors of the recipe's input sizes, so no
dataset is needed. The table's mode column says how each row ran. Not timed: data loading
(the batch is made once, on the device), logging, evaluation and checkpoints.

Reported per class weighting (``--weightings``, default ``none,gbw``, each in its own fresh
build, one after the other in this process): the median seconds per iteration after
``--warmup`` iterations, the peak GPU memory allocated during the timed iterations and the
peak memory the process reserved over the whole build (warm-up included; in CUDA-graph mode
the graph's private memory pool is reserved, not allocated, so only this figure sees it), the
projected time of the recipe's whole run (``train.max_iters`` x median), and GBW's share of the
step, ``(t_gbw - t_none) / t_gbw``.

Input sizes: ``data.<domain>.crop`` when set, else ``data.<domain>.resize`` taken as the image
size (W, H) (GTA's 1280x720, what the DeepLabV2-era recipes stretch frames to; the
keep-ratio resize of the DAFormer recipe gives 1280x704), else
``--size``. ``--size H,W`` sets both domains. Pretrained weights are not loaded
(``model.pretrained`` is ignored): random weights cost the same.

Usage:
    gbw bench step configs/advent/gta2cs.yaml --iters 30 --warmup 5 --out results.md
    gbw bench step configs/dacs/gta2cs.yaml --size 64,64 --iters 2 --warmup 1   # CPU smoke run
    gbw bench step configs/hrda/gta2cs.yaml train.cuda_graph=false   # eager, for comparison
    python benchmarks/recipe_steps.py          # every DeepLabV2-era recipe, one table
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gbw.bench import step_arguments
from gbw.config import DatasetSpec, ExperimentConfig, load_config

IGNORE_INDEX = 255


@dataclass
class StepTiming:
    """One (recipe, weighting) measurement."""

    config: str
    name: str
    method: str
    weighting: str
    device: str
    precision: str
    mode: str  # eager | cuda-graph, + compile, + channels-last, + deterministic
    batch: int
    source_hw: tuple[int, int]
    target_hw: tuple[int, int] | None
    iters: int
    warmup: int
    seconds: float  # median seconds per iteration
    seconds_mean: float
    peak_gib: float | None  # CUDA allocator peak during the timed iterations; None on the CPU
    reserved_gib: float | None  # peak reserved by the caching allocator, warm-up included
    max_iters: int
    losses: dict[str, float]  # the last iteration's logged losses (all must be finite)

    @property
    def projected_hours(self) -> float:
        return self.seconds * self.max_iters / 3600


def input_hw(spec: DatasetSpec, size: Sequence[int] | None) -> tuple[int, int]:
    """(H, W) a domain's training images have: ``size``, else the crop, else the resize."""
    if size is not None:
        return int(size[0]), int(size[1])
    if spec.crop:
        return int(spec.crop[0]), int(spec.crop[1])
    if spec.resize:
        return int(spec.resize[1]), int(spec.resize[0])  # resize is (W, H)
    raise ValueError(
        f"data.{spec.name} has neither crop nor resize, so its image size is unknown; "
        "pass --size H,W"
    )


def random_batch(
    batch: int,
    hw: tuple[int, int],
    num_classes: int,
    device: torch.device,
    generator: torch.Generator,
    *,
    labels: bool,
) -> dict[str, Any]:
    """Random images in [0, 1] and blocky random labels (regions of 32x32 px, ~5 % ignored)."""
    h, w = hw
    image = torch.rand(batch, 3, h, w, generator=generator, device=device)
    out: dict[str, Any] = {"image": image, "name": [f"random_{i}" for i in range(batch)]}
    if labels:
        coarse = torch.randint(
            0,
            num_classes,
            (batch, 1, -(-h // 32), -(-w // 32)),
            generator=generator,
            device=device,
        )
        ignore = torch.rand(coarse.shape, generator=generator, device=device) < 0.05
        coarse = torch.where(ignore, IGNORE_INDEX, coarse).float()
        label = F.interpolate(coarse, scale_factor=32, mode="nearest")[:, 0, :h, :w]
        out["label"] = label.long()
    return out


@contextlib.contextmanager
def _kernel_settings(exp: ExperimentConfig, device: torch.device) -> Iterator[None]:
    """The engine's kernel settings (:func:`gbw.engine.trainer.configure_kernels`), with the
    process's previous ones restored afterwards."""
    from gbw.engine.trainer import configure_kernels

    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    matmul = torch.get_float32_matmul_precision()
    configure_kernels(exp, device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        torch.set_float32_matmul_precision(matmul)


def bench_step(
    exp: ExperimentConfig,
    *,
    iters: int = 30,
    warmup: int = 5,
    size: Sequence[int] | None = None,
    accelerator: str = "auto",
    config: str = "",
    seed: int = 0,
) -> StepTiming:
    """Time ``iters`` training iterations of ``exp`` on random data (after ``warmup``)."""
    from gbw.engine.stepper import graph_mode, make_step_runner
    from gbw.engine.tracking import WeightTracker
    from gbw.engine.trainer import _make_fabric, deterministic, setup_method

    if iters < 1 or warmup < 0:
        raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {iters} and {warmup}")
    exp = dataclasses.replace(
        exp,
        model=dataclasses.replace(exp.model, pretrained=""),
        train=dataclasses.replace(
            exp.train, accelerator=accelerator, devices=1, num_nodes=1, strategy="auto"
        ),
    )
    fabric = _make_fabric(exp)
    fabric.launch()
    torch.manual_seed(seed)
    device = fabric.device
    det = deterministic(exp, device)
    graphed = graph_mode(exp, fabric)
    if graphed and warmup <= exp.train.cuda_graph_warmup:
        raise ValueError(
            f"--warmup ({warmup}) must exceed train.cuda_graph_warmup "
            f"({exp.train.cuda_graph_warmup}) so that only graph replays are timed"
        )
    if device.type == "cuda":
        torch.cuda.empty_cache()  # this build's memory figures are its own
        torch.cuda.reset_peak_memory_stats(device)
    with _kernel_settings(exp, device):
        method, optimizers = setup_method(fabric, exp)
        run_step = make_step_runner(fabric, exp, method, optimizers)
        gen = torch.Generator(device=device).manual_seed(seed)
        c = exp.model.num_classes
        bs = exp.data.batch_size
        src_hw = input_hw(exp.data.source, size)
        source = random_batch(bs, src_hw, c, device, gen, labels=True)
        trg_hw = input_hw(exp.data.target, size) if method.uses_target else None
        target = random_batch(bs, trg_hw, c, device, gen, labels=False) if trg_hw else None
        tracker = WeightTracker(device)
        cuda = device.type == "cuda"
        times: list[float] = []
        logs: dict[str, torch.Tensor] = {}
        reserved_warmup = 0.0
        for it in range(warmup + iters):
            if it == warmup and cuda:
                torch.cuda.synchronize(device)
                reserved_warmup = torch.cuda.max_memory_reserved(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            logs = run_step(it, source, target)
            tracker.update(method.weighting_logs())
            if cuda:
                torch.cuda.synchronize(device)
            if it >= warmup:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        reserved = (
            max(reserved_warmup, torch.cuda.max_memory_reserved(device) / 2**30) if cuda else None
        )
        device_name = torch.cuda.get_device_name(device) if cuda else _cpu_name()
        result = StepTiming(
            config=config,
            name=exp.name,
            method=exp.method,
            weighting=exp.weighting.name,
            device=device_name,
            precision=str(fabric.strategy.precision.precision),
            mode=step_mode(exp, det, graphed),
            batch=bs,
            source_hw=src_hw,
            target_hw=trg_hw,
            iters=iters,
            warmup=warmup,
            seconds=statistics.median(times),
            seconds_mean=statistics.fmean(times),
            peak_gib=peak,
            reserved_gib=reserved,
            max_iters=exp.train.max_iters,
            losses={k: float(v) for k, v in logs.items()},
        )
    del method, optimizers, source, target
    if cuda:
        torch.cuda.empty_cache()
    return result


def step_mode(exp: ExperimentConfig, deterministic: bool, graphed: bool) -> str:
    """How the step ran: ``eager`` or ``cuda-graph``, plus the layout and kernel choices."""
    parts = ["cuda-graph" if graphed else "eager"]
    if exp.train.compile:
        parts.append("compile")
    if exp.train.channels_last:
        parts.append("channels-last")
    if deterministic:
        parts.append("deterministic")
    return " + ".join(parts)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        name = "cpu"
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def gbw_share(timings: Sequence[StepTiming]) -> dict[str, float]:
    """``(t_w - t_none) / t_w`` for every weighting ``w`` measured with ``none`` alongside."""
    base = {(t.config, t.name, t.mode): t.seconds for t in timings if t.weighting == "none"}
    return {
        _key(t): (t.seconds - base[(t.config, t.name, t.mode)]) / t.seconds
        for t in timings
        if t.weighting != "none" and (t.config, t.name, t.mode) in base
    }


def _key(t: StepTiming) -> str:
    return f"{t.config}|{t.name}|{t.mode}|{t.weighting}"


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _hw(hw: tuple[int, int] | None) -> str:
    return "-" if hw is None else f"{hw[1]}x{hw[0]}"


def markdown(timings: Sequence[StepTiming], title: str | None = None) -> str:
    """A markdown table of measurements (device, date, torch version in the heading)."""
    if not timings:
        return ""
    first = timings[0]
    shares = gbw_share(timings)
    heading = title or "Training step on random data"
    lines = [
        f"### {heading}",
        f"{first.device}, torch {torch.__version__}, {dt.date.today().isoformat()}, "
        f"precision {first.precision}; median of {first.iters} iterations after "
        f"{first.warmup} warm-up; data loading not included.",
        "",
        "| recipe | mode | weighting | batch | source / target (WxH) | s/it | "
        "peak GiB allocated / reserved | "
        "iterations | projected run (h) | GBW share of the step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in timings:
        share = shares.get(_key(t))
        lines.append(
            f"| {t.config or t.name} | {t.mode} | {t.weighting} | {t.batch} | "
            f"{_hw(t.source_hw)} / {_hw(t.target_hw)} | {t.seconds:.3f} | "
            f"{_gib(t.peak_gib)} / {_gib(t.reserved_gib)} | {t.max_iters} | "
            f"{t.projected_hours:.1f} | {'-' if share is None else f'{100 * share:+.1f} %'} |"
        )
    return "\n".join(lines)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--size must be H,W (e.g. 512,512), got {text!r}") from None
    return h, w


def run(args: argparse.Namespace) -> list[StepTiming]:
    size = _parse_size(args.size)
    timings = []
    for weighting in [w.strip() for w in args.weightings.split(",") if w.strip()]:
        exp = load_config(args.config, [*args.overrides, f"weighting.name={weighting}"])
        timings.append(
            bench_step(
                exp,
                iters=args.iters,
                warmup=args.warmup,
                size=size,
                accelerator=args.device,
                config=str(args.config),
            )
        )
        t = timings[-1]
        print(f"{t.config} [{t.weighting}]: {t.seconds:.4f} s/it, losses {t.losses}", flush=True)
    text = markdown(timings)
    print(text)
    if args.out:
        with Path(args.out).open("a") as f:
            f.write(text + "\n\n")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [dataclasses.asdict(t) | {"projected_hours": t.projected_hours} for t in timings],
                indent=1,
            )
        )
    return timings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    step_arguments(p)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
