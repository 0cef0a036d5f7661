"""Method names -> classes, imported lazily so that one method's dependencies never load
for another."""

from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "source_only": "gbw.uda.source_only:SourceOnly",
    "dacs": "gbw.uda.dacs:DACS",
    "advent": "gbw.uda.advent:AdvEnt",
    "minent": "gbw.uda.advent:MinEnt",
    "adaptsegnet": "gbw.uda.adaptsegnet:AdaptSegNet",
    "daformer": "gbw.uda.daformer:DAFormer",
    "hrda": "gbw.uda.hrda:HRDA",
    "mic": "gbw.uda.mic:MIC",
    "edaps": "gbw.uda.edaps:EDAPS",  # panoptic: DAFormer + instance decoder losses on the source
    "edaps_source_only": "gbw.uda.edaps:EDAPSSourceOnly",
}


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
