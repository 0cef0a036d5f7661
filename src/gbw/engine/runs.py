"""Find and load a trained run (a run folder or a checkpoint file) for eval and predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gbw.config import ExperimentConfig, from_dict, load_config
from gbw.engine.checkpoint import CheckpointError, load_checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder -> its ``checkpoints/last.ckpt``; a file -> itself."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise CheckpointError(f"{path}: run folder has no checkpoints/last.ckpt")
        return ckpt
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    return path


def load_trained(
    path: str | Path, overrides: list[str] | None = None, device: str | torch.device = "cpu"
) -> tuple[ExperimentConfig, nn.Module, dict[str, Any]]:
    """(config, evaluated network with its trained weights, checkpoint) from a run or file.

    ``overrides`` (``key=value``) adjust the stored config, e.g. ``data.val.root=...``.
    """
    from gbw.models import build_model

    ckpt_path = resolve_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    for key in ("config", "method"):
        if key not in state:
            raise CheckpointError(f"{ckpt_path}: checkpoint has no {key!r} entry")
    exp = from_dict(state["config"])
    if overrides:
        exp = load_config(None, overrides, base=exp)
    prefix = state.get("eval_module", "model") + "."
    weights = {k[len(prefix) :]: v for k, v in state["method"].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{ckpt_path}: holds no weights under {prefix!r}")
    # the trained weights replace any pretrained initialisation: do not ask for those files
    model = build_model(exp.model.name, exp.model.num_classes, **dict(exp.model.kwargs))
    expected = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{ckpt_path}: weights do not fit model {exp.model.name!r} with model.kwargs="
            f"{dict(exp.model.kwargs)}: {len(wrong)} tensor(s) of another shape, e.g. {wrong[0]}"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt_path}: weights do not fit model {exp.model.name!r} (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return exp, model.to(device).eval(), state
