"""Dataset names -> classes: ``dataset_class("gta")``.

This lookup sits above the dataset files (they import :mod:`gbw.data.real`, never this module)
and imports a dataset's module only when that dataset is asked for, so the names are available
without torch (``gbw data --help``, config validation).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gbw.data.real import RealDataset

#: the real datasets on disk, by their short name
DATASETS: dict[str, str] = {
    "gta": "gbw.data.gta:GTA5",
    "synthia": "gbw.data.synthia:Synthia",
    "cityscapes": "gbw.data.cityscapes:Cityscapes",
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
ALIASES = {
    "gta5": "gta",
    "synthia-rand-cityscapes": "synthia",
    "synthia_rand_cityscapes": "synthia",
}


def canonical_name(name: str) -> str:
    """``name`` as one of :data:`DATASET_NAMES` (case-insensitive, aliases allowed)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return key


def dataset_class(name: str) -> type[RealDataset]:
    """The dataset class for ``name`` ("gta", "synthia", "cityscapes"; case-insensitive)."""
    module, attr = DATASETS[canonical_name(name)].split(":")
    return getattr(importlib.import_module(module), attr)
