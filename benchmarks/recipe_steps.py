"""Time every DeepLabV2-era recipe's training step on random data, with and without GBW.

Runs ``gbw bench step`` on each recipe config in its own process (so that each peak-memory
figure is its own), then appends one markdown table (device, date, torch version, s/it, peak
GPU memory, projected time of the whole run, GBW's share of the step) to the results file.
Meant for one GPU: about 20-40 s per recipe with the defaults; no dataset or weight file needed.

Usage:
    python benchmarks/recipe_steps.py                          # GTA5 -> Cityscapes recipes
    python benchmarks/recipe_steps.py --all --iters 40         # SYNTHIA ones too
    python benchmarks/recipe_steps.py --configs configs/dacs/gta2cs.yaml --size 64,64 --iters 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("source_only", "adaptsegnet", "advent", "minent", "dacs")


def default_configs(all_sources: bool) -> list[str]:
    tags = ("gta2cs", "synthia2cs") if all_sources else ("gta2cs",)
    return [f"configs/{m}/{t}.yaml" for t in tags for m in METHODS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="*", default=None, help="recipe YAMLs (default: GTA5 ones)")
    p.add_argument("--all", action="store_true", help="SYNTHIA -> Cityscapes recipes too")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--weightings", default="none,gbw")
    p.add_argument("--size", default=None, help="H,W for both domains (smoke runs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per recipe")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/recipe_steps.md"))
    p.add_argument("--title", default=None, help="heading of the appended table")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every config")
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from gbw.bench.step import StepTiming, markdown

    configs = args.configs or default_configs(args.all)
    timings: list[StepTiming] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(configs):
            out = Path(tmp) / f"{i}.json"
            cmd = [
                sys.executable, "-m", "gbw.cli", "bench", "step", config, *args.overrides,
                "--iters", str(args.iters), "--warmup", str(args.warmup),
                "--weightings", args.weightings, "--device", args.device, "--json", str(out),
            ]  # fmt: skip
            if args.size:
                cmd += ["--size", args.size]
            print("$", " ".join(cmd), flush=True)
            try:
                res = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                failed.append(f"{config} (timed out after {args.timeout:.0f} s)")
                continue
            if res.returncode != 0 or not out.exists():
                failed.append(f"{config} (exit code {res.returncode})")
                continue
            for row in json.loads(out.read_text()):
                row.pop("projected_hours", None)
                row["source_hw"] = tuple(row["source_hw"])
                row["target_hw"] = tuple(row["target_hw"]) if row["target_hw"] else None
                timings.append(StepTiming(**row))
    title = args.title or (
        "Recipes: training step on random data"
        if args.configs
        else "DeepLabV2-era recipes: training step on random data"
    )
    text = markdown(timings, title)
    if failed:
        text += "\n\nFailed: " + "; ".join(failed)
    print(text)
    out_file = Path(args.out)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("a") as f:
        f.write(text + "\n\n")
    print(f"appended to {out_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
