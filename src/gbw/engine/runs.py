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
    path: str | Path,
    overrides: list[str] | None = None,
    device: str | torch.device = "cpu",
    *,
    config: str | Path | None = None,
    data_domains: tuple[str, ...] = (),
) -> tuple[ExperimentConfig, nn.Module, dict[str, Any]]:
    """(config, evaluated network with its trained weights, checkpoint) from a run or file.

    ``overrides`` (``key=value``) adjust the stored config, e.g. ``data.val.root=...``.
    A gbw weight file (``gbw convert``, :mod:`gbw.engine.weights`) carries no experiment:
    its config is ``config`` (a YAML, e.g. the recipe) or the defaults, with the file's
    model section and, without ``config``, its reference evaluation protocol.
    ``data_domains``: the datasets that must have the model's class count (``("val",)`` for
    evaluation; none for prediction).
    """
    from gbw.models import build_model

    ckpt_path = resolve_checkpoint(path)
    from gbw.engine.weights import is_weight_file

    if is_weight_file(ckpt_path):
        return _load_weight_file(ckpt_path, overrides, device, config, data_domains)
    state = load_checkpoint(ckpt_path)
    for key in ("config", "method"):
        if key not in state:
            raise CheckpointError(f"{ckpt_path}: checkpoint has no {key!r} entry")
    exp = from_dict(state["config"])
    exp = load_config(None, list(overrides or []), base=exp, data_domains=data_domains)
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


def _load_weight_file(
    path: Path,
    overrides: list[str] | None,
    device: str | torch.device,
    config: str | Path | None,
    data_domains: tuple[str, ...],
) -> tuple[ExperimentConfig, nn.Module, dict[str, Any]]:
    from gbw.engine.weights import load_weights_into, read_weight_file
    from gbw.models import build_model

    wf = read_weight_file(path)
    exp = load_config(config, data_domains=()) if config is not None else ExperimentConfig()
    exp.model.name = str(wf.model["name"])
    exp.model.num_classes = int(wf.model["num_classes"])
    exp.model.kwargs = dict(wf.model.get("kwargs") or {})
    exp.model.pretrained = ""
    if config is None:
        for key, value in wf.eval.items():
            setattr(exp.eval, key, value)
    # re-validates the whole config
    exp = load_config(None, list(overrides or []), base=exp, data_domains=data_domains)
    model = build_model(exp.model.name, exp.model.num_classes, **dict(exp.model.kwargs))
    load_weights_into(model, wf, path)
    return exp, model.to(device).eval(), {"step": 0, "source": wf.source}
