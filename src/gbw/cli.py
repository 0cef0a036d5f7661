"""gbw: gradient-based class weighting for domain-adaptive segmentation - one tool for the workflow.

gbw demo                          the embedded CPU benchmark, with and without GBW
gbw train CONFIG [key=value ...]  train one experiment (configs/*.yaml)
gbw eval RUN [key=value ...]      per-class IoU/recall of a trained run on its val set
gbw predict RUN IMAGES... --out DIR   colourised masks in the Cityscapes palette
gbw data prepare|check DATASET    prepare and check GTA5 / SYNTHIA / Cityscapes
gbw report RUN [RUN ...]          tables and plots comparing runs
gbw bench overhead|step           speed and memory measurements
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  gbw demo --quick                                 # a 1-minute smoke run of the demo
  gbw demo --seeds 1,2,3 --out demo_out            # the full demo, mean and std over 3 seeds
  gbw train configs/dacs/gta2cs_gbw.yaml train.max_iters=1000 name=try1
  gbw train configs/dacs/gta2cs_gbw.yaml name=try1 --resume   # continue a killed run
  gbw eval runs/try1                                # evaluate its last checkpoint
  gbw predict runs/try1 street.png --out masks/
  gbw data check cityscapes --root data/cityscapes
"""


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.max_iters=2000 weighting.name=gbw",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from gbw.config import load_config
    from gbw.engine.trainer import train

    exp = load_config(args.config, args.overrides)
    result = train(exp, resume=args.resume or False, overwrite=args.overwrite)
    print(f"run folder: {result.run_dir}")
    print(
        f"final mIoU: {100 * result.metrics['mIoU']:.2f} ({result.steps} steps, "
        f"{result.seconds:.0f} s)"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from gbw.analysis.tables import metrics_table
    from gbw.data.classes import CITYSCAPES_CLASSES
    from gbw.engine.data import build_dataset, eval_classes
    from gbw.engine.evaluate import evaluate
    from gbw.engine.runs import load_trained

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    exp, model, state = load_trained(args.run, args.overrides, device)
    val = build_dataset(exp.data.val, exp, train=False, with_labels=True)
    classes = eval_classes(val, exp.eval.classes)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else None
    if exp.data.val.panoptic:  # PQ/SQ/RQ of the fused panoptic maps
        from gbw.engine.evaluate_panoptic import eval_command

        return eval_command(args, exp, model, state, val, classes, device, autocast)
    metrics = evaluate(
        model,
        val,
        exp.eval,
        exp.model.num_classes,
        classes=classes,
        device=device,
        autocast=autocast,
        progress=True,
    )
    names = CITYSCAPES_CLASSES[: exp.model.num_classes]
    print(metrics_table(metrics, names))
    out = {"checkpoint_step": int(state["step"]), **metrics.as_dict(names)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from gbw.engine.predict import predict_files

    written = predict_files(
        args.run,
        args.images,
        args.out,
        trainids=args.trainids,
        cpu=args.cpu,
        overrides=args.overrides,
    )
    print(f"wrote {len(written)} masks to {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gbw.demo import run_demo

    return run_demo(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from gbw.analysis.report import report_runs

    report_runs(args.runs, args.out, baseline=args.baseline)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from gbw.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gbw",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from gbw import __version__

    parser.add_argument("--version", action="version", version=f"gbw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="train the embedded benchmark with and without GBW (CPU)",
        description="Source-only and DACS-style self-training on MiniCity, each "
        "without and with GBW (same seed, same data order); prints per-class "
        "IoU/recall tables and writes tables and plots to --out.",
    )
    from gbw.demo import add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "train",
        help="train one experiment from a YAML config",
        description="Train one experiment. Any config key can be overridden as key=value;\n"
        "unknown keys are rejected with a hint.\n\n"
        "Speed keys (README, 'Training fast on a GPU'):\n"
        "  train.cuda_graph     null (default): on for one CUDA device; the whole iteration\n"
        "                       is captured once as a CUDA graph and replayed\n"
        "  train.deterministic  null (default): on for the CPU, off for CUDA\n"
        "  train.precision      auto (default): bf16-mixed on a GPU, 32-true on the CPU\n"
        "  train.compile, train.channels_last   false by default",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML experiment file (see configs/)")
    _add_overrides(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CKPT",
        help="continue from the run's last checkpoint (or the given file)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run folder of the same name first",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run or checkpoint on its val set")
    p.add_argument("run", help="run folder (uses checkpoints/last.ckpt) or a .ckpt file")
    _add_overrides(p)
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--cpu", action="store_true", help="evaluate on the CPU even with a GPU")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="write colourised segmentation masks for images")
    p.add_argument("run", help="run folder or .ckpt file")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--trainids", action="store_true", help="also write raw trainId PNGs (<name>_trainIds.png)"
    )
    p.add_argument("--cpu", action="store_true")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key=value",
        help="config override (e.g. eval.resize=[1024,512]); repeatable",
    )
    p.set_defaults(func=_cmd_predict)

    from gbw.data.commands import register as register_data

    register_data(sub)

    p = sub.add_parser("report", help="compare runs: per-class tables and GBW weight plots")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="output folder for report.md, CSV and PNGs")
    p.add_argument(
        "--baseline",
        default=None,
        help="run folder the others are compared with (default: the first)",
    )
    p.set_defaults(func=_cmd_report)

    from gbw.bench import add_bench_arguments

    p = sub.add_parser("bench", help="speed and memory benchmarks (results for BENCHMARKS.md)")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gbw.config import ConfigError
    from gbw.engine.checkpoint import CheckpointError
    from gbw.engine.trainer import RunExistsError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, RunExistsError, FileNotFoundError) as exc:
        print(f"gbw {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
