"""How fast can this CPU decode and transform the real datasets? images/s per dataset and workers.

Writes synthetic trees with the real datasets' file formats and sizes (GTA5: RGB PNG 1914x1052 +
8-bit palette label; SYNTHIA: RGB PNG 1280x760 + 16-bit 3-channel label; Cityscapes: RGB PNG
2048x1024, read as an unlabelled target), then times the DAFormer training pipeline (decode,
keep-ratio rescale to the recipe scale, 512x512 crop with the cat_max_ratio check, flip, float
conversion) through :func:`gbw.data.loader.build_loader` with 0, 1 and 2 worker processes, for raw
labels (mapped on the fly) and for labels prepared by ``gbw data prepare``.

The images are natural photographs from scikit-image, resized and lightly noised so that the PNG
files are about as large as the real ones (PNG decoding time grows with the compressed size).
Files are read from the page cache (written just before), so disk speed is not measured.

    python benchmarks/data_loading.py --out benchmarks/results/data_loading.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from gbw.data.cityscapes import Cityscapes
from gbw.data.gta import GTA5
from gbw.data.io import decode_rgb, write_png_unchanged
from gbw.data.loader import build_loader
from gbw.data.prepare import prepare_dataset
from gbw.data.synthia import Synthia
from gbw.data.transforms import recipe_train_transform

SOURCES = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = SOURCES[int(rng.integers(len(SOURCES)))]
    img = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-6, 7, size=img.shape, dtype=np.int16)  # sensor-like noise
    return np.clip(img, 0, 255).astype(np.uint8)


def regions(rng: np.random.Generator, width: int, height: int, ids: list[int]) -> np.ndarray:
    """A label map of irregular regions: coarse random cells plus random discs."""
    coarse = rng.choice(ids, size=(height // 60 + 1, width // 60 + 1)).astype(np.uint8)
    label = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)
    for _ in range(40):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.circle(label, centre, int(rng.integers(5, 80)), int(rng.choice(ids)), -1)
    return label


def write_trees(root: Path, n: int, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    gta, syn, cs = root / "gta", root / "synthia", root / "cityscapes"
    cs_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0]
    syn_ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 17, 19, 21, 0]
    for i in range(n):
        (gta / "images").mkdir(parents=True, exist_ok=True)
        (gta / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(rng, 1914, 1052)).save(gta / "images" / f"{i:05d}.png")
        label = Image.fromarray(regions(rng, 1914, 1052, cs_ids), mode="P")
        label.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
        label.save(gta / "labels" / f"{i:05d}.png")

        (syn / "RGB").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(rng, 1280, 760)).save(syn / "RGB" / f"{i:07d}.png")
        ids = regions(rng, 1280, 760, syn_ids).astype(np.uint16)
        instance = (ids * 37 + rng.integers(0, 3, ids.shape)).astype(np.uint16)
        channels = np.stack([ids, instance, np.zeros_like(ids)], axis=-1)
        write_png_unchanged(syn / "GT" / "LABELS" / f"{i:07d}.png", channels)

        city = cs / "leftImg8bit" / "train" / "bench"
        city.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(rng, 2048, 1024)).save(city / f"bench_{i:06d}_000019_leftImg8bit.png")
        gt = cs / "gtFine" / "train" / "bench"
        gt.mkdir(parents=True, exist_ok=True)
        Image.fromarray(regions(rng, 2048, 1024, cs_ids), mode="L").save(
            gt / f"bench_{i:06d}_000019_gtFine_labelIds.png"
        )
    return {"gta": gta, "synthia": syn, "cityscapes": cs}


def mean_size(files: list[Path]) -> float:
    return float(np.mean([f.stat().st_size for f in files])) / 1e6


def time_decode(fn, files: list[Path], repeat: int = 2) -> float:
    """ms per file in this process, best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for f in files:
            fn(f)
        best = min(best, (time.perf_counter() - start) / len(files))
    return best * 1e3


def time_loader(ds, workers: int, samples: int, batch: int = 2, device: str | None = None) -> float:
    """images/s through build_loader, after one warm-up batch per worker.

    With ``device`` the batches are pinned and copied there asynchronously, as in training.
    """
    loader = build_loader(
        ds, batch, num_workers=workers, seed=0, drop_last=True, pin_memory=device is not None
    )
    it = iter(loader)
    for _ in range(max(workers, 1)):
        next(it)
    done, start = 0, time.perf_counter()
    while done < samples:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if device is not None:
            b["image"].to(device, non_blocking=True)
        done += b["image"].shape[0]
    if device is not None:
        torch.cuda.synchronize()
    rate = done / (time.perf_counter() - start)
    del it, loader
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8, help="synthetic files per dataset")
    parser.add_argument("--samples", type=int, default=32, help="samples timed per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    parser.add_argument(
        "--to-device", action="store_true", help="pin batches and copy them to the GPU (CUDA)"
    )
    args = parser.parse_args()
    device = "cuda" if args.to_device and torch.cuda.is_available() else None
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number below

    with tempfile.TemporaryDirectory(prefix="gbw-bench-") as tmp:
        roots = write_trees(Path(tmp), args.files)
        gta_images = sorted((roots["gta"] / "images").glob("*.png"))
        syn_images = sorted((roots["synthia"] / "RGB").glob("*.png"))
        cs_images = sorted((roots["cityscapes"] / "leftImg8bit").rglob("*.png"))
        gta_labels = sorted(p for p in (roots["gta"] / "labels").glob("*.png"))
        syn_labels = sorted((roots["synthia"] / "GT" / "LABELS").glob("*.png"))
        cv2.setNumThreads(1)
        gta_label = lambda p: GTA5.to_train_ids(GTA5.read_raw_label(p))  # noqa: E731
        syn_label = lambda p: Synthia.to_train_ids(Synthia.read_raw_label(p))  # noqa: E731
        decode = [
            ("GTA5 image, 1914x1052 RGB PNG", gta_images, decode_rgb),
            ("GTA5 label, palette PNG -> trainIds", gta_labels, gta_label),
            ("SYNTHIA image, 1280x760 RGB PNG", syn_images, decode_rgb),
            ("SYNTHIA label, 16-bit 3-ch PNG -> trainIds", syn_labels, syn_label),
            ("Cityscapes image, 2048x1024 RGB PNG", cs_images, decode_rgb),
        ]
        decode_rows = [(n, mean_size(files), time_decode(fn, files)) for n, files, fn in decode]
        cv2.setNumThreads(0)

        def datasets(prepared: bool) -> list:
            kind = "prepared" if prepared else "raw"
            gta = GTA5(roots["gta"], transform=recipe_train_transform("gta"))
            syn = Synthia(roots["synthia"], transform=recipe_train_transform("synthia"))
            return [(f"GTA5 ({kind} labels)", gta), (f"SYNTHIA ({kind} labels)", syn)]

        rows: list[tuple[str, list[float]]] = []
        settings = datasets(prepared=False)
        settings.append(
            (
                "Cityscapes target (no labels)",
                Cityscapes(
                    roots["cityscapes"],
                    "train",
                    with_labels=False,
                    transform=recipe_train_transform("cityscapes"),
                ),
            )
        )
        for name in ("gta", "synthia"):
            prepare_dataset(name, roots[name], workers=2, progress=False)
        settings += datasets(prepared=True)
        for label, ds in settings:
            rates = [time_loader(ds, w, args.samples, device=device) for w in args.workers]
            rows.append((label, rates))
            print(label, " ".join(f"{r:.1f}" for r in rates), flush=True)

    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or "unknown"
    header = " | ".join(f"{w} workers" for w in args.workers)
    lines = [
        "# Data loading throughput (decode + DAFormer training transform)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores visible; 1-min load average "
        f"{load_before:.2f} before and {os.getloadavg()[0]:.2f} after the run",
        f"- torch {torch.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"- synthetic files of the real formats and sizes, {args.files} per dataset, page cache "
        f"warm; {args.samples} samples per setting, batch 2, `build_loader` (persistent workers)"
        + (", pinned batches copied to the GPU" if device else ", batches stay on the CPU"),
        "- pipeline: decode -> keep-ratio rescale (GTA5 1280x720 bound -> 1280x704, SYNTHIA "
        "1280x760, Cityscapes 1024x512) -> 512x512 crop (cat_max_ratio 0.75, 10 tries) -> flip "
        "-> float32 tensors",
        "",
        "## Single-process decoding (one OpenCV thread)",
        "",
        "| file | mean size (MB) | ms per file |",
        "|---|---|---|",
        *[f"| {n} | {s:.2f} | {ms:.1f} |" for n, s, ms in decode_rows],
        "",
        "## images/s through the loader",
        "",
        f"| dataset | {header} |",
        "|---|" + "---|" * len(args.workers),
        *[f"| {n} | " + " | ".join(f"{r:.1f}" for r in rates) + " |" for n, rates in rows],
        "",
        "Needed: a DAFormer step takes 2 source + 2 target crops, so each domain needs 2 x "
        "steps/s images/s. PERFORMANCE.md (H200): an eager MiT-B5 training step takes 163-210 ms "
        "(<= 6 steps/s, <= 12 images/s per domain); the CUDA-graph-captured step takes 36 ms "
        "(27 steps/s, 55 images/s per domain, before the teacher and mixing passes a UDA step "
        "adds). Pick workers per loader from the table accordingly.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
