"""What a sweep runs: grids of ``key=value`` overrides times seeds, as named run specs.

``--grid weighting.name=none,gbw,if`` lists the values of one config key, written exactly as a
``gbw train`` override (``key=value``; the values split at commas outside brackets and quotes, so
``--grid model.kwargs.widths=[8,8,16,16],[16,16,32,32]`` has two values). A sweep runs every
combination of the grids' values (their product, in the order given) with every seed.

Run folder names (one path component each): the grid values in order, each as
``<key>=<value>`` with the key shortened to its last dotted component (the full key where two
grids share a last component), joined by ``+``, then ``-s<seed>``, e.g.
``name=gbw+rcs=true-s3``; without grids just ``s<seed>``. A value with characters outside
``[A-Za-z0-9._-]`` has them replaced by ``_`` and gets ``~`` and 6 hex digits of its hash, so
that two different values never share a folder.

Torch-free: the CLI's help and the planning of a sweep import no deep-learning stack.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from gbw.config import ConfigError, ExperimentConfig, load_config

# keys the sweep sets itself: a grid or override on them would be silently replaced
RESERVED_KEYS = ("name", "seed", "out_dir")
_SAFE = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Grid:
    """One ``--grid KEY=V1,V2,...``: a config key and its values as written."""

    key: str
    values: tuple[str, ...]


@dataclass
class RunSpec:
    """One run of a sweep: its folder name, setting (factor -> level) and overrides."""

    name: str
    setting: str  # label shared by the runs that differ only by seed
    values: dict[str, str]  # factor -> level (a sweep: grid key -> value as written)
    seed: int
    config: str | None  # the base YAML file (None = the built-in defaults)
    overrides: list[str] = field(default_factory=list)  # base overrides, then the setting's

    def resolve(self, runs_dir: Path) -> ExperimentConfig:
        """The run's experiment: config + overrides + seed, named and placed in ``runs_dir``."""
        extra = [f"seed={self.seed}", f"name={self.name}", f"out_dir={runs_dir.resolve()}"]
        return load_config(self.config, [*self.overrides, *extra])

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "setting": self.setting,
            "values": dict(self.values),
            "seed": self.seed,
            "config": self.config,
            "overrides": list(self.overrides),
        }


def split_values(text: str) -> list[str]:
    """Split at commas outside ``[]``, ``{}``, ``()`` and quotes: ``a,[1,2],'x,y'`` -> 3 values."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(text: str) -> Grid:
    """``KEY=V1,V2`` -> :class:`Grid`; errors name the argument and what was expected."""
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected KEY=VALUE1,VALUE2,... ")
    key, _, rest = text.partition("=")
    key = key.strip()
    values = split_values(rest)
    if not key or any(v == "" for v in values):
        raise ConfigError(f"--grid {text!r}: expected KEY=VALUE1,VALUE2,... (an empty value?)")
    if key in RESERVED_KEYS:
        hint = "use --seeds" if key == "seed" else "the sweep sets it for every run"
        raise ConfigError(f"--grid {text!r}: {key!r} cannot be a grid key ({hint})")
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise ConfigError(f"--grid {text!r}: value {dup[0]!r} is listed twice")
    return Grid(key, tuple(values))


def parse_seeds(text: str) -> list[int]:
    """``1,2,3`` -> [1, 2, 3] (distinct integers)."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers (1,2,3)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct comma-separated integers")
    return seeds


def safe_component(value: str) -> str:
    """A grid value as part of a path component; other characters -> ``_`` + ``~`` + hash."""
    if _SAFE.fullmatch(value) and value not in (".", ".."):
        return value
    digest = hashlib.sha1(value.encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', value).strip('_.') or 'v'}~{digest}"


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def expand(
    config: str | None, seeds: Sequence[int], grids: Sequence[Grid], overrides: Sequence[str] = ()
) -> list[RunSpec]:
    """Every combination of the grid values with every seed, seed by seed (all settings of the
    first seed come first, so an interrupted sweep already holds complete pairs)."""
    keys = [g.key for g in grids]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: a key is given twice ({', '.join(keys)})")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in RESERVED_KEYS:
            raise ConfigError(f"override {item!r}: the sweep sets {key!r} for every run")
        if key in keys:
            raise ConfigError(f"override {item!r}: {key!r} is also a grid key")
    short = _short_keys(keys)
    specs = []
    for seed in seeds:
        for combo in product(*(g.values for g in grids)):
            values = dict(zip(keys, combo))
            label = ", ".join(f"{k}={v}" for k, v in values.items()) or "(config)"
            stem = "+".join(f"{short[k]}={safe_component(v)}" for k, v in values.items())
            setting_overrides = [*overrides, *(f"{k}={v}" for k, v in values.items())]
            name = f"{stem}-s{seed}" if stem else f"s{seed}"
            specs.append(RunSpec(name, label, values, seed, config, setting_overrides))
    return specs


def check_unique(specs: Sequence[RunSpec]) -> None:
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two runs of the sweep would share the folder {dup[0]!r}")


def validate(specs: Sequence[RunSpec], runs_dir: Path) -> list[ExperimentConfig]:
    """Resolve every run's config (unknown keys and bad values fail here, before any run).

    ``load_config`` checks every value (method, weighting, ``uda:`` settings, ...); this adds
    one device per run (each run of a sweep is one process).
    """
    check_unique(specs)
    exps = []
    settings: dict[tuple, ExperimentConfig] = {}  # resolved once per setting, not per seed
    for spec in specs:
        where = f"run {spec.name}"
        key = (spec.config, tuple(spec.overrides))
        if key not in settings:
            settings[key] = load_config(spec.config, spec.overrides)
        exp = copy.deepcopy(settings[key])
        exp.seed, exp.name, exp.out_dir = spec.seed, spec.name, str(runs_dir.resolve())
        if exp.train.devices * exp.train.num_nodes != 1:
            raise ConfigError(
                f"{where}: train.devices={exp.train.devices}, train.num_nodes="
                f"{exp.train.num_nodes}; a sweep runs each run as one process on one device "
                "(start multi-device runs with gbw train)"
            )
        exps.append(exp)
    return exps
