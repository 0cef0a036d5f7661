"""The one training loop every method runs in (Lightning Fabric: CPU/GPU, DDP, bf16).

Per iteration: set learning rates -> next source (and target) batch -> the method's
``training_step`` under autocast (it calls ``step.backward`` and its optimisers) -> the
method's post-step hook (EMA) -> class-weight tracking on the device -> logs, evaluation and
checkpoints at their intervals. Nothing here reads a tensor value back to the host except at
log, evaluation and checkpoint steps.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gbw.config import ExperimentConfig, from_dict, method_config, save_config, to_dict
from gbw.data.classes import CITYSCAPES_CLASSES
from gbw.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from gbw.engine.data import (
    build_dataset,
    build_train_loader,
    class_stats_for,
    eval_classes,
)
from gbw.engine.evaluate import evaluate
from gbw.engine.logger import RunLogger
from gbw.engine.stepper import make_step_runner
from gbw.engine.tracking import WeightTracker
from gbw.uda.base import UDAMethod
from gbw.uda.registry import method_class
from gbw.weighting import ClassWeighting, NoWeighting, make_weighting


class RunExistsError(FileExistsError):
    """The run folder already holds checkpoints and neither --resume nor a new name was given."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def weighting_factory(exp: ExperimentConfig):
    """``term -> strategy``: every weighted loss term gets its own instance (own weights)."""
    w = exp.weighting
    stats = class_stats_for(exp)
    kwargs: dict[str, Any] = {}
    if w.name in ("gbw", "gbw_authors", "lbw"):
        kwargs = {"lam": w.lam, "scale": w.scale, "present_only": w.present_only}
        if w.name == "gbw_authors":
            del kwargs["scale"]  # the authors' preset fixes it (scale="none")
        if w.name == "gbw":
            kwargs |= {
                "variant": w.variant,
                "count_offset": w.count_offset,
                "use_pixel_weight": w.use_pixel_weight,
            }
    elif w.name == "focal":
        kwargs = {"gamma": w.gamma}

    def make(term: str) -> ClassWeighting:
        if w.terms and term not in w.terms:
            return NoWeighting(exp.model.num_classes)
        return make_weighting(w.name, exp.model.num_classes, class_stats=stats, **kwargs)

    return make


def build_method(exp: ExperimentConfig) -> UDAMethod:
    """Model + method from the config (no devices, no data)."""
    from gbw.models import build_model

    model_kwargs = dict(exp.model.kwargs)
    if exp.model.pretrained:
        if not Path(exp.model.pretrained).expanduser().is_file():
            raise FileNotFoundError(
                f"model.pretrained: weight file not found: {exp.model.pretrained} (the recipe's "
                "YAML says where to download it; model.pretrained='' trains from random init)"
            )
        model_kwargs["weights"] = exp.model.pretrained
    model = build_model(exp.model.name, exp.model.num_classes, **model_kwargs)
    cls = method_class(exp.method)
    mcfg = method_config(cls.Config, exp.uda, exp.method)
    return cls(model, mcfg, exp, weighting_factory(exp))


def setup_method(fabric: Any, exp: ExperimentConfig) -> tuple[UDAMethod, dict[str, Any]]:
    """The method on the fabric's device with its optimisers, every optimised module wrapped.

    Fabric wraps each optimised module for DDP/precision. The wrapper is stored as a plain
    attribute that shadows the registered module: the method calls the wrapper, while
    ``method.state_dict()``, ``.to()`` and ``method._modules[name]`` keep seeing the raw modules.
    Each optimiser group remembers its ``initial_lr`` for the schedule (:func:`lr_factor`).
    """
    method = build_method(exp)
    optimizers = method.configure_optimizers()
    method.to(fabric.device)
    if exp.train.channels_last:  # 4-D weights NHWC: cuDNN's fastest layout for bf16 convs
        method.to(memory_format=torch.channels_last)
    if exp.train.compile:
        # in place (nn.Module.compile): parameter names and checkpoints stay those of the
        # eager networks; the student, teacher, discriminators and frozen feature networks
        for child in method.children():
            if any(True for _ in child.parameters()):
                child.compile()
    for name, opt in list(optimizers.items()):
        module, optimizers[name] = fabric.setup(getattr(method, name), opt)
        object.__setattr__(method, name, module)
    for opt in optimizers.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return method, optimizers


def deterministic(exp: ExperimentConfig, device: torch.device) -> bool:
    """``train.deterministic``, where ``null`` (auto) means on for the CPU, off for CUDA.

    Deterministic kernels make CPU runs bit-reproducible (and resumes bit-identical); on a GPU
    they cost a DAFormer step ~40% (H200, BENCHMARKS.md), and the references (mmseg's
    ``deterministic=False``) train without them.
    """
    flag = exp.train.deterministic
    return device.type != "cuda" if flag is None else bool(flag)


def configure_kernels(exp: ExperimentConfig, device: torch.device) -> None:
    """Deterministic algorithms (see :func:`deterministic`) and TF32 for fp32 matmuls on CUDA."""
    if deterministic(exp, device):
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cuda":
        # the fp32 work outside autocast (GBW's statistics, losses) may use TF32 tensor cores
        torch.set_float32_matmul_precision("high")


def _versions() -> dict[str, str]:
    import gbw

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gbw": gbw.__version__,
        "platform": platform.platform(),
    }
    # Read from the installed metadata: importing transformers only for its version costs
    # seconds per run, which the many short MiniCity runs of a sweep would pay each time.
    for pkg in (
        "torchvision",
        "lightning-fabric",
        "numpy",
        "transformers",
        "segmentation-models-pytorch",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg.replace("-", "_")] = importlib.metadata.version(pkg)
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name()
    return out


def _find_resume(run_dir: Path, resume: bool | str) -> Path | None:
    if not resume:
        return None
    if isinstance(resume, str) and resume not in ("", "auto", "last"):
        return Path(resume)
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.exists() else None


def _make_fabric(exp: ExperimentConfig):
    from lightning_fabric import Fabric

    t = exp.train
    accelerator = t.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    precision = t.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "cuda" else "32-true"
    strategy = t.strategy
    if strategy == "auto" and t.devices * t.num_nodes > 1:
        strategy = "ddp"
    return Fabric(
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=precision,
    )


def train(
    exp: ExperimentConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``exp``; ``resume=True`` continues from ``<run_dir>/checkpoints/last.ckpt``."""
    fabric = _make_fabric(exp)
    fabric.launch()
    run_dir = Path(run_dir) if run_dir is not None else Path(exp.out_dir) / exp.name
    ckpt_dir = run_dir / "checkpoints"
    resume_from = _find_resume(run_dir, resume)
    explicit = isinstance(resume, str) and resume not in ("", "auto", "last")
    if explicit and (resume_from is None or not resume_from.exists()):
        raise FileNotFoundError(f"{resume}: checkpoint to resume from not found")
    if (
        fabric.global_rank == 0
        and resume_from is None
        and ckpt_dir.exists()
        and any(ckpt_dir.iterdir())
    ):
        if not overwrite:
            raise RunExistsError(
                f"{run_dir} already holds checkpoints; resume it with --resume, or choose "
                "another name= or out_dir= (or --overwrite to start again)"
            )
        shutil.rmtree(run_dir)
    fabric.barrier()

    # Determinism: seeded everything; deterministic kernels where they exist (warn elsewhere).
    fabric.seed_everything(exp.seed, workers=False, verbose=False)
    configure_kernels(exp, fabric.device)

    state = None
    start = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        stored = from_dict(state["config"])
        if to_dict(stored) != to_dict(exp):
            fabric.print(
                f"note: resuming {resume_from} with a config that differs from the "
                "stored one; the given config is used"
            )
        start = int(state["step"])

    is_main = fabric.global_rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(exp, run_dir / "config.yaml")
        meta = {
            "seed": exp.seed,
            "versions": _versions(),
            "argv": sys.argv,
            "world_size": fabric.world_size,
            "precision": str(fabric.strategy.precision),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "resumed_from_step": start,
        }
        (run_dir / "meta.json").write_text(json.dumps(meta, indent=1))

    method, optimizers = setup_method(fabric, exp)
    if state is not None:
        method.load_state_dict(state["method"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        method.load_extra_state(state.get("extra", {}))
        set_rng_state(state["rng"])

    source = build_dataset(exp.data.source, exp, train=True, with_labels=True)
    target = (
        build_dataset(exp.data.target, exp, train=True, with_labels=False)
        if method.uses_target
        else None
    )
    val = build_dataset(exp.data.val, exp, train=False, with_labels=True)
    val_classes = eval_classes(val, exp.eval.classes)
    loader_kw = {
        "start_step": start,
        "rank": fabric.global_rank,
        "world": fabric.world_size,
        "pin_memory": fabric.device.type == "cuda",
    }
    src_loader = build_train_loader(source, exp, "source", **loader_kw)
    rcs = getattr(src_loader.sampler, "rcs", None)
    if rcs is not None and is_main:  # the class frequencies rare-class sampling works from
        (run_dir / "rare_class_sampling.txt").write_text(rcs.describe() + "\n")
        fabric.print(rcs.describe())
    src_iter = iter(fabric.setup_dataloaders(src_loader, use_distributed_sampler=False))
    tgt_iter = None
    if target is not None:
        tgt_iter = iter(
            fabric.setup_dataloaders(
                build_train_loader(target, exp, "target", **loader_kw),
                use_distributed_sampler=False,
            )
        )

    names = CITYSCAPES_CLASSES[: exp.model.num_classes]
    logger = RunLogger(run_dir, names, enabled=is_main, resume_step=start if state else None)
    tracker = WeightTracker.from_state(state.get("tracker") if state else None, fabric.device)
    t0 = time.perf_counter()
    result = TrainResult(run_dir)
    bar = None
    if is_main and exp.train.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=exp.train.max_iters, initial=start, desc=exp.name, dynamic_ncols=True, leave=False
        )

    def checkpoint(step: int) -> None:
        if is_main:
            payload = {
                "step": step,
                "config": to_dict(exp),
                "method": method.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "extra": method.extra_state(),
                "rng": rng_state(),
                "tracker": tracker.state_dict(),
                "eval_module": "model",
            }
            save_checkpoint(payload, ckpt_dir / f"step_{step:07d}.ckpt")
            # last.ckpt: a hard link to the newest step file, swapped in atomically
            tmp = ckpt_dir / ".last.tmp"
            tmp.unlink(missing_ok=True)
            os.link(ckpt_dir / f"step_{step:07d}.ckpt", tmp)
            os.replace(tmp, ckpt_dir / "last.ckpt")
            old = sorted(ckpt_dir.glob("step_*.ckpt"))[: -max(exp.train.keep_ckpts, 1)]
            for p in old:
                p.unlink()
        fabric.barrier()

    confusion: list[list[list[int]] | None] = [None]  # of the latest evaluation

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(
            method.eval_model(),
            val,
            exp.eval,
            exp.model.num_classes,
            classes=val_classes,
            device=fabric.device,
            rank=fabric.global_rank,
            world=fabric.world_size,
            autocast=fabric.autocast,
        )
        values = metrics.as_dict(names)
        confusion[0] = metrics.matrix.tolist()
        logger.log(step, {f"val/{k}": v for k, v in values.items()})
        return values

    last_miou = float("nan")
    run_step = make_step_runner(fabric, exp, method, optimizers)
    for it in range(start, exp.train.max_iters):
        src = next(src_iter)
        tgt = next(tgt_iter) if tgt_iter is not None else None
        logs = run_step(it, src, tgt)
        tracker.update(method.weighting_logs())
        done = it + 1
        if done % exp.train.log_every == 0 or done == exp.train.max_iters:
            scalars = {f"loss/{k}": v for k, v in logs.items()}
            scalars["lr"] = float(next(iter(optimizers.values())).param_groups[0]["lr"])
            scalars |= tracker.interval_means()
            logger.log(done, scalars)
            if bar is not None:
                total = sum(float(v) for k, v in logs.items() if not k.startswith("diag"))
                bar.set_postfix(loss=f"{total:.3f}", mIoU=f"{100 * last_miou:.1f}")
        if bar is not None:
            bar.update(1)
        if exp.train.eval_every and done % exp.train.eval_every == 0 and done < exp.train.max_iters:
            last_miou = run_eval(done)["mIoU"]
        if exp.train.ckpt_every and done % exp.train.ckpt_every == 0:
            checkpoint(done)

    end = exp.train.max_iters
    saved_at_end = exp.train.ckpt_every and end % exp.train.ckpt_every == 0
    if start < end and not saved_at_end:
        checkpoint(end)
    if bar is not None:
        bar.close()
    result.metrics = run_eval(end)
    result.steps = end - start
    result.seconds = time.perf_counter() - t0
    if is_main:
        (run_dir / "metrics.json").write_text(
            json.dumps(
                {
                    "step": end,
                    "classes": list(val_classes) if val_classes else None,
                    **result.metrics,
                    "confusion": confusion[0],
                },
                indent=1,
            )
        )
        (run_dir / "weights_summary.json").write_text(json.dumps(tracker.summary(names), indent=1))
    logger.close()
    return result
