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
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gbw.config import (
    ExperimentConfig,
    from_dict,
    method_config,
    save_config,
    to_dict,
    validate,
)
from gbw.data.classes import CITYSCAPES_CLASSES
from gbw.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gbw.engine.data import (
    build_dataset,
    build_train_loader,
    class_stats_for,
    eval_classes,
)
from gbw.engine.evaluate import evaluate
from gbw.engine.logger import RunLogger
from gbw.engine.nonfinite import (
    NonFiniteLossError,
    NonFiniteWatch,
    loss_terms,
    module_finite,
)
from gbw.engine.run_folder import claim_run_dir
from gbw.engine.stepper import make_step_runner
from gbw.engine.tracking import WeightTracker
from gbw.fileio import write_json, write_text
from gbw.uda.base import UDAMethod
from gbw.uda.registry import method_class
from gbw.weighting import ClassWeighting, NoWeighting, make_weighting


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
        if w.name != "lbw":
            kwargs["fused"] = w.fused
        if w.name == "gbw":
            kwargs |= {
                "variant": w.variant,
                "count_offset": w.count_offset,
                "use_pixel_weight": w.use_pixel_weight,
            }
    elif w.name == "focal":
        kwargs = {"gamma": w.gamma}

    def make(term: str, num_classes: int | None = None) -> ClassWeighting:
        n = exp.model.num_classes if num_classes is None else num_classes
        if w.terms and term not in w.terms:
            return NoWeighting(n)
        if n != exp.model.num_classes and w.name in ("if", "pf"):
            raise ValueError(
                f"weighting.name={w.name} has class statistics of the {exp.model.num_classes} "
                f"model classes, not of the {n} classes of loss term {term!r}"
            )
        return make_weighting(w.name, n, class_stats=stats, **kwargs)

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
    from gbw.engine.weights import is_weight_file, load_pretrained_weight_file

    whole = exp.model.pretrained and is_weight_file(exp.model.pretrained)
    if whole:  # a gbw weight file (gbw convert): the whole network, not only the backbone
        del model_kwargs["weights"]
    model = build_model(exp.model.name, exp.model.num_classes, **model_kwargs)
    if whole:
        load_pretrained_weight_file(model, exp, exp.model.pretrained)
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
    """The checkpoint to resume from: ``resume=True``/``"last"`` -> the run's last.ckpt,
    a path -> that file; an error when there is none (never a silent start at step 0).
    ``"auto"`` (sweeps, the demo) resumes when last.ckpt exists and starts fresh otherwise."""
    if not resume:
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    if isinstance(resume, str) and resume not in ("", "last"):
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"{resume}: checkpoint to resume from not found")
        return path
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise CheckpointError(
            f"{run_dir}: nothing to resume, there is no checkpoints/last.ckpt (the run never "
            "reached its first checkpoint, or the name= / out_dir= differ); start it without "
            "--resume"
        )
    return last


def _load_training_state(
    method: UDAMethod, optimizers: dict[str, Any], state: dict[str, Any], path: Path
) -> None:
    """Restore modules, optimisers, the method's extra state and the RNGs from a checkpoint;
    a checkpoint that does not fit the configured model is one clear error."""
    try:
        method.load_state_dict(state["method"])
        for name, opt in optimizers.items():
            if name not in state["optimizers"]:
                raise CheckpointError(f"{path}: checkpoint has no state for optimiser {name!r}")
            opt.load_state_dict(state["optimizers"][name])
    except (RuntimeError, KeyError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"{path}: checkpoint does not fit the configured model and optimisers ({detail})"
        ) from None
    method.load_extra_state(state.get("extra", {}))
    set_rng_state(state["rng"])


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
    if strategy == "ddp" and getattr(method_class(exp.method), "ddp_find_unused_parameters", False):
        from lightning_fabric.strategies import DDPStrategy

        # a method whose passes use part of the network each (EDAPS: the instance decoder is
        # idle on the target)
        strategy = DDPStrategy(find_unused_parameters=True)
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
    """Train ``exp`` in ``run_dir`` (default ``out_dir/name``).

    ``resume=True`` continues from ``<run_dir>/checkpoints/last.ckpt`` (an error if there is
    none), ``resume="auto"`` from it when it exists, ``resume=<path>`` from that checkpoint.
    Everything that can fail on bad input (the config, the checkpoint, the model and its
    pretrained weights, the datasets) is checked before the run folder is created or changed
    (:mod:`gbw.engine.run_folder`).
    """
    validate(exp)
    fabric = _make_fabric(exp)
    fabric.launch()
    run_dir = Path(run_dir) if run_dir is not None else Path(exp.out_dir) / exp.name
    out_dir = run_dir.parent
    ckpt_dir = run_dir / "checkpoints"
    resume_from = _find_resume(run_dir, resume)
    is_main = fabric.global_rank == 0
    if is_main:  # fail fast, before anything is built, if the folder may not be used
        claim_run_dir(
            run_dir, out_dir, resuming=resume_from is not None, overwrite=overwrite, dry_run=True
        )

    # Determinism: seeded everything; deterministic kernels where they exist (warn elsewhere).
    fabric.seed_everything(exp.seed, workers=False, verbose=False)
    configure_kernels(exp, fabric.device)

    state = None
    start = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        for key in ("step", "config", "method", "optimizers", "rng"):
            if key not in state:
                raise CheckpointError(f"{resume_from}: checkpoint has no {key!r} entry")
        stored = from_dict(state["config"])
        if to_dict(stored) != to_dict(exp):
            fabric.print(
                f"note: resuming {resume_from} with a config that differs from the "
                "stored one; the given config is used"
            )
        start = int(state["step"])

    method, optimizers = setup_method(fabric, exp)
    if state is not None:
        _load_training_state(method, optimizers, state, resume_from)

    source = build_dataset(exp.data.source, exp, train=True, with_labels=True)
    target = (
        build_dataset(exp.data.target, exp, train=True, with_labels=False)
        if method.uses_target
        else None
    )
    val = build_dataset(exp.data.val, exp, train=False, with_labels=True)
    val_classes = eval_classes(val, exp.eval.classes)

    # Everything is built: now the run folder may be created (rank 0) and written.
    if is_main:
        claim_run_dir(run_dir, out_dir, resuming=state is not None, overwrite=overwrite)
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
        write_json(run_dir / "meta.json", meta)
    fabric.barrier()
    loader_kw = {
        "start_step": start,
        "rank": fabric.global_rank,
        "world": fabric.world_size,
        "pin_memory": fabric.device.type == "cuda",
    }
    src_loader = build_train_loader(source, exp, "source", **loader_kw)
    rcs = getattr(src_loader.sampler, "rcs", None)
    if rcs is not None and is_main:  # the class frequencies rare-class sampling works from
        write_text(run_dir / "rare_class_sampling.txt", rcs.describe() + "\n")
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

    names = tuple(getattr(val, "CLASSES", CITYSCAPES_CLASSES))[: exp.model.num_classes]
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

    watch = NonFiniteWatch(fabric.device)
    last_saved: list[str | None] = [None]  # the newest checkpoint this run wrote

    def stop_if_nonfinite(step: int, weights: bool = False) -> None:
        """Stop the run (on every rank) if a loss term has been non-finite since the start, or
        (``weights``) if the trained state after iteration ``step`` is not finite."""
        found = watch.check()
        weights_bad = weights and found is None and not module_finite(method)
        if weights_bad:
            found = (step - 1, "(parameters)", float("nan"))
        flag = torch.tensor(0.0 if found is None else 1.0, device=fabric.device)
        if fabric.world_size > 1:
            flag = fabric.all_reduce(flag, reduce_op="sum")
        if float(flag) > 0:
            msg = (
                NonFiniteWatch.message(found, last_saved[0], weights=weights_bad)
                if found is not None
                else "a loss term became non-finite on another process; training stopped"
            )
            if bar is not None:
                bar.close()
            logger.close()
            raise NonFiniteLossError(msg)

    def checkpoint(step: int) -> None:
        stop_if_nonfinite(step, weights=True)  # never save a state that is not finite
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
        last_saved[0] = f"checkpoints/step_{step:07d}.ckpt (iteration {step})"
        fabric.barrier()

    confusion: list[list[list[int]] | None] = [None]  # of the latest evaluation

    def run_eval(step: int) -> dict[str, float]:
        if exp.data.val.panoptic:  # PQ/SQ/RQ of the fused maps + IoU of the semantic branch
            from gbw.engine.evaluate_panoptic import evaluate_panoptic as evaluate_fn
        else:
            evaluate_fn = evaluate
        metrics = evaluate_fn(
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
    skipped_in_a_row = 0
    for it in range(start, exp.train.max_iters):
        src = next(src_iter)
        tgt = next(tgt_iter) if tgt_iter is not None else None
        logs = run_step(it, src, tgt)
        done = it + 1
        if run_step.skip_nonfinite:
            if run_step.last_skipped:
                skipped_in_a_row += 1
                bad = [k for k in loss_terms(logs) if not torch.isfinite(logs[k]).all()]
                fabric.print(
                    f"iteration {done}: optimiser step skipped, non-finite gradients "
                    f"(loss terms {', '.join(bad) or 'all finite'}; train.on_nonfinite=skip_step)"
                )
                logger.log(done, {"diag/skipped_step": 1.0})
                if skipped_in_a_row >= exp.train.max_skipped_steps:
                    raise NonFiniteLossError(
                        f"iteration {done}: {skipped_in_a_row} consecutive optimiser steps were "
                        "skipped for non-finite gradients (train.max_skipped_steps); training "
                        "stopped. Lower optim.lr"
                    )
                continue
            skipped_in_a_row = 0
        else:
            watch.update(it, logs)
        tracker.update(method.weighting_logs())
        if done % exp.train.log_every == 0 or done == exp.train.max_iters:
            stop_if_nonfinite(done)
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
    stop_if_nonfinite(end, weights=True)
    result.metrics = run_eval(end)
    result.steps = end - start
    result.seconds = time.perf_counter() - t0
    if is_main:
        write_json(
            run_dir / "metrics.json",
            {
                "step": end,
                "classes": list(val_classes) if val_classes else None,
                **result.metrics,
                "confusion": confusion[0],
            },
        )
        write_json(run_dir / "weights_summary.json", tracker.summary(names))
    logger.close()
    return result
