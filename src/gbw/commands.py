"""The bodies of ``gbw eval``, ``gbw predict`` and ``gbw convert`` (cli.py only parses).

Importing this module is cheap (no torch): ``register_convert`` adds the ``convert``
sub-command to the CLI, and every command imports the heavy modules when it runs. Each command
returns its exit code: 0 done, 1 some files failed (predict), 2 wrong usage or input, with one
line on stderr naming the file or value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _error(command: str, message: object) -> int:
    print(f"gbw {command}: error: {message}", file=sys.stderr)
    return 2


# --- gbw eval -----------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """``gbw eval RUN [key=value ...] [--json FILE] [--official [--official-dir DIR]]``."""
    from gbw.engine.official import OfficialEvalError
    from gbw.engine.predict import PredictError

    try:
        return _eval(args)
    except (OfficialEvalError, PredictError) as exc:
        return _error("eval", exc)


def _eval(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from gbw.analysis.tables import metrics_table
    from gbw.data.classes import CITYSCAPES_CLASSES
    from gbw.engine.data import build_dataset, eval_classes
    from gbw.engine.evaluate import evaluate
    from gbw.engine.runs import load_trained

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    exp, model, state = load_trained(
        args.run,
        args.overrides,
        device,
        config=getattr(args, "config", None),
        data_domains=("val",),
    )
    val = build_dataset(exp.data.val, exp, train=False, with_labels=True)
    classes = eval_classes(val, exp.eval.classes)
    names = list(getattr(val, "CLASSES", CITYSCAPES_CLASSES))[: exp.model.num_classes]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else None
    if exp.data.val.panoptic:  # PQ/SQ/RQ of the fused panoptic maps
        return _eval_panoptic(args, exp, model, state, val, classes, device, autocast)
    official = getattr(args, "official", False)
    writer = None
    tmp = None
    if official:
        from gbw.data.cityscapes import Cityscapes
        from gbw.engine.official import ground_truth_files, label_ids_file

        if not isinstance(val, Cityscapes):
            return _error(
                "eval", f"--official needs Cityscapes as data.val, got {exp.data.val.name}"
            )
        if exp.model.num_classes != 19:
            return _error("eval", "--official needs a 19-class Cityscapes model")
        ground_truth = ground_truth_files(val)
        if args.official_dir:
            pred_dir = Path(args.official_dir)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="gbw_official_")
            pred_dir = Path(tmp.name)
        from gbw.engine.predict import _write, train_ids_to_label_ids

        def writer(batch_names: list[str], pred: torch.Tensor) -> None:
            ids = pred.to(torch.uint8).cpu().numpy()
            for name, p in zip(batch_names, ids):
                _write(pred_dir / label_ids_file(name), train_ids_to_label_ids(p))

    try:
        metrics = evaluate(
            model,
            val,
            exp.eval,
            exp.model.num_classes,
            classes=classes,
            device=device,
            autocast=autocast,
            progress=True,
            on_prediction=writer,
        )
        print(metrics_table(metrics, names))
        out = {"checkpoint_step": int(state.get("step", 0)), **metrics.as_dict(names)}
        if official:
            from gbw.engine.official import official_scores, side_by_side

            n = len(ground_truth) if not exp.eval.subset else min(exp.eval.subset, len(val))
            result = official_scores(pred_dir, ground_truth[:n])
            own = {names[c]: float(metrics.iou[c]) for c in range(len(names))}
            table, worst = side_by_side(own, result, names)
            print("\nper-class IoU (%), gbw vs cityscapesscripts evalPixelLevelSemanticLabeling:")
            print(table)
            print(f"largest difference: {worst:.4f} IoU points")
            out["official"] = {
                "mIoU": result["averageScoreClasses"],
                **{f"IoU/{k}": v for k, v in result["classScores"].items() if k in own},
                "max_abs_difference_pct": worst,
            }
            if args.official_dir:
                print(f"labelIds predictions kept in {pred_dir}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        from gbw.fileio import write_json

        write_json(args.json, out)  # its folder is made when missing
    return 0


def _eval_panoptic(  # type: ignore[no-untyped-def]
    args, exp, model, state, val, classes, device, autocast
) -> int:
    """``gbw eval`` on a panoptic run: per-class PQ/SQ/RQ and IoU tables, ``--json``."""

    from gbw.analysis.tables import metrics_table, panoptic_table
    from gbw.data.classes import CITYSCAPES_CLASSES
    from gbw.engine.evaluate_panoptic import evaluate_panoptic
    from gbw.fileio import write_json

    result = evaluate_panoptic(
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
    f = exp.eval.fusion
    print(
        f"panoptic (fusion: score >= {f.score_threshold}, stuff area >= {f.stuff_area} px, "
        f"order {f.order}; {len(result.panoptic.classes)} classes)"
    )
    print(panoptic_table(result.panoptic, names))
    print()
    print("semantic branch")
    print(metrics_table(result.semantic, names))
    if args.json:
        out = {
            "checkpoint_step": int(state["step"]),
            "classes": list(result.panoptic.classes),
            **result.as_dict(names),
        }
        write_json(args.json, out)  # its folder is made when missing
    return 0


# --- gbw predict --------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    """``gbw predict RUN IMAGES_OR_FOLDERS... --out DIR``: 0 all written, 1 some inputs could
    not be read (one line each), 2 usage errors."""
    from gbw.engine.predict import PredictError, predict_files

    formats = list(args.format) if args.format else None  # None: the run's default
    try:
        report = predict_files(
            args.run,
            args.images,
            args.out,
            formats=formats,
            also=["trainids"] if args.trainids else [],
            overlay_images=args.overlay,
            scale=args.scale,
            mode=args.mode,
            cpu=args.cpu,
            overrides=args.overrides,
            config=args.config,
            on_file=lambda line: print(line, file=sys.stderr),
        )
    except PredictError as exc:
        return _error("predict", exc)
    print(
        f"predicted {report.predicted} image(s), wrote {len(report.written)} file(s) to "
        f"{args.out}" + (f"; {len(report.failed)} failed" if report.failed else "")
    )
    return 1 if report.failed else 0


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gbw predict`` (shared by cli.py's parser)."""
    p.add_argument("run", help="run folder, .ckpt file or gbw weight file (gbw convert)")
    p.add_argument(
        "images",
        nargs="+",
        help="image files and folders (searched recursively; relative paths are kept)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--format",
        action="append",
        choices=["color", "trainids", "cityscapes", "panoptic", "panoptic_ids"],
        help="color: <name>_color.png (default); trainids: <name>_trainIds.png; cityscapes: "
        "<id>_labelIds.png for cityscapesscripts and the test server; panoptic runs: "
        "panoptic (COCO PNG + JSON, default besides color), panoptic_ids (16-bit map). "
        "Repeatable",
    )
    p.add_argument("--trainids", action="store_true", help="same as --format trainids in addition")
    p.add_argument(
        "--overlay", action="store_true", help="also <name>_overlay.png: mask over the photo"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="resize factor before the network (default: the run's eval protocol; 1 = native)",
    )
    p.add_argument(
        "--mode",
        choices=["whole", "slide"],
        default=None,
        help="whole image or sliding window (default: the run's eval.mode)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="experiment YAML for a weight file from gbw convert (model and eval protocol)",
    )
    p.add_argument("--cpu", action="store_true")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key=value",
        help="config override (e.g. eval.crop=[512,512]); repeatable",
    )


# --- gbw convert --------------------------------------------------------------------------------


#: ``gbw.models.reference_names.ARCHS`` (not imported here: ``gbw --help`` stays light; a test
#: checks that the two agree).
CONVERT_ARCHS = ("daformer_mitb5", "hrda_daformer_mitb5", "daformer_mit", "hrda_daformer_mit")


def register_convert(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gbw convert`` (released DAFormer/HRDA/MIC checkpoints -> gbw weight files)."""
    p = subparsers.add_parser(
        "convert",
        help="convert a released DAFormer/HRDA/MIC (mmseg) checkpoint to a gbw weight file",
        description="Read an mmseg-style checkpoint of DAFormer, HRDA or MIC (a state_dict with "
        "the UDA wrapper's model., ema_model. and imnet_model. prefixes, or a plain segmentor) "
        "and write a gbw weight file that model.pretrained= and gbw eval/predict accept. Every "
        "key that is not mapped is reported. The file is read with torch.load(weights_only=True).",
    )
    p.add_argument("checkpoint", help="the released checkpoint (.pth)")
    p.add_argument(
        "--arch",
        required=True,
        metavar="ARCH",
        help=f"its architecture: {', '.join(CONVERT_ARCHS)} (*_mit: any MiT variant, read "
        "from the checkpoint; MIC uses the architecture it was trained with)",
    )
    p.add_argument("--out", required=True, help="gbw weight file to write")
    p.add_argument(
        "--module",
        choices=["student", "teacher"],
        default="student",
        help="student = model. (what DAFormer/HRDA/MIC evaluate), teacher = ema_model.",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="default: read from the checkpoint"
    )
    p.add_argument(
        "--backend", choices=["smp", "hf"], default="smp", help="MiT implementation in gbw"
    )
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from gbw.engine.weights import convert_checkpoint
    from gbw.models.convert import ConvertError

    try:
        report = convert_checkpoint(
            args.checkpoint,
            args.arch,
            args.out,
            module=args.module,
            num_classes=args.num_classes,
            backend=args.backend,
        )
    except (ConvertError, FileNotFoundError) as exc:
        return _error("convert", exc)
    print(report.summary())
    return 0
