"""``gbw predict`` for panoptic runs: COCO panoptic PNGs + JSON and a coloured overlay.

For each image, with the run's evaluation protocol and fusion (:mod:`.evaluate_panoptic`):

Written through :func:`gbw.engine.predict.predict_files` (names, folders, per-file errors):

* ``<name>_panoptic.png``: the COCO panoptic format, RGB with segment id
  ``R + 256 G + 256^2 B`` and 0 = void. The segment id is the gbw id + 1 (gbw's road stuff
  has id 0, which COCO reads as void), so ``(id - 1) // 1000`` is the trainId;
* ``<name>_panoptic.json``: ``{"file_name", "segments_info": [{"id", "category_id"
  (trainId, as cityscapesscripts' ``createPanopticImgs --use-train-id`` ground truth),
  "iscrowd": 0, "isthing", "area", "bbox" (x, y, w, h), "gbw_id"}]}``;
* ``<name>_overlay.png`` (``--overlay``): the image under the segments' colours (Cityscapes palette,
  instances in shades of their class colour), white borders between segments, void dimmed;
* ``<name>_color.png``: the semantic branch's colour mask, as for semantic runs;
* ``--format panoptic_ids``: ``<name>_panopticTrainIds.png``, gbw's 16-bit panoptic map
  (:mod:`gbw.data.panoptic`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from gbw.config import ExperimentConfig
from gbw.data.classes import CITYSCAPES_PALETTE, THING_CLASSES
from gbw.data.io import write_png

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


def predict_panoptic_image(
    model: nn.Module, rgb: np.ndarray, exp: ExperimentConfig, *, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(semantic trainIds uint8 (H, W), gbw panoptic map int64 (H, W)) of one RGB image, with
    the run's evaluation protocol and fusion."""
    from gbw.engine.evaluate_panoptic import predict_panoptic

    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    x = x.float().div(255).unsqueeze(0).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
        semantic, panoptic, _ = predict_panoptic(
            model, x, exp.eval, exp.model.num_classes, rgb.shape[:2]
        )
    return semantic[0].to(torch.uint8).cpu().numpy(), panoptic[0].cpu().numpy()


def write_panoptic_output(
    fmt: str, target: Path, rgb: np.ndarray, panoptic: np.ndarray, image: Path
) -> None:
    """One panoptic output of :mod:`gbw.engine.predict` (``panoptic``: the COCO PNG and its
    JSON beside it; ``panoptic_ids``: gbw's 16-bit map; ``overlay``: the segments over
    the photo)."""
    from gbw.data.panoptic import write_panoptic
    from gbw.fileio import write_json

    if fmt == "panoptic":
        coco, segments = coco_panoptic(panoptic)
        write_png(target, coco)
        info = {"file_name": target.name, "image": str(image), "segments_info": segments}
        write_json(target.with_suffix(".json"), info)
    elif fmt == "panoptic_ids":
        write_panoptic(target, panoptic)
    elif fmt == "overlay":
        write_png(target, overlay(rgb, panoptic))
    else:
        raise ValueError(f"not a panoptic output format: {fmt!r}")
