"""Generate MiniCity once, atomically, into an on-disk cache keyed by what produced it.

Layout of one generated copy (``ensure_minicity`` returns its path)::

    <root>/minicity-<VERSION>-seed<seed>-<size>-<key>/
        meta.json                              # what produced it, split sizes, class list
        source/train/images/00000.png ...      # RGB uint8
        source/train/labels/00000.png ...      # trainIds uint8 (255 = ignore)
        source/train/panoptic/00000.png ...    # uint16 trainId*1000+k, void 65535 (panoptic.py)
        source/train/class_stats.json          # per-image pixel counts of the 19 trainIds
        source/val/...  target/train/...  target/val/...

``<key>`` hashes the version string, seed, split sizes, image size and the generator's own
source code, so any change to the generator gets a fresh directory instead of a stale one.
Generation writes into ``<root>/.<name>.tmp-<pid>-*`` and renames it into place only when
complete: a killed run never leaves a half-written cache (its temp dir is removed by the next
run once its process is gone). Each image is drawn from its own ``numpy`` Generator seeded
by (seed, split, index), so the output does not depend on worker count or order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gbw.data.classes import CITYSCAPES_CLASSES, NUM_CLASSES

VERSION = "v2"  # bump when the generator changes what it draws (the key also hashes the code)

log = logging.getLogger(__name__)

# split -> (domain, folder, seed stream). Target labels exist on disk for evaluation and the
# documented statistics; MiniCity("target_train") never returns them unless asked.
SPLITS: dict[str, tuple[str, str, int]] = {
    "source_train": ("source", "source/train", 0),
    "source_val": ("source", "source/val", 1),
    "target_train": ("target", "target/train", 2),
    "target_val": ("target", "target/val", 3),
}


@dataclass(frozen=True)
class Size:
    """Split sizes (images) and image size (pixels) of one MiniCity preset."""

    source_train: int
    source_val: int
    target_train: int
    target_val: int
    height: int = 96
    width: int = 192

    def count(self, split: str) -> int:
        return int(getattr(self, split))


# "default" is the benchmark of the demo and the study; "quick" is for tests. Images are
# 96x192 (H x W), Cityscapes' 1:2 aspect: at this width a pedestrian on the sidewalk, seen
# where the camera frames him, keeps a median of ~30 visible pixels (v1: 96x128, ~14).
SIZES: dict[str, Size] = {
    "default": Size(source_train=1000, source_val=300, target_train=500, target_val=250),
    "quick": Size(source_train=40, source_val=10, target_train=30, target_val=20),
}

_GENERATOR_FILES = (
    "scene.py",
    "geometry.py",
    "domains.py",
    "textures.py",
    "panoptic.py",
    "cache.py",
)


def default_root() -> Path:
    """``$GBW_DATA`` if set, else ``~/.cache/gbw/minicity``."""
    env = os.environ.get("GBW_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gbw" / "minicity"


def _generator_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _GENERATOR_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _spec(seed: int, size: str) -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown MiniCity size {size!r}; choose one of {sorted(SIZES)}")
    return {
        "name": "MiniCity",
        "version": VERSION,
        "seed": int(seed),
        "size": size,
        "sizes": asdict(SIZES[size]),
        "generator": _generator_digest(),
    }


def minicity_dir(root: str | Path | None = None, seed: int = 0, size: str = "default") -> Path:
    """Where the copy for (seed, size) lives under ``root``; nothing is generated."""
    spec = _spec(seed, size)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    root = default_root() if root is None else Path(root).expanduser()
    return root / f"minicity-{VERSION}-seed{seed}-{size}-{key}"


def _is_complete(path: Path, spec: dict[str, object]) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == v for k, v in spec.items())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(final: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temp dirs of killed generations (dead pid, or older than ``max_age_s``)."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            pid = -1
        age = time.time() - tmp.stat().st_mtime
        if pid == os.getpid():
            continue
        if pid <= 0 or not _pid_alive(pid) or age > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)


# ---- rendering workers ------------------------------------------------------------------


def _render_one(job: tuple[str, int, int, int, int, str]) -> list[int]:
    """Render, write and count one image. Runs in worker processes: numpy/PIL only."""
    from gbw.data.io import write_png, write_png_unchanged
    from gbw.data.minicity.domains import DOMAINS
    from gbw.data.minicity.panoptic import encode_png16
    from gbw.data.minicity.scene import render

    split, index, seed, height, width, out = job
    domain, folder, stream = SPLITS[split]
    rng = np.random.default_rng([seed, stream, index])
    image, label, panoptic = render(DOMAINS[domain], rng, (height, width))
    base = Path(out) / folder
    write_png(base / "images" / f"{index:05d}.png", image)
    write_png(base / "labels" / f"{index:05d}.png", label)
    write_png_unchanged(base / "panoptic" / f"{index:05d}.png", encode_png16(panoptic))
    return np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].tolist()


def _run_jobs(jobs: list[tuple[str, int, int, int, int, str]], workers: int) -> Iterable[list[int]]:
    if workers <= 1 or len(jobs) < 4 * workers:
        return [_render_one(j) for j in jobs]
    # "spawn": portable, and safe when the caller already runs torch threads (fork is not).
    # Each worker pays a fresh interpreter's imports (~1-3 s, torch via ``gbw``), so this
    # pays off only for the default size on idle cores.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        return pool.map(_render_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


def _generate(out: Path, seed: int, size: Size, workers: int) -> None:
    jobs = [
        (split, i, seed, size.height, size.width, str(out))
        for split in SPLITS
        for i in range(size.count(split))
    ]
    for _, folder, _ in SPLITS.values():
        for kind in ("images", "labels", "panoptic"):
            (out / folder / kind).mkdir(parents=True, exist_ok=True)
    counts = list(_run_jobs(jobs, workers))
    start = 0
    for split, (_, folder, _) in SPLITS.items():
        n = size.count(split)
        stats = {
            "classes": list(CITYSCAPES_CLASSES),
            "names": [f"{folder}/images/{i:05d}.png" for i in range(n)],
            "counts": counts[start : start + n],
        }
        start += n
        (out / folder / "class_stats.json").write_text(json.dumps(stats, separators=(",", ":")))


def ensure_minicity(
    root: str | Path | None = None, seed: int = 0, size: str = "default", workers: int = 1
) -> Path:
    """Return the MiniCity directory for (seed, size) under ``root``, generating it if needed.

    ``root`` defaults to :func:`default_root`. The default size costs ~30 s of CPU time.
    ``workers > 1`` renders in that many "spawn" processes: faster on idle cores, never a
    different output; like any spawn pool it needs the caller's script to guard its entry
    point with ``if __name__ == "__main__"``, which is why it is not the default.
    """
    spec = _spec(seed, size)
    final = minicity_dir(root, seed, size)
    if _is_complete(final, spec):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    if final.exists():
        if _is_complete(final, spec):  # a concurrent run finished in the meantime
            return final
        # Incomplete or foreign contents: never reuse, never merge.
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
        final.rename(trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    t0 = time.perf_counter()
    try:
        from gbw.data.minicity.textures import texture_bank

        texture_bank()  # fail early, before any worker starts, if a photo cannot be read
        _generate(tmp, seed, SIZES[size], workers)
        meta = dict(spec)
        meta["image_hw"] = [SIZES[size].height, SIZES[size].width]
        meta["splits"] = {
            s: {"folder": f, "images": SIZES[size].count(s)} for s, (_, f, _) in SPLITS.items()
        }
        meta["classes"] = list(CITYSCAPES_CLASSES)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: "complete"
        try:
            tmp.rename(final)
        except OSError:
            if not _is_complete(final, spec):  # not a concurrent twin that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("MiniCity %s generated in %.1f s at %s", size, time.perf_counter() - t0, final)
    return final


def load_class_stats(
    split: str, root: str | Path | None = None, seed: int = 0, size: str = "default"
) -> tuple[list[str], np.ndarray]:
    """Per-image class pixel counts of a split: (names, int64 counts [N, 19] by trainId)."""
    if split not in SPLITS:
        raise ValueError(f"unknown MiniCity split {split!r}; choose one of {list(SPLITS)}")
    path = ensure_minicity(root, seed, size) / SPLITS[split][1] / "class_stats.json"
    stats = json.loads(path.read_text())
    return list(stats["names"]), np.asarray(stats["counts"], np.int64).reshape(-1, NUM_CLASSES)
