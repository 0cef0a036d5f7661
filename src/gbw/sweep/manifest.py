"""The sweep folder's manifest and the finished runs' metrics (read by the runner and the
report alike)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gbw.config import ConfigError

MANIFEST = "manifest.json"


def read_manifest(out: str | Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep manifest (is {out} a gbw sweep folder?)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ConfigError(f"{path}: expected a gbw sweep manifest with a 'runs' list")
    return data


def read_finished_metrics(run_dir: Path, max_iters: int | None = None) -> dict[str, Any] | None:
    """``metrics.json`` of a run that reached ``max_iters`` (default: its config's), else None.

    metrics.json is written once, at the end of training, from the last checkpoint's model:
    never a snapshot chosen on the validation results.
    """
    import yaml

    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if max_iters is None:
            max_iters = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_iters"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("step") == max_iters else None
