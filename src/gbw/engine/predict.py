"""``gbw predict``: segmentation masks for image files and folders, at any resolution.

Inputs: image files and folders (searched recursively; hidden files and the output folder are
skipped). Every mask keeps the input's path relative to the folder it was found in (a file
given directly: its name), with the extension replaced by a suffix per format:

=================  ===============================  ==========================================
format             file                             content
=================  ===============================  ==========================================
``color``          ``<name>_color.png``             Cityscapes palette (default)
``trainids``       ``<name>_trainIds.png``          trainIds, 8-bit grey
``cityscapes``     ``<id>_labelIds.png``            Cityscapes labelIds, what cityscapesscripts'
                                                    ``evalPixelLevelSemanticLabeling`` and the
                                                    test server read (``<id>`` is the name
                                                    without ``_leftImg8bit``)
``--overlay``      ``<name>_overlay.png``           the colour mask blended over the photo
``panoptic``       ``<name>_panoptic.png`` + .json  panoptic runs (EDAPS): COCO panoptic PNG
                                                    and segments (default besides ``color``)
``panoptic_ids``   ``<name>_panopticTrainIds.png``  panoptic runs: gbw's 16-bit panoptic map
=================  ===============================  ==========================================

Panoptic runs (:mod:`gbw.engine.predict_panoptic`) predict whole images at native size with the
EDAPS fusion; their ``--overlay`` shows the segments.

Two inputs with the same name but different extensions (``a.png``, ``a.webp``) keep their
extension in the mask name (``a.png_color.png``, ``a.webp_color.png``); inputs that would
still share a file (the same name from two folders given directly) are refused before any
work, as is a mask that would overwrite an input.

Protocol: the run's own evaluation protocol (``eval.mode`` whole or slide, with its window and
stride: HRDA's 1024x1024 windows come from its config), so that a mask is what ``gbw eval``
scores. ``eval.resize`` (e.g. DAFormer's 1024x512 for 2048x1024 Cityscapes) becomes a scale
factor that keeps the aspect ratio: the eval width over the val images' width (the dataset's
fixed size), or a fit into ``eval.resize`` where the dataset has none. ``scale=`` overrides it
(1 = native resolution). Logits are upsampled to the full image one class at a time, so a
3000x4000 photo needs one float map, not one per class.

Inputs that are not 8-bit RGB (greyscale, palette, RGBA, CMYK, 16-bit) are converted with a
note (:func:`gbw.data.io.read_photo`); unreadable files are reported one line each and the
others are still processed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.config import ExperimentConfig
from gbw.data.classes import CITYSCAPES_PALETTE, IGNORE_INDEX
from gbw.data.io import read_photo, write_png
from gbw.engine.evaluate import predict_logits
from gbw.engine.runs import load_trained
from gbw.fileio import OutputError, describe_os_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
PANOPTIC_FORMATS = ("panoptic", "panoptic_ids")
FORMATS = ("color", "trainids", "cityscapes", *PANOPTIC_FORMATS)
_SUFFIX = {
    "color": "_color.png",
    "trainids": "_trainIds.png",
    "cityscapes": "_labelIds.png",
    "overlay": "_overlay.png",
    "panoptic": "_panoptic.png",  # + <name>_panoptic.json (COCO panoptic)
    "panoptic_ids": "_panopticTrainIds.png",
}
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


class PredictError(ValueError):
    """Wrong usage of ``gbw predict`` (no images, colliding outputs, an unwritable folder)."""


@dataclass(frozen=True)
class PredictJob:
    """One input image and the files its prediction goes to."""

    image: Path
    outputs: dict[str, Path]  # format -> file


@dataclass
class PredictReport:
    """What a prediction run did: the masks written, the files that failed, the notes."""

    written: list[Path] = field(default_factory=list)
    predicted: int = 0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- colours ------------------------------------------------------------------------------------


def palette(
    num_classes: int = len(CITYSCAPES_PALETTE), colors: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """(256, 3) uint8 colour table: ``colors`` (default: the Cityscapes colours of trainIds
    0..18), fixed pseudo-random colours for further classes, black for ignore (255)."""
    colors = CITYSCAPES_PALETTE if colors is None else colors
    lut = np.random.default_rng(0).integers(0, 256, size=(256, 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    lut[max(num_classes, 0) : len(colors)] = 0
    lut[IGNORE_INDEX] = 0
    return lut


def colorize(
    label: np.ndarray,
    num_classes: int = len(CITYSCAPES_PALETTE),
    colors: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 colours (see :func:`palette`)."""
    return palette(num_classes, colors)[label.astype(np.uint8)]


def run_palette(exp: ExperimentConfig) -> Sequence[Sequence[int]] | None:
    """The colours of a run's classes: a folder dataset's label-map palette, else Cityscapes'."""
    spec = exp.data.val
    if spec.name == "folder" and spec.labels_map and Path(spec.labels_map).is_file():
        from gbw.data.folder import load_label_map

        return load_label_map(spec.labels_map).palette
    return None


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colour mask blended over the photo: ``(1 - alpha) * image + alpha * colors``."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def train_ids_to_label_ids(pred: np.ndarray) -> np.ndarray:
    """trainIds -> Cityscapes labelIds (the official table inverted; ignore -> 0, unlabeled)."""
    from gbw.data.cityscapes import Cityscapes

    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in Cityscapes.ID_TO_TRAIN_ID.items():
        lut[train_id] = label_id
    return lut[pred.astype(np.uint8)]


# --- inputs and output names --------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_images(
    inputs: Sequence[str | Path], out_dir: str | Path | None = None
) -> list[tuple[Path, str]]:
    """``(file, relative name)`` for every input; folders are searched recursively (hidden
    entries and ``out_dir`` skipped), files given directly keep only their name. A path that
    does not exist is kept (it is reported as a failed file later)."""
    out = Path(out_dir).resolve() if out_dir is not None else None
    found: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if not item.is_dir():
            found.append((item, item.name))
            continue
        for dirpath, dirnames, filenames in os.walk(item):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and (here / d).resolve() != out
            )
            for name in sorted(filenames):
                path = here / name
                if _is_image(path):
                    found.append((path, path.relative_to(item).as_posix()))
    return found


def plan_outputs(
    images: Sequence[tuple[Path, str]], out_dir: str | Path, formats: Sequence[str]
) -> list[PredictJob]:
    """The files each input's prediction goes to (naming rules in the module docstring).

    Raises :class:`PredictError` when two inputs would still write the same file or a mask
    would overwrite an input.
    """
    out_dir = Path(out_dir)
    stems: dict[str, list[str]] = {}
    for _, rel in images:
        stems.setdefault(_strip_suffix(rel), []).append(rel)
    jobs: list[PredictJob] = []
    owner: dict[Path, Path] = {}
    inputs = {p.resolve(): p for p, _ in images}
    for path, rel in images:
        stem = _strip_suffix(rel)
        key = rel if len(set(stems[stem])) > 1 else stem  # a.png + a.webp: keep the extension
        outputs = {}
        for fmt in formats:
            name = key
            if fmt == "cityscapes" and name.endswith(CITYSCAPES_IMAGE_SUFFIX):
                name = name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
            target = out_dir / (name + _SUFFIX[fmt])
            resolved = target.resolve()
            if resolved in owner:
                raise PredictError(
                    f"{owner[resolved]} and {path} would both write {target}; give their common "
                    "folder instead (relative paths are kept) or predict them separately"
                )
            if resolved in inputs:
                raise PredictError(f"{target}: the {fmt} mask of {path} would overwrite an input")
            owner[resolved] = path
            outputs[fmt] = target
        jobs.append(PredictJob(path, outputs))
    return jobs


def _strip_suffix(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}" if head else stem


# --- inference ----------------------------------------------------------------------------------


def labels_at(logits: Tensor, size: Sequence[int]) -> Tensor:
    """``argmax`` over classes of the logits bilinearly upsampled to ``size``, one class at a
    time (exact: the upsampling is per channel; ties go to the lower class, as ``argmax``).
    Returns uint8 labels (int64 for more than 256 classes)."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size or logits.shape[1] > 256:
        return _up_argmax(logits, size)
    best = labels = None
    for c in range(logits.shape[1]):
        up = F.interpolate(
            logits[:, c : c + 1].float(), size=size, mode="bilinear", align_corners=False
        )[:, 0]
        if best is None:
            best, labels = up, torch.zeros(up.shape, dtype=torch.uint8, device=up.device)
        else:
            better = up > best
            labels.masked_fill_(better, c)
            torch.maximum(best, up, out=best)
    assert labels is not None
    return labels


def _up_argmax(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def network_size(model: nn.Module, height: int, width: int, scale: float) -> tuple[int, int]:
    """The input size the network sees: the image scaled by ``scale``, rounded to the
    multiple of the model's required divisor (HRDA: 8)."""
    d = int(getattr(model, "context_stride", 1) or 1)
    h = max(d, round(height * scale / d) * d)
    w = max(d, round(width * scale / d) * d)
    return h, w


def protocol_scale(exp: ExperimentConfig, height: int, width: int) -> float:
    """The scale ``eval.resize`` stands for (module docstring); 1 without a resize."""
    if not exp.eval.resize:
        return 1.0
    ew, eh = exp.eval.resize
    ref = _val_image_size(exp)
    if ref is not None:
        return ew / ref[0]
    return min(ew / width, eh / height)


def _val_image_size(exp: ExperimentConfig) -> tuple[int, int] | None:
    name = exp.data.val.name
    if name in ("minicity", "folder"):
        return None
    try:
        from gbw.data.registry import dataset_class

        return dataset_class(name).IMAGE_SIZE
    except ValueError:
        return None


@torch.no_grad()
def predict_image(
    model: nn.Module,
    rgb: np.ndarray,
    exp: ExperimentConfig,
    *,
    scale: float | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(H, W) uint8 trainIds for one (H, W, 3) uint8 image under the run's protocol."""
    h, w = rgb.shape[:2]
    s = protocol_scale(exp, h, w) if scale is None else scale
    nh, nw = network_size(model, h, w, s)
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).to(device)
    x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    cfg = dataclasses.replace(exp.eval, resize=None)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
        logits = predict_logits(model, x, cfg, exp.model.num_classes, (nh, nw))
    return labels_at(logits, (h, w))[0].to(torch.uint8).cpu().numpy()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """One clear line (:class:`PredictError`) for a full disk or a folder that cannot be
    written while ``path`` is written inside the block."""
    try:
        yield
    except OSError as exc:  # gbw.fileio's OutputError already names the path and the reason
        line = str(exc) if isinstance(exc, OutputError) else describe_os_error(exc, path)
        raise PredictError(line) from None


def _write(path: Path, array: np.ndarray) -> None:
    with _writing(path):
        write_png(path, array)


def predict_files(
    run: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    formats: Sequence[str] | None = None,
    also: Sequence[str] = (),
    overlay_images: bool = False,
    scale: float | None = None,
    mode: str | None = None,
    cpu: bool = False,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
    on_file: Callable[[str], None] | None = None,
) -> PredictReport:
    """Predict every input image (files or folders) with a trained run; see the module
    docstring for names and protocol. ``formats=None`` is the run's default, ``also`` adds
    formats to it (``--trainids``). ``mode`` overrides ``eval.mode`` (whole | slide);
    ``config`` is the experiment YAML for a weight file of ``gbw convert``; ``on_file`` gets
    one line per failed file and per note as they happen.

    Raises :class:`PredictError` for usage errors (before any model runs: no images, colliding
    outputs; while writing: a full or read-only output folder). Files that cannot be read are
    listed in ``report.failed`` and the others are still processed.
    """
    default_formats = formats is None  # the run's default: color (+ panoptic for EDAPS runs)
    formats = list(dict.fromkeys([*(["color"] if formats is None else formats), *also]))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise PredictError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if scale is not None and not scale > 0:
        raise PredictError(f"--scale must be positive, got {scale}")
    images = find_images(inputs, out_dir)
    if not images:
        raise PredictError(
            f"no images found in {', '.join(map(str, inputs))} (looked for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    wanted = list(dict.fromkeys(formats)) + (["overlay"] if overlay_images else [])
    jobs = plan_outputs(images, out_dir, wanted)
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    extra = [f"eval.mode={mode}"] if mode else []
    exp, model, _ = load_trained(run, [*overrides, *extra], device, config=config)
    if "cityscapes" in wanted and exp.model.num_classes != 19:
        raise PredictError(
            f"--format cityscapes needs a 19-class Cityscapes model; this one has "
            f"{exp.model.num_classes} classes"
        )
    panoptic = getattr(model, "instance_head", None) is not None  # EDAPS: detector + fusion
    if panoptic:
        if scale is not None:
            raise PredictError("--scale: panoptic runs predict whole images at native size")
        if default_formats:  # the COCO panoptic files besides the semantic colour mask
            wanted = list(dict.fromkeys([*wanted, "panoptic"]))
            jobs = plan_outputs(images, out_dir, wanted)
    elif any(f in PANOPTIC_FORMATS for f in wanted):
        raise PredictError(f"--format {'/'.join(PANOPTIC_FORMATS)} needs a panoptic (EDAPS) run")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PredictError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    report = PredictReport()
    odd_names = 0
    colors_of = run_palette(exp)
    for job in jobs:
        try:
            rgb, note = read_photo(job.image)
        except (OSError, ValueError) as exc:
            msg = str(exc) if str(job.image) in str(exc) else f"{job.image}: {exc}"
            report.failed.append(msg)
            if on_file:
                on_file(f"error: {msg}")
            continue
        if note:
            report.notes.append(f"{job.image}: {note}")
            if on_file:
                on_file(f"note: {job.image}: {note}")
        pan = None
        if panoptic:
            from gbw.engine.predict_panoptic import predict_panoptic_image

            pred, pan = predict_panoptic_image(model, rgb, exp, device=device)
        else:
            pred = predict_image(model, rgb, exp, scale=scale, device=device)
        colors = None
        for fmt, target in job.outputs.items():
            if pan is not None and (fmt in PANOPTIC_FORMATS or fmt == "overlay"):
                from gbw.engine.predict_panoptic import write_panoptic_output

                with _writing(target):
                    write_panoptic_output(fmt, target, rgb, pan, job.image)
            elif fmt == "color":
                colors = colorize(pred, exp.model.num_classes, colors_of)
                _write(target, colors)
            elif fmt == "trainids":
                _write(target, pred)
            elif fmt == "cityscapes":
                if target.name.count("_") < 3:
                    odd_names += 1
                _write(target, train_ids_to_label_ids(pred))
            else:  # overlay
                if colors is None:
                    colors = colorize(pred, exp.model.num_classes, colors_of)
                _write(target, overlay(rgb, colors))
            report.written.append(target)
        report.predicted += 1
    if odd_names:
        note = (
            f"{odd_names} input(s) are not named <city>_<seq>_<frame>_leftImg8bit.*; "
            "cityscapesscripts matches predictions by <city>_<seq>_<frame>*.png"
        )
        report.notes.append(note)
        if on_file:
            on_file(f"note: {note}")
    return report
