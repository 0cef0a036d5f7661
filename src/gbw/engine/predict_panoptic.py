"""``gbw predict`` for panoptic runs: COCO panoptic PNGs + JSON and a coloured overlay.

For each image, with the run's evaluation protocol and fusion (:mod:`.evaluate_panoptic`):

* ``<stem>_panoptic.png``: the COCO panoptic format, RGB with segment id
  ``R + 256 G + 256^2 B`` and 0 = void. The segment id is the gbw id + 1 (gbw's road stuff
  has id 0, which COCO reads as void), so ``(id - 1) // 1000`` is the trainId;
* ``<stem>_panoptic.json``: ``{"file_name", "segments_info": [{"id", "category_id"
  (trainId, as cityscapesscripts' ``createPanopticImgs --use-train-id`` ground truth),
  "iscrowd": 0, "isthing", "area", "bbox" (x, y, w, h), "gbw_id"}]}``;
* ``<stem>_panoptic_overlay.png``: the image under the segments' colours (Cityscapes palette,
  instances in shades of their class colour), white borders between segments, void dimmed;
* ``<stem>_color.png``: the semantic branch's colour mask, as for semantic runs;
* with ``--trainids``: ``<stem>_panopticTrainIds.png``, gbw's 16-bit panoptic map
  (:mod:`gbw.data.panoptic`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gbw.config import ExperimentConfig
from gbw.data.classes import CITYSCAPES_PALETTE, THING_CLASSES
from gbw.data.io import read_rgb, write_png

LABEL_DIVISOR = 1000


def coco_panoptic(panoptic: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """A gbw panoptic map -> (COCO panoptic RGB uint8 (H, W, 3), segments_info)."""
    from gbw.data.panoptic import VOID

    rgb = np.zeros((*panoptic.shape, 3), dtype=np.uint8)
    segments = []
    ids, inverse, areas = np.unique(panoptic, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(panoptic.shape)
    for j, (gid, area) in enumerate(zip(ids.tolist(), areas.tolist())):
        if gid == VOID:
            continue
        cid = gid + 1
        mask = inverse == j
        rgb[mask] = (cid % 256, cid // 256 % 256, cid // 65536)
        ys, xs = np.nonzero(mask)
        cls = gid // LABEL_DIVISOR
        segments.append(
            {
                "id": cid,
                "category_id": cls,
                "iscrowd": 0,
                "isthing": int(cls in THING_CLASSES),
                "area": area,
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
                "gbw_id": gid,
            }
        )
    return rgb, segments


def overlay(image: np.ndarray, panoptic: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image (H, W, 3) uint8 under the panoptic segments' colours (see module docstring)."""
    from gbw.data.panoptic import VOID

    palette = np.zeros((256, 3), dtype=np.float64)
    palette[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    cls = np.where(panoptic == VOID, 255, panoptic // LABEL_DIVISOR)
    k = np.where(panoptic == VOID, 0, panoptic % LABEL_DIVISOR)
    # instance k of a class: its colour moved by a fixed pseudo-random offset per k
    shift = ((k[..., None] * np.array([53, 97, 151])) % 97 - 48) * (k[..., None] > 0)
    colour = np.clip(palette[cls] + shift, 0, 255)
    img = image.astype(np.float64)
    out = np.where((panoptic == VOID)[..., None], 0.5 * img, (1 - alpha) * img + alpha * colour)
    border = np.zeros(panoptic.shape, dtype=bool)
    border[:, 1:] |= panoptic[:, 1:] != panoptic[:, :-1]
    border[1:, :] |= panoptic[1:, :] != panoptic[:-1, :]
    out[border] = 255
    return out.astype(np.uint8)


def predict_panoptic_files(
    exp: ExperimentConfig,
    model: nn.Module,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: str = "cpu",
    trainids: bool = False,
) -> list[Path]:
    """Write the files of the module docstring for each image; returns the panoptic PNGs."""
    from gbw.data.panoptic import write_panoptic
    from gbw.engine.evaluate_panoptic import predict_panoptic
    from gbw.engine.predict import colorize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        path = Path(path)
        rgb = read_rgb(path)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            semantic, panoptic, _ = predict_panoptic(
                model, x, exp.eval, exp.model.num_classes, rgb.shape[:2]
            )
        pan = panoptic[0].cpu().numpy()
        coco, segments = coco_panoptic(pan)
        target = out_dir / f"{path.stem}_panoptic.png"
        write_png(target, coco)
        info = {"file_name": target.name, "image": str(path), "segments_info": segments}
        (out_dir / f"{path.stem}_panoptic.json").write_text(json.dumps(info, indent=1))
        write_png(out_dir / f"{path.stem}_panoptic_overlay.png", overlay(rgb, pan))
        write_png(out_dir / f"{path.stem}_color.png", colorize(semantic[0].cpu().numpy()))
        if trainids:
            write_panoptic(out_dir / f"{path.stem}_panopticTrainIds.png", pan)
        written.append(target)
    return written
