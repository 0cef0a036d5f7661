"""``gbw predict``: segmentation masks for image files, coloured with the Cityscapes palette."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gbw.data.classes import CITYSCAPES_PALETTE, IGNORE_INDEX
from gbw.data.io import read_rgb, write_png
from gbw.engine.evaluate import predict_logits
from gbw.engine.runs import load_trained


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 colours; ignore (255) and unknown ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
    lut[IGNORE_INDEX] = 0
    return lut[label.astype(np.uint8)]


def predict_files(
    run: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    trainids: bool = False,
    cpu: bool = False,
    overrides: Sequence[str] = (),
) -> list[Path]:
    """Predict each image with the run's evaluation protocol; write ``<stem>_color.png``
    (and ``<stem>_trainIds.png``). Returns the written colour masks."""
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    exp, model, _ = load_trained(run, list(overrides), device)
    if getattr(model, "instance_head", None) is not None:  # a panoptic run: COCO PNG + overlay
        from gbw.engine.predict_panoptic import predict_panoptic_files

        return predict_panoptic_files(exp, model, images, out_dir, device=device, trainids=trainids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        path = Path(path)
        rgb = read_rgb(path)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = predict_logits(model, x, exp.eval, exp.model.num_classes, rgb.shape[:2])
        pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        target = out_dir / f"{path.stem}_color.png"
        write_png(target, colorize(pred))
        if trainids:
            write_png(out_dir / f"{path.stem}_trainIds.png", pred)
        written.append(target)
    return written
