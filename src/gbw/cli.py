"""gbw: gradient-based class weighting for domain-adaptive segmentation - one tool for the workflow.

gbw demo                          the embedded CPU benchmark, with and without GBW
gbw train CONFIG [key=value ...]  train one experiment (configs/*.yaml)
gbw eval RUN [key=value ...]      per-class IoU/recall of a trained run on its val set
gbw predict RUN IMAGES... --out DIR   masks for images and folders (colour, trainIds, labelIds)
gbw convert CKPT --arch A --out F  released DAFormer/HRDA/MIC checkpoints -> gbw weights
gbw data prepare|check DATASET    prepare and check GTA5 / SYNTHIA / Cityscapes
gbw report RUN [RUN ...]          tables and plots comparing runs
gbw sweep CONFIG --seeds --grid   a grid of settings x seeds, resumable; gbw report --sweep DIR
gbw study                         the paper's analysis on MiniCity (paired over seeds)
gbw bench overhead|step           speed and memory measurements
"""

from __future__ import annotations

import argparse
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
    resume = args.resume if args.resume not in (None, "last") else args.resume == "last"
    result = train(exp, resume=resume, overwrite=args.overwrite)
    print(f"run folder: {result.run_dir}")
    print(
        f"final mIoU: {100 * result.metrics['mIoU']:.2f} ({result.steps} steps, "
        f"{result.seconds:.0f} s)"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from gbw.commands import cmd_eval

    return cmd_eval(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    from gbw.commands import cmd_predict

    return cmd_predict(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "task", "semantic") == "panoptic":
        from gbw.demo_panoptic import run_panoptic_demo

        return run_panoptic_demo(args)
    from gbw.demo import run_demo

    return run_demo(args)


def _cmd_report(args: argparse.Namespace) -> int:
    if args.sweep and args.runs:
        args.parser.error("give run folders or --sweep DIR, not both")
    if args.sweep:
        from gbw.sweep.report import write_sweep_report

        write_sweep_report(args.sweep, baseline=args.baseline, report_dir=args.out)
        return 0
    if not args.runs or not args.out:
        args.parser.error("give run folders and --out, or --sweep DIR")
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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also GBW_DEBUG=1; accepted anywhere)",
    )
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
        help="continue from the run's checkpoints/last.ckpt; `--resume FILE.ckpt` (or "
        "--resume=FILE) from that checkpoint. An error if there is nothing to resume",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing run folder of the same name first",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run or checkpoint on its val set")
    p.add_argument(
        "run", help="run folder (uses checkpoints/last.ckpt), a .ckpt file or a gbw weight file"
    )
    _add_overrides(p)
    p.add_argument("--json", help="also write the metrics to this JSON file (folders are made)")
    p.add_argument("--cpu", action="store_true", help="evaluate on the CPU even with a GPU")
    p.add_argument(
        "--config", default=None, help="experiment YAML for a weight file from gbw convert"
    )
    p.add_argument(
        "--official",
        action="store_true",
        help="also run cityscapesscripts' evalPixelLevelSemanticLabeling on labelIds PNGs of "
        "the predictions and print both results side by side (pip install 'gbw[cityscapes]')",
    )
    p.add_argument("--official-dir", default=None, help="keep those labelIds PNGs in this folder")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "predict",
        help="segmentation masks for images and folders, any resolution",
        description="Masks for image files and folders (recursive, relative paths kept) with the "
        "run's evaluation protocol (whole image or sliding window). Unreadable files are "
        "reported one line each; exit code 1 if any failed, 2 for usage errors.",
    )
    from gbw.commands import add_predict_arguments, register_convert

    add_predict_arguments(p)
    p.set_defaults(func=_cmd_predict)
    register_convert(sub)

    from gbw.data.commands import register as register_data

    register_data(sub)

    p = sub.add_parser("report", help="compare runs: per-class tables and GBW weight plots")
    p.add_argument("runs", nargs="*", help="run folders (not with --sweep)")
    p.add_argument(
        "--out", default=None, help="output folder for report.md, CSV and PNGs (--sweep: DIR)"
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="run folder the others are compared with (default: the first); with --sweep: "
        "the baseline setting as KEY=VALUE, e.g. weighting.name=none",
    )
    p.add_argument(
        "--sweep",
        default=None,
        metavar="DIR",
        help="report a gbw sweep / gbw study folder: mean ± std over seeds, paired deltas "
        "with 95 %% intervals and verdicts (sweep.md, sweep.csv, sweep.json)",
    )
    p.set_defaults(func=_cmd_report, parser=p)

    from gbw.sweep.cli import register as register_sweep

    register_sweep(sub)

    from gbw.bench import add_bench_arguments

    p = sub.add_parser("bench", help="speed and memory benchmarks (results for BENCHMARKS.md)")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def _split_resume(argv: list[str]) -> list[str]:
    """``--resume`` as a flag never swallows the next word: it takes the next word as its value
    only when that is a checkpoint file (``*.ckpt``, or an existing file that is not a YAML
    config and not a ``key=value`` override); ``--resume=FILE`` always takes FILE."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--resume":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_ckpt = (
                nxt is not None
                and not nxt.startswith("-")
                and "=" not in nxt
                and not nxt.endswith((".yaml", ".yml"))
                and (nxt.endswith(".ckpt") or Path(nxt).is_file())
            )
            if is_ckpt:
                out.append(f"--resume={nxt}")
                i += 2
                continue
            out.append("--resume=last")
        else:
            out.append(a)
        i += 1
    return out


def _error_line(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for a failure: 2 for bad input or usage, 1 for a run that failed."""
    from gbw.config import ConfigError
    from gbw.engine.checkpoint import CheckpointError
    from gbw.engine.nonfinite import NonFiniteLossError
    from gbw.engine.run_folder import RunExistsError
    from gbw.fileio import OutputError, describe_os_error

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, NonFiniteLossError):
        return text, 1
    if isinstance(exc, ConfigError | CheckpointError | RunExistsError | OutputError):
        return text, 2
    if isinstance(exc, OSError):
        if exc.filename is not None and str(exc.filename) not in text:
            return describe_os_error(exc, exc.filename, "accessing"), 2
        return text, 2
    if isinstance(exc, ValueError | TypeError | KeyError):
        return text if not isinstance(exc, KeyError) else f"missing entry {text}", 2
    return (
        f"internal error ({type(exc).__name__}: {text}); rerun with --debug for the traceback "
        "and please report it",
        1,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every failure a user can cause ends in one line on stderr
    (exit code 2; 1 for a failed run or check). ``--debug`` (anywhere) or ``GBW_DEBUG=1``
    shows the traceback instead."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("GBW_DEBUG", "") not in ("", "0")
    argv = _split_resume([a for a in argv if a != "--debug"])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`gbw train c.yaml --resume a=1`): argparse hands
    # positionals after an option back as unknown; they belong to the command's overrides
    words = [a for a in extra if not a.startswith("-")]
    if isinstance(getattr(args, "overrides", None), list) and words and len(words) == len(extra):
        args.overrides += words
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if debug:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"gbw {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line, code = _error_line(exc)
        print(f"gbw {args.command}: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
