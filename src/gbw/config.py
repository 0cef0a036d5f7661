"""Experiment configs: YAML files loaded into typed dataclasses, with ``key=value`` overrides.

One YAML file per experiment (``configs/``). A file may start from others with
``_base_: [relative/path.yaml, ...]`` (merged in order, then the file itself). Unknown keys
and wrong types are errors that name the key and suggest the closest valid one. Method
specific settings live under ``uda:`` and are checked against the method's own dataclass
when the method is built. YAML is read with ``yaml.safe_load``; nothing in a config runs.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gbw.data.classes import NUM_CLASSES
from gbw.errors import ConfigError
from gbw.fileio import write_text


@dataclass
class DatasetSpec:
    """One dataset split and how its training crops are made (DAFormer's pipeline)."""

    name: str = "minicity"  # minicity | gta | synthia | cityscapes | folder
    root: str = ""  # "" = data/<name> for real datasets, the MiniCity cache otherwise
    split: str = "train"  # train | val; MiniCity: source_train | target_train | target_val
    resize: list[int] | None = None  # (W, H) before cropping, e.g. [1280, 720] for GTA5
    # true: keep the aspect ratio within resize (mmcv; GTA5 1914x1052 -> 1280x704); false:
    # stretch to exactly resize (ADVENT, AdaptSegNet, DACS: GTA5 -> 1280x720)
    keep_ratio: bool = True
    crop: list[int] | None = None  # (H, W) random crop, e.g. [512, 512]; None = no crop
    cat_max_ratio: float = 0.75  # re-draw a crop (<= 10 times) while one class covers more
    flip: bool = True  # random horizontal flip (p = 0.5)
    photometric: bool = False  # mmseg's photometric distortion (not in the UDA recipes)
    rcs: bool = False  # rare-class sampling (DAFormer), source only
    rcs_temperature: float = 0.01
    rcs_min_pixels: int = 3000
    rcs_min_crop_ratio: float = 0.5  # HRDA: 2.0
    # (top, bottom, left, right) pixels of the *full* image whose pseudo-labels are not trusted,
    # cropped with the image (HRDA/MIC target: [30, 240, 30, 30]); real datasets only
    pseudo_margins: list[int] | None = None
    subset: int = 0  # use only the first N images (0 = all)
    # name: folder (your own data, docs/own_data.md): <root>/<image_dir>/<split>/** images and
    # <root>/<label_dir>/<split>/** label PNGs matched by relative name; split "" = no sub-folder
    labels_map: str = ""  # folder: YAML with the class names and raw id -> trainId
    image_dir: str = "images"  # folder: image folder under root
    label_dir: str = "labels"  # folder: label folder under root
    # panoptic maps with the labels (gbw.data.panoptic): source -> detection targets,
    # val -> PQ/SQ/RQ evaluation; real datasets need `gbw data prepare --panoptic`
    panoptic: bool = False


@dataclass
class DataConfig:
    source: DatasetSpec = field(default_factory=lambda: DatasetSpec(split="source_train"))
    target: DatasetSpec = field(default_factory=lambda: DatasetSpec(split="target_train"))
    val: DatasetSpec = field(
        default_factory=lambda: DatasetSpec(split="target_val", flip=False, cat_max_ratio=1.0)
    )
    batch_size: int = 2  # images per domain per device
    num_workers: int = 2
    in_memory: bool = False  # decode every image once and keep it in RAM (small datasets)
    minicity_size: str = "default"  # MiniCity: default | quick


@dataclass
class ModelConfig:
    name: str = "tinyseg"  # tinyseg | deeplabv2_r101 | daformer_mitb5 | ...
    num_classes: int = 19
    pretrained: str = ""  # local file with backbone weights ("" = random init)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra model arguments


@dataclass
class WeightingConfig:
    """Which class weighting every weighted loss term uses (gbw.weighting.make_weighting)."""

    name: str = "none"  # none | gbw | gbw_authors | lbw | if | pf | focal
    lam: float = 1.0  # GBW/LBW lambda (paper Eq. 11)
    variant: str = "class"  # class (paper Eq. 8) | channel (authors' code)
    scale: str = "none"  # none (authors) | mean (g / mean g: scale-free lambda)
    present_only: bool = False
    count_offset: float = 0.0  # authors: 1
    use_pixel_weight: bool = True  # pseudo-label confidence enters g (paper Eq. 12)
    fused: str = "auto"  # GBW's weights + CE in one pass: auto | on | off | torch | triton
    gamma: float = 2.0  # focal loss
    terms: list[str] = field(default_factory=list)  # loss terms to weight ([] = all)
    class_stats: str = ""  # IF/PF: .npy (N, C) pixel counts; "" = the source dataset's


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    head_lr_mult: float = 10.0  # decoder/classifier learning rate multiplier
    fused: bool = False  # fused AdamW/SGD kernels (GPU)
    schedule: str = "poly"  # poly | constant
    power: float = 0.9
    schedule_iters: int = 0  # length of the poly schedule (0 = train.max_iters)
    warmup_iters: int = 0  # linear warm-up (DAFormer: 1500)
    warmup_ratio: float = 1e-6
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    max_iters: int = 1000
    log_every: int = 20
    eval_every: int = 0  # 0 = only at the end
    ckpt_every: int = 500  # 0 = only at the end
    keep_ckpts: int = 1  # step checkpoints kept besides last.ckpt
    accelerator: str = "auto"  # auto | cpu | cuda
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp
    # auto (bf16-mixed on GPU, 32-true on CPU) | 32-true | bf16-mixed. The reference code bases
    # all train in fp32: train.precision=32-true matches them (bf16 is gbw's speed default)
    precision: str = "auto"
    # deterministic algorithms: null = on for the CPU (bit-reproducible), off for CUDA (fast)
    deterministic: bool | None = None
    # capture the whole iteration as one CUDA graph: null = on for one CUDA device, else off
    cuda_graph: bool | None = None
    cuda_graph_warmup: int = 3  # eager iterations before the capture
    compile: bool = False  # torch.compile the networks (instead of a CUDA graph)
    channels_last: bool = False  # NHWC images and conv weights
    grad_clip: float = 0.0
    # a non-finite loss: stop (exit non-zero; the last finite checkpoint stays `last`) or
    # skip_step (that iteration's optimiser steps are skipped, eager runs only)
    on_nonfinite: str = "stop"
    max_skipped_steps: int = 20  # skip_step: stop after this many consecutive skipped steps
    progress: bool = True


@dataclass
class FusionConfig:
    """How a panoptic model's semantic and instance outputs become one map (EDAPS's merge,
    gbw.models.panoptic_fusion): detections with ``score >= score_threshold`` are pasted,
    stuff classes under ``stuff_area`` pixels become void."""

    score_threshold: float = 0.95
    stuff_area: int = 2048  # at the evaluated (label) resolution; EDAPS at 2048x1024
    order: str = "score"  # score (higher score wins) | reference (EDAPS's class-by-class loop)


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide
    # bilinear upsampling of the logits to the labels: false = mmseg's; true = ADVENT
    # eval_UDA.py, AdaptSegNet evaluate_cityscapes.py, DACS evaluateUDA.py
    align_corners: bool = False
    resize: list[int] | None = None  # (W, H) network input, e.g. [1024, 512]; None = as is
    crop: list[int] = field(default_factory=lambda: [1024, 1024])  # slide window (H, W)
    stride: list[int] = field(default_factory=lambda: [512, 512])
    classes: str = "dataset"  # dataset | 19 | 16 | 13: classes in the mean IoU
    batch_size: int = 1
    subset: int = 0  # evaluate the first N images only (0 = all)
    fusion: FusionConfig = field(default_factory=FusionConfig)  # panoptic runs only


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    method: str = "source_only"  # source_only | dacs | advent | minent | adaptsegnet | ...
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    uda: dict[str, Any] = field(default_factory=dict)  # the method's own settings


def _all_keys(schema: Any, prefix: str = "") -> list[str]:
    out = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        out.append(key)
        value = getattr(schema, f.name)
        if is_dataclass(value):
            out += _all_keys(value, key + ".")
    return out


def _hint(bad: str, schema: Any) -> str:
    keys = _all_keys(schema)
    close = difflib.get_close_matches(bad, keys, n=3, cutoff=0.5)
    if not close:  # try the last component alone
        last = bad.rsplit(".", 1)[-1]
        close = [
            k for k in keys if difflib.get_close_matches(last, [k.rsplit(".", 1)[-1]], cutoff=0.7)
        ][:3]
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _wrap(exc: OmegaConfBaseException, schema: Any, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        return ConfigError(f"{source}: unknown key {key!r}{_hint(key, schema)}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: bad value for {key!r}: {msg}")
    return ConfigError(f"{source}: {msg}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ includes form a cycle")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / base, (*seen, path)))
    return OmegaConf.merge(merged, OmegaConf.create(data))


def _apply_override(cfg: DictConfig, item: str) -> DictConfig:
    """``key=value`` onto ``cfg``. A free-form mapping (``model.kwargs``, ``uda``) given as a
    whole (``model.kwargs={a: 1}``, ``={}`` or ``=null``) *replaces* the mapping; to change one
    entry, name it (``model.kwargs.a=1``). Everything else merges, with type checks."""
    key, text = (part.strip() for part in item.split("=", 1))
    if not text:  # `name=` means the empty string (omegaconf would read it as null)
        item = f"{key}=''"
    update = OmegaConf.from_dotlist([item])
    value = OmegaConf.select(update, key)
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    replace = OmegaConf.is_dict(node) and OmegaConf.get_type(node) is dict
    if replace and (value is None or OmegaConf.is_dict(value)):
        cfg = cfg.copy()
        OmegaConf.update(cfg, key, {} if value is None else value, merge=False)
        return cfg
    return OmegaConf.merge(cfg, update)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: ExperimentConfig | None = None,
    *,
    data_domains: tuple[str, ...] = ("source", "target", "val"),
) -> ExperimentConfig:
    """Load a YAML experiment (or the defaults), apply ``key=value`` overrides and
    :func:`validate` it; ``data_domains``: the datasets whose class count must match the model
    (evaluation needs ``("val",)``, prediction none)."""
    schema = base if base is not None else ExperimentConfig()
    cfg = OmegaConf.structured(schema)
    if path is not None:
        try:
            cfg = OmegaConf.merge(cfg, _read_yaml(Path(path)))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, schema, str(path)) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            cfg = _apply_override(cfg, item)
        except OmegaConfBaseException as exc:
            raise _wrap(exc, schema, f"override {item!r}") from None
    exp = OmegaConf.to_object(cfg)
    validate(exp, data_domains=data_domains)  # type: ignore[arg-type]
    return exp  # type: ignore[return-value]


def method_config(schema: type, values: dict[str, Any], method: str) -> Any:
    """Check ``uda:`` settings against a method's dataclass; unknown keys get a hint."""
    base = schema()
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(base), OmegaConf.create(values))
    except OmegaConfBaseException as exc:
        err = _wrap(exc, base, f"uda settings of method {method!r}")
        raise ConfigError(str(err).replace("unknown key '", "unknown key 'uda.")) from None
    return OmegaConf.to_object(cfg)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A resolved config as plain Python containers (for YAML and checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flat_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"a.b.c": value}`` (empty mappings stay values)."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= flat_dict(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v}
    return out


def config_difference(stored: dict, wanted: dict) -> list[str]:
    """The keys (``out_dir`` aside) whose values differ between two config dicts."""
    a, b = flat_dict(stored), flat_dict(wanted)
    return sorted(k for k in set(a) | set(b) if k != "out_dir" and a.get(k) != b.get(k))


def save_config(cfg: Any, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """The inverse of :func:`to_dict` (checkpoints store configs as plain dicts)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig()), data))
    except OmegaConfBaseException as exc:
        raise _wrap(exc, ExperimentConfig(), "stored config") from None


# --------------------------------------------------------------------------------------------
# Validation: every value, when the config is loaded, before anything is built or written
# --------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")
STRATEGIES = ("auto", "ddp", "ddp_spawn")
OPTIMIZERS = ("sgd", "adamw", "adam")
ON_NONFINITE = ("stop", "skip_step")
EVAL_MODES = ("whole", "slide")
EVAL_CLASS_SETS = ("dataset", "19", "16", "13")
MINICITY_SIZES = ("default", "quick")


def check_run_name(name: Any, key: str = "name") -> str:
    """A run name is one plain path component: not empty, '.', '..', absolute or with a
    separator, so that ``out_dir/name`` never points outside ``out_dir``."""
    text = str(name)
    bad = (
        not isinstance(name, str)
        or text.strip() != text
        or text in ("", ".", "..")
        or "/" in text
        or "\\" in text
        or any(ord(ch) < 32 for ch in text)
        or Path(text).is_absolute()
    )
    if bad:
        raise ConfigError(
            f"{key}={name!r}: a run name must be one plain folder name (no '/', '\\', '.', "
            "'..', leading/trailing spaces or control characters); the run folder is "
            "out_dir/name"
        )
    return text


class _Checker:
    """Collects nothing: the first bad value raises one ConfigError naming key, value, allowed."""

    def need(self, ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}: expected {allowed}")

    def one_of(self, key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{key}={value!r}: expected one of {', '.join(map(str, choices))}{more}"
            )

    def number(
        self,
        key: str,
        value: Any,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        integer: bool = False,
    ) -> None:
        kind = "an integer" if integer else "a finite number"
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            not integer and isinstance(value, float)
        )
        ok = ok and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            rng = " and ".join(x for x in (lo, hi) if x)
            raise ConfigError(f"{key}={value!r}: expected {kind}" + (f" {rng}" if rng else ""))

    def size(self, key: str, value: Any, n: int = 2, *, optional: bool = True) -> None:
        if value is None and optional:
            return
        ok = (
            isinstance(value, list | tuple)
            and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        )
        self.need(
            ok, key, value, f"{'null or ' if optional else ''}a list of {n} positive integers"
        )


def _dataset_classes_and_splits(spec: DatasetSpec, key: str) -> tuple[int, tuple[str, ...] | None]:
    """(number of label classes, split names or None = any) of a dataset spec."""
    if spec.name == "minicity":
        from gbw.data.minicity.cache import SPLITS

        return NUM_CLASSES, tuple(SPLITS)
    if spec.name == "folder":
        from gbw.data.folder import load_label_map

        if not spec.labels_map:
            raise ConfigError(
                f"{key}.labels_map='': a folder dataset needs its label map YAML (docs/own_data.md)"
            )
        try:
            return load_label_map(spec.labels_map).num_classes, None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}.labels_map: {exc}") from None
    from gbw.data.registry import dataset_class

    cls = dataset_class(spec.name)
    return cls.NUM_CLASSES, cls.SPLITS


def validate(
    exp: ExperimentConfig, *, data_domains: tuple[str, ...] = ("source", "target", "val")
) -> ExperimentConfig:
    """Check every value of ``exp``; the first bad one raises :class:`ConfigError` naming the
    key, the value and what is allowed. Called by :func:`load_config` and by ``train``, so a
    bad config fails before any folder exists. ``data_domains``: the datasets that must have
    the model's number of classes (all three for training). Returns ``exp``."""
    from gbw.data.registry import DATASET_NAMES
    from gbw.models.registry import MODEL_NAMES
    from gbw.uda.registry import METHODS, method_class
    from gbw.weighting import WEIGHTINGS
    from gbw.weighting.fused import FUSED_MODES
    from gbw.weighting.strategies import SCALES

    c = _Checker()
    check_run_name(exp.name)
    c.need(
        isinstance(exp.out_dir, str) and exp.out_dir.strip() != "",
        "out_dir",
        exp.out_dir,
        "a folder path",
    )
    c.number("seed", exp.seed, low=0, high=2**32 - 1, integer=True)
    c.one_of("method", exp.method, sorted(METHODS))

    m = exp.model
    c.one_of("model.name", m.name, sorted(MODEL_NAMES))
    c.number("model.num_classes", m.num_classes, low=1, integer=True)

    d = exp.data
    if not getattr(method_class(exp.method), "uses_target", True):
        data_domains = tuple(x for x in data_domains if x != "target")  # never read
    for domain in ("source", "target", "val"):
        spec: DatasetSpec = getattr(d, domain)
        key = f"data.{domain}"
        c.one_of(f"{key}.name", spec.name, ("minicity", "folder", *DATASET_NAMES))
        classes, splits = _dataset_classes_and_splits(spec, key)
        if splits is not None:
            c.one_of(f"{key}.split", spec.split, splits)
        if classes != m.num_classes and domain in data_domains:
            raise ConfigError(
                f"model.num_classes={m.num_classes} disagrees with {key} ({spec.name}), whose "
                f"labels have {classes} classes (trainIds 0-{classes - 1}); set "
                f"model.num_classes={classes}"
            )
        c.size(f"{key}.resize", spec.resize)
        c.size(f"{key}.crop", spec.crop)
        c.number(f"{key}.cat_max_ratio", spec.cat_max_ratio, low=0, high=1, low_open=True)
        c.number(f"{key}.rcs_temperature", spec.rcs_temperature, low=0, low_open=True)
        c.number(f"{key}.rcs_min_pixels", spec.rcs_min_pixels, low=0, integer=True)
        c.number(f"{key}.rcs_min_crop_ratio", spec.rcs_min_crop_ratio, low=0)
        c.number(f"{key}.subset", spec.subset, low=0, integer=True)
        if spec.pseudo_margins is not None:
            ok = len(spec.pseudo_margins) == 4 and all(
                isinstance(v, int) and v >= 0 for v in spec.pseudo_margins
            )
            c.need(
                ok,
                f"{key}.pseudo_margins",
                spec.pseudo_margins,
                "null or 4 non-negative integers (top, bottom, left, right)",
            )
            c.need(
                spec.name != "minicity",
                f"{key}.pseudo_margins",
                spec.pseudo_margins,
                "null for MiniCity (use the crop-level uda.pseudo_margins)",
            )
        if domain != "source":
            c.need(
                not spec.rcs,
                f"{key}.rcs",
                spec.rcs,
                "false: rare-class sampling needs labels, only data.source.rcs may be true",
            )
    c.number("data.batch_size", d.batch_size, low=1, integer=True)
    c.number("data.num_workers", d.num_workers, low=0, integer=True)
    c.one_of("data.minicity_size", d.minicity_size, MINICITY_SIZES)

    w = exp.weighting
    c.one_of("weighting.name", w.name, WEIGHTINGS)
    c.number("weighting.lam", w.lam, low=0, low_open=True)
    c.one_of("weighting.variant", w.variant, ("class", "channel"))
    c.one_of("weighting.scale", w.scale, SCALES)
    c.number("weighting.count_offset", w.count_offset, low=0)
    c.number("weighting.gamma", w.gamma, low=0)
    c.one_of("weighting.fused", w.fused, FUSED_MODES)

    o = exp.optim
    c.one_of("optim.name", o.name, OPTIMIZERS)
    c.number("optim.lr", o.lr, low=0)
    c.number("optim.momentum", o.momentum, low=0, high=1, high_open=True)
    c.number("optim.weight_decay", o.weight_decay, low=0)
    ok = len(o.betas) == 2 and all(isinstance(b, int | float) and 0 <= b < 1 for b in o.betas)
    c.need(ok, "optim.betas", o.betas, "2 numbers in [0, 1)")
    c.number("optim.head_lr_mult", o.head_lr_mult, low=0, low_open=True)
    c.one_of("optim.schedule", o.schedule, ("poly", "constant"))
    c.number("optim.power", o.power, low=0)
    c.number("optim.schedule_iters", o.schedule_iters, low=0, integer=True)
    c.number("optim.warmup_iters", o.warmup_iters, low=0, integer=True)
    c.number("optim.warmup_ratio", o.warmup_ratio, low=0, high=1)
    c.number("optim.min_lr", o.min_lr, low=0, high=o.lr)

    t = exp.train
    c.number("train.max_iters", t.max_iters, low=0, integer=True)
    c.number("train.log_every", t.log_every, low=1, integer=True)
    c.number("train.eval_every", t.eval_every, low=0, integer=True)
    c.number("train.ckpt_every", t.ckpt_every, low=0, integer=True)
    c.number("train.keep_ckpts", t.keep_ckpts, low=1, integer=True)
    c.one_of("train.accelerator", t.accelerator, ACCELERATORS)
    c.number("train.devices", t.devices, low=1, integer=True)
    c.number("train.num_nodes", t.num_nodes, low=1, integer=True)
    c.one_of("train.strategy", t.strategy, STRATEGIES)
    c.one_of("train.precision", t.precision, PRECISIONS)
    c.number("train.cuda_graph_warmup", t.cuda_graph_warmup, low=1, integer=True)
    c.number("train.grad_clip", t.grad_clip, low=0)
    c.one_of("train.on_nonfinite", t.on_nonfinite, ON_NONFINITE)
    c.number("train.max_skipped_steps", t.max_skipped_steps, low=1, integer=True)
    if t.on_nonfinite == "skip_step" and t.cuda_graph:
        raise ConfigError(
            "train.on_nonfinite=skip_step needs an eager run (it decides on the host whether "
            "to step); set train.cuda_graph=false, or train.on_nonfinite=stop"
        )
    if t.cuda_graph and t.compile:
        raise ConfigError(
            "train.compile=true and train.cuda_graph=true are alternatives (a network that "
            "recompiles during the capture breaks it); set one of them to false"
        )

    e = exp.eval
    c.one_of("eval.mode", e.mode, EVAL_MODES)
    c.size("eval.resize", e.resize)
    c.size("eval.crop", e.crop, optional=False)
    c.size("eval.stride", e.stride, optional=False)
    c.one_of("eval.classes", e.classes, EVAL_CLASS_SETS)
    c.number("eval.batch_size", e.batch_size, low=1, integer=True)
    c.number("eval.subset", e.subset, low=0, integer=True)
    c.number("eval.fusion.score_threshold", e.fusion.score_threshold, low=0, high=1)
    c.number("eval.fusion.stuff_area", e.fusion.stuff_area, low=0, integer=True)
    c.one_of("eval.fusion.order", e.fusion.order, ("score", "reference"))

    # the method's own settings: unknown keys and bad values (its Config dataclass checks them)
    try:
        method_config(method_class(exp.method).Config, exp.uda, exp.method)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"uda settings of method {exp.method!r}: {exc}") from None
    return exp
