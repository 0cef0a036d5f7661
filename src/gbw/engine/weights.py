"""gbw weight files: one network's weights with its architecture, e.g. from ``gbw convert``.

A weight file is what ``model.pretrained=`` (initialise the whole network, not only the
backbone) and ``gbw eval`` / ``gbw predict`` (no run folder needed) accept. It holds

* ``format``: ``"gbw-weights-1"``;
* ``model``: ``{"name", "num_classes", "kwargs"}``, the ``model:`` section that builds it;
* ``eval``: the evaluation protocol of the architecture's reference code (``eval:`` keys),
  used by ``gbw eval`` / ``predict`` unless a config or overrides say otherwise;
* ``state_dict``: the network's state dict, loaded strictly;
* ``source``: where it came from (file, module, keys not mapped), for the record.

Written atomically, read with ``torch.load(weights_only=True)``; plain values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gbw.engine.checkpoint import CheckpointError, save_checkpoint

WEIGHTS_FORMAT = "gbw-weights-1"


@dataclass
class WeightFile:
    """The content of a gbw weight file."""

    model: dict[str, Any]
    state_dict: dict[str, Tensor]
    eval: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def save_weight_file(path: str | Path, wf: WeightFile) -> Path:
    """Write ``wf`` atomically (the checkpoint writer; its ``format`` key is replaced by ours)."""
    payload = {
        "model": dict(wf.model),
        "eval": dict(wf.eval),
        "source": dict(wf.source),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in wf.state_dict.items()},
    }
    # save_checkpoint writes {"format": <checkpoint format>, **state}: a "format" key in the
    # state wins, so the file is marked as a weight file, not as a resumable checkpoint.
    return save_checkpoint({**payload, "format": WEIGHTS_FORMAT}, path)


def peek_format(path: str | Path) -> str | None:
    """The ``format`` marker of a torch file without reading its tensors (None if unknown)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip torch file, truncated, refused: the real loader explains
        return None
    return obj.get("format") if isinstance(obj, dict) else None


def is_weight_file(path: str | Path) -> bool:
    return Path(path).is_file() and peek_format(path) == WEIGHTS_FORMAT


def read_weight_file(path: str | Path) -> WeightFile:
    """Read a gbw weight file; :class:`CheckpointError` naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read weight file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path}: not a gbw weight file (no {WEIGHTS_FORMAT!r} marker)")
    model = obj.get("model")
    if not isinstance(model, dict) or "name" not in model or "num_classes" not in model:
        raise CheckpointError(f"{path}: weight file without a model section (name, num_classes)")
    return WeightFile(
        model={"kwargs": {}, **model},
        state_dict=dict(obj["state_dict"]),
        eval=dict(obj.get("eval") or {}),
        source=dict(obj.get("source") or {}),
    )


def load_weights_into(model: nn.Module, wf: WeightFile, where: str | Path) -> None:
    """Load ``wf``'s state dict strictly; :class:`CheckpointError` naming what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in wf.state_dict]
    unexpected = [k for k in wf.state_dict if k not in own]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in wf.state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: weights do not fit model {wf.model['name']!r} (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:3]})"
        )
    model.load_state_dict(wf.state_dict, strict=True)


def load_pretrained_weight_file(model: nn.Module, exp: Any, path: str | Path) -> None:
    """``model.pretrained=<gbw weight file>``: check the architecture, then load strictly."""
    wf = read_weight_file(path)
    name, classes = exp.model.name, exp.model.num_classes
    if wf.model["name"] != name or int(wf.model["num_classes"]) != classes:
        raise CheckpointError(
            f"model.pretrained: {path} is {wf.model['name']!r} with {wf.model['num_classes']} "
            f"classes, the config asks for {name!r} with {classes}"
        )
    load_weights_into(model, wf, path)


def convert_checkpoint(
    checkpoint: str | Path,
    arch: str,
    out: str | Path,
    *,
    module: str = "student",
    num_classes: int | None = None,
    backend: str = "smp",
    model_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """``gbw convert``: read a released checkpoint, write a gbw weight file; returns the
    :class:`gbw.models.convert.ConvertReport` (every key not mapped, and why)."""
    from gbw.models.convert import (
        EVAL_PROTOCOLS,
        ConvertError,
        from_reference,
        read_checkpoint,
        select_module,
    )
    from gbw.models.reference_names import ARCHS, family

    if arch not in ARCHS:
        raise ConvertError(f"unknown --arch {arch!r}; choose one of {sorted(ARCHS)}")
    model_name, base_kwargs = ARCHS[arch]
    sd = read_checkpoint(checkpoint)
    picked, left = select_module(sd, module)
    kwargs = {**base_kwargs, **({"backend": backend} if backend != "smp" else {})}
    kwargs.update(model_kwargs or {})
    model, report = from_reference(
        model_name, picked, num_classes=num_classes, model_kwargs=kwargs, where=str(checkpoint)
    )
    report.arch, report.module = arch, module
    report.not_mapped = {**left, **report.not_mapped}
    kwargs_out = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in report.model_kwargs.items()
    }
    wf = WeightFile(
        model={"name": model_name, "num_classes": report.num_classes, "kwargs": kwargs_out},
        state_dict=model.state_dict(),
        eval=dict(EVAL_PROTOCOLS[family(model_name)]),
        source={
            "file": str(checkpoint),
            "arch": arch,
            "module": module,
            "not_mapped": sorted(report.not_mapped),
        },
    )
    report.out = str(save_weight_file(out, wf))
    return report
