"""benchmarks/mit_backends.py keeps running (tiny MiT, CPU, one step per configuration)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mit_backends.py"


def test_mit_backend_benchmark_runs(capsys) -> None:
    spec = importlib.util.spec_from_file_location("mit_backends", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(
        ["--variant", "tiny", "--size", "64", "--iters", "1", "--warmup", "0", "--device", "cpu"]
    )
    assert [(r["backend"], r["attention"]) for r in rows] == [
        ("smp", "library"),
        ("smp", "sdpa"),
        ("hf", "library"),
        ("hf", "sdpa"),
    ]
    assert all(r["ms"] > 0 and r["loss"] == r["loss"] for r in rows)
    out = capsys.readouterr().out
    assert "| backend | attention | compiled |" in out and "torch " in out
