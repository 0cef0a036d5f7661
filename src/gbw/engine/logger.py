"""Run logs: a long-format CSV (step, tag, value) that plots read back, plus TensorBoard."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import torch


class RunLogger:
    """Scalars to ``scalars.csv`` and TensorBoard (rank 0 only).

    Per-class tensors (C,) are written one row per class as ``<tag>/<class name>``. On resume,
    rows after the resumed step are dropped first so the CSV never holds a step twice.
    """

    def __init__(
        self,
        run_dir: Path,
        class_names: tuple[str, ...],
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.class_names = class_names
        self.path = run_dir / "scalars.csv"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            rows = [r for r in csv.reader(self.path.open()) if r]
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= resume_step]
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerows(keep)
        new = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "tag", "value"])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.tb = None

    def log(self, step: int, values: Mapping[str, float | torch.Tensor]) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                names = self.class_names if value.numel() == len(self.class_names) else None
                for i, v in enumerate(value.detach().float().cpu().tolist()):
                    self._write(step, f"{tag}/{names[i] if names else i}", v)
            else:
                self._write(step, tag, float(value))
        self._file.flush()

    def _write(self, step: int, tag: str, value: float) -> None:
        self._csv.writerow([step, tag, repr(value) if not math.isnan(value) else "nan"])
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``scalars.csv`` back as ``{tag: [(step, value), ...]}``."""
    out: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return out
