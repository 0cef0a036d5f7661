"""One training iteration, run eagerly or replayed as one captured CUDA graph.

:class:`StepRunner` is what ``gbw train`` and ``gbw bench step`` call once per iteration:
set the learning rates of iteration ``it`` -> the method's ``training_step`` under autocast
(forward passes, losses, backward passes, optimiser steps) -> the method's post-step hook
(EMA teacher). :class:`GraphedStepRunner` (``train.cuda_graph``: by default on for a run on
one CUDA device) runs the same thing
but, after a few eager warm-up iterations, captures the whole iteration once as a CUDA graph
and from then on copies each batch into the graph's static input buffers and replays it. An
eager MiT-B5 step is bound by kernel launches and Python overhead (shared/design/
PERFORMANCE.md: 210 ms eager vs 36 ms as one graph on an H200); replay removes both.

Why this is possible: nothing in a gbw training step reads a tensor back to the host (GBW's QP
is solved on the device, pseudo-label confidence, ClassMix classes, HRDA crop offsets and MIC
masks are tensor ops on device generators, the EMA rate is a function of a device step
counter), and the shapes are fixed by the recipe's crops. What graph mode changes:

* optimisers take their learning rate as a 0-d device tensor, updated in place before each
  replay; Adam/AdamW run with ``capturable=True``, SGD with its fused kernel (the only SGD
  implementation that takes a device learning rate without reading it back);
* ``Step.index`` is a 0-d device tensor (the EMA teacher's rate reads it on the device);
* the method's own random generators are registered with the graph, so every replay draws
  new numbers. The numbers differ from an eager run with the same seed (the graph advances
  the generators' offsets instead of replaying the eager call sequence), so a graph-mode run
  is reproducible from its seed on the same GPU and software, but not bit-identical to an
  eager one, and a resumed graph-mode run is not bit-identical to an uninterrupted one;
* one GPU only (``train.devices: 1``), and batches must keep their shapes: a batch of
  another shape (the last, short batch of an epoch never occurs: the samplers are infinite)
  raises an error.

The logs a replay returns are the graph's own output tensors, overwritten by the next replay;
the engine reads them before that (or clones what it keeps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gbw.config import ExperimentConfig
from gbw.engine.nonfinite import BufferSnapshot, SkipNonFinite
from gbw.uda.base import Batch, Step, UDAMethod


def lr_factor(exp: ExperimentConfig, step: int) -> float:
    """mmcv's poly schedule with optional linear warm-up (DAFormer: 1500 iters, ratio 1e-6)."""
    o = exp.optim
    total = o.schedule_iters or exp.train.max_iters
    if o.schedule == "constant":
        factor = 1.0
    elif o.schedule == "poly":
        progress = min(step, total) / max(total, 1)
        factor = (1 - progress) ** o.power
        factor = (1 - o.min_lr / o.lr) * factor + o.min_lr / o.lr if o.lr > 0 else factor
    else:
        raise ValueError(f"optim.schedule must be poly or constant, got {o.schedule!r}")
    if o.warmup_iters and step < o.warmup_iters:
        factor *= 1 - (1 - step / o.warmup_iters) * (1 - o.warmup_ratio)
    return factor


def set_learning_rates(optimizers: Mapping[str, torch.optim.Optimizer], factor: float) -> None:
    """``lr = initial_lr * factor`` in every group; a device-tensor ``lr`` is filled in place."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            lr = group["initial_lr"] * factor
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr


class StepRunner:
    """Runs training iteration ``it`` eagerly: ``runner(it, source, target) -> logs``."""

    def __init__(
        self,
        fabric: Any,
        exp: ExperimentConfig,
        method: UDAMethod,
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> None:
        self.fabric = fabric
        self.exp = exp
        self.method = method
        self.optimizers = optimizers
        self.channels_last = exp.train.channels_last
        make_eager(optimizers, fabric.device)  # GraphedStepRunner makes them capturable again
        # train.on_nonfinite=skip_step: optimisers that skip a step with non-finite gradients
        self.skip_nonfinite = exp.train.on_nonfinite == "skip_step"
        self.step_optimizers: dict[str, Any] = (
            {k: SkipNonFinite(o) for k, o in optimizers.items()}
            if self.skip_nonfinite
            else optimizers
        )
        self.last_skipped = False  # whether the last iteration's optimiser steps were skipped

    def prepare(self, batch: Batch | None) -> Batch | None:
        """The batch as the step sees it (channels-last images when ``train.channels_last``)."""
        if batch is None or not self.channels_last:
            return batch
        return {
            k: v.contiguous(memory_format=torch.channels_last)
            if isinstance(v, Tensor) and v.ndim == 4
            else v
            for k, v in batch.items()
        }

    def run_step(
        self, index: int | Tensor, source: Batch, target: Batch | None
    ) -> dict[str, Tensor]:
        step = Step(index, self.fabric.backward, self.step_optimizers, self.exp.train.max_iters)  # type: ignore[arg-type]
        snapshot = BufferSnapshot(self.method) if self.skip_nonfinite else None
        with self.fabric.autocast():
            logs = self.method.training_step(source, target, step)
        self.method.after_optimizer_step(step)
        if snapshot is not None:
            self.last_skipped = any(o.skipped for o in self.step_optimizers.values())
            if self.last_skipped:  # undo what the skipped iteration's forward passes changed
                snapshot.restore()
            for o in self.step_optimizers.values():
                o.reset()
        return logs

    def __call__(self, it: int, source: Batch, target: Batch | None) -> dict[str, Tensor]:
        set_learning_rates(self.optimizers, lr_factor(self.exp, it))
        return self.run_step(it, self.prepare(source), self.prepare(target))


def make_capturable(optimizers: Mapping[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Switch optimisers to device-tensor learning rates and capture-safe kernels, in place.

    Adam/AdamW: ``capturable=True`` (their step counts live on the device); SGD: the fused
    kernel. State restored from a checkpoint is moved where those kernels expect it.
    Anything else cannot be captured and raises ``ValueError``.
    """
    for name, opt in optimizers.items():
        if isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
            flag = "capturable"
        elif isinstance(opt, torch.optim.SGD):
            flag = "fused"
        else:
            raise ValueError(
                f"train.cuda_graph: optimiser {name!r} is a {type(opt).__name__}; only "
                "SGD, Adam and AdamW can be captured"
            )
        for group in opt.param_groups:
            group[flag] = True
            lr = group["lr"]
            if not isinstance(lr, Tensor) or lr.device != device:
                group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        opt.defaults[flag] = True
        for state in opt.state.values():  # resumed: step counts on the device, as float32
            step = state.get("step")
            if isinstance(step, Tensor) and flag == "capturable":
                state["step"] = step.to(device=device, dtype=torch.float32)


def make_eager(optimizers: Mapping[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Undo :func:`make_capturable` where an eager run needs it, in place.

    A checkpoint written in graph mode stores device-tensor learning rates and the capture
    flags; resumed eagerly (several GPUs, the CPU, ``train.cuda_graph=false``) the learning
    rates become numbers again, and off CUDA Adam's ``capturable`` is switched off (it only
    runs on accelerators). Fused SGD runs on the CPU and on CUDA, so it stays.
    """
    for opt in optimizers.values():
        for group in opt.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"] = float(group["lr"])
            if device.type == "cpu" and group.get("capturable"):
                group["capturable"] = False
        if device.type == "cpu" and opt.defaults.get("capturable"):
            opt.defaults["capturable"] = False


def _static_copy(batch: Batch | None) -> Batch | None:
    if batch is None:
        return None
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}


def _fill(static: Batch | None, batch: Batch | None, it: int) -> None:
    """Copy ``batch``'s tensors into the graph's input buffers (same keys and shapes)."""
    if static is None:
        if batch is not None:
            raise ValueError("train.cuda_graph: a target batch appeared after capture")
        return
    if batch is None:
        raise ValueError("train.cuda_graph: the target batch is missing after capture")
    for k, buf in static.items():
        if not isinstance(buf, Tensor):
            continue
        v = batch.get(k)
        if not isinstance(v, Tensor) or v.shape != buf.shape or v.dtype != buf.dtype:
            got = "missing" if v is None else f"{getattr(v, 'dtype', type(v))} {tuple(v.shape)}"
            raise ValueError(
                f"train.cuda_graph: iteration {it}: batch key {k!r} is {got}, but the graph "
                f"was captured with {buf.dtype} {tuple(buf.shape)}; graph mode needs "
                "fixed-size batches (set data.*.crop), or train.cuda_graph=false"
            )
        buf.copy_(v, non_blocking=True)


def check_graph_support(fabric: Any) -> None:
    """Graph mode needs one process on a CUDA device; a clear error otherwise."""
    if fabric.device.type != "cuda":
        raise ValueError(
            f"train.cuda_graph needs a CUDA device, the run is on {fabric.device.type}; "
            "set train.cuda_graph=false"
        )
    if fabric.world_size != 1:
        raise ValueError(
            f"train.cuda_graph supports one GPU, the run has {fabric.world_size} "
            "processes; set train.cuda_graph=false for several GPUs"
        )


class GraphedStepRunner(StepRunner):
    """Eager warm-up iterations, then one captured CUDA graph replayed for every iteration.

    Iterations ``[start, start + warmup)`` run eagerly on a side stream (the warm-up
    ``torch.cuda.graphs`` asks for: cuDNN/cuBLAS choose their kernels and workspaces, the
    optimisers create their state, lazily built generators and buffers come into being). The
    next iteration is captured, then replayed; so is every later one.
    """

    def __init__(
        self,
        fabric: Any,
        exp: ExperimentConfig,
        method: UDAMethod,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        warmup: int = 3,
    ) -> None:
        super().__init__(fabric, exp, method, optimizers)
        check_graph_support(fabric)
        device = fabric.device
        self.device = device
        self.warmup = max(int(warmup), 1)
        self.warmed = 0
        self.index = torch.zeros((), dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_source: Batch | None = None
        self.static_target: Batch | None = None
        self.static_logs: dict[str, Tensor] = {}
        self.side_stream = torch.cuda.Stream(device)
        make_capturable(optimizers, device)

    def __call__(self, it: int, source: Batch, target: Batch | None) -> dict[str, Tensor]:
        set_learning_rates(self.optimizers, lr_factor(self.exp, it))
        source, target = self.prepare(source), self.prepare(target)
        if self.graph is not None:
            _fill(self.static_source, source, it)
            _fill(self.static_target, target, it)
            self.index.fill_(it)
            self.graph.replay()
            return self.static_logs
        if self.warmed < self.warmup:
            # eager, on a side stream, with the device step counter as the graph will use it
            self.index.fill_(it)
            stream = self.side_stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                logs = self.run_step(self.index, source, target)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.warmed += 1
            return logs
        self._capture(source, target)
        return self(it, source, target)

    def _capture(self, source: Batch, target: Batch | None) -> None:
        torch.cuda.synchronize(self.device)
        self.static_source = _static_copy(source)
        self.static_target = _static_copy(target)
        graph = torch.cuda.CUDAGraph()
        for gen in self.method.generators():
            graph.register_generator_state(gen)
        for opt in self.optimizers.values():  # gradients are allocated inside the graph
            opt.zero_grad(set_to_none=True)
        # thread_local: the data loader's pin-memory thread may call CUDA while we capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static_logs = self.run_step(self.index, self.static_source, self.static_target)  # type: ignore[arg-type]
        self.graph = graph


def graph_mode(exp: ExperimentConfig, fabric: Any) -> bool:
    """``train.cuda_graph``, where ``null`` (auto) means on for a run on one CUDA device
    (unless ``train.compile`` is set)."""
    flag = exp.train.cuda_graph
    if flag is None and exp.train.on_nonfinite == "skip_step":
        return False  # skipping decides on the host, between capture-free eager steps
    from gbw.uda.registry import method_class

    capturable = getattr(method_class(exp.method), "cuda_graph_capturable", True)
    if flag and not capturable:
        raise ValueError(
            f"train.cuda_graph: method {exp.method!r} has data-dependent shapes (a detector) "
            "and cannot be captured; set train.cuda_graph=false"
        )
    if flag and exp.train.compile:
        raise ValueError(
            "train.compile and train.cuda_graph are alternatives: a compiled network that "
            "recompiles during the capture breaks it; set one of them to false"
        )
    if flag is None:
        return (
            fabric.device.type == "cuda"
            and fabric.world_size == 1
            and not exp.train.compile
            and capturable
        )
    return bool(flag)


def make_step_runner(
    fabric: Any,
    exp: ExperimentConfig,
    method: UDAMethod,
    optimizers: dict[str, torch.optim.Optimizer],
) -> StepRunner:
    """The runner ``exp.train`` asks for: eager, or a captured CUDA graph."""
    if graph_mode(exp, fabric):
        return GraphedStepRunner(
            fabric, exp, method, optimizers, warmup=exp.train.cuda_graph_warmup
        )
    return StepRunner(fabric, exp, method, optimizers)
