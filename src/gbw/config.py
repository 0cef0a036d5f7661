"""Experiment configs: YAML files loaded into typed dataclasses, with ``key=value`` overrides.

One YAML file per experiment (``configs/``). A file may start from others with
``_base_: [relative/path.yaml, ...]`` (merged in order, then the file itself). Unknown keys
and wrong types are errors that name the key and suggest the closest valid one. Method
specific settings live under ``uda:`` and are checked against the method's own dataclass
when the method is built. YAML is read with ``yaml.safe_load``; nothing in a config runs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and why."""


@dataclass
class DatasetSpec:
    """One dataset split and how its training crops are made (DAFormer's pipeline)."""

    name: str = "minicity"  # minicity | gta | synthia | cityscapes
    root: str = ""  # "" = data/<name> for real datasets, the MiniCity cache otherwise
    split: str = "train"  # train | val; MiniCity: source_train | target_train | target_val
    resize: list[int] | None = None  # (W, H) before cropping, e.g. [1280, 720] for GTA5
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
    precision: str = "auto"  # auto (bf16-mixed on GPU, 32-true on CPU) | 32-true | bf16-mixed
    # deterministic algorithms: null = on for the CPU (bit-reproducible), off for CUDA (fast)
    deterministic: bool | None = None
    # capture the whole iteration as one CUDA graph: null = on for one CUDA device, else off
    cuda_graph: bool | None = None
    cuda_graph_warmup: int = 3  # eager iterations before the capture
    compile: bool = False  # torch.compile the networks (instead of a CUDA graph)
    channels_last: bool = False  # NHWC images and conv weights
    grad_clip: float = 0.0
    progress: bool = True


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide
    resize: list[int] | None = None  # (W, H) network input, e.g. [1024, 512]; None = as is
    crop: list[int] = field(default_factory=lambda: [1024, 1024])  # slide window (H, W)
    stride: list[int] = field(default_factory=lambda: [512, 512])
    classes: str = "dataset"  # dataset | 19 | 16 | 13: classes in the mean IoU
    batch_size: int = 1
    subset: int = 0  # evaluate the first N images only (0 = all)


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


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: ExperimentConfig | None = None,
) -> ExperimentConfig:
    """Load a YAML experiment (or the defaults) and apply ``key=value`` overrides."""
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
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, schema, f"override {item!r}") from None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


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


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """The inverse of :func:`to_dict` (checkpoints store configs as plain dicts)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig()), data))
    except OmegaConfBaseException as exc:
        raise _wrap(exc, ExperimentConfig(), "stored config") from None
