"""Tiny synthetic street scenes with instances for the panoptic tests, in memory and as small
SYNTHIA-RAND-CITYSCAPES / Cityscapes trees in their real file formats.

A scene is sky over building over road, with 1-3 cars and 1-2 persons as solid, noisy
rectangles on the road. Each class has its own colour, so a tiny network can learn it in a
few hundred steps; instances of one class only differ in position and size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gbw.data.base import SampleFiles, SegmentationDataset
from gbw.data.panoptic import from_transform_code, to_transform_code

D = 1000
SKY, BUILDING, ROAD, PERSON, CAR = 10, 2, 0, 11, 13
COLOURS = {SKY: (70, 130, 200), BUILDING: (120, 90, 60), ROAD: (110, 110, 110)}
THING_COLOURS = {CAR: (200, 30, 30), PERSON: (230, 200, 40)}
# trainId -> SYNTHIA class id and Cityscapes labelId (RECIPES.md tables)
SYNTHIA_ID = {SKY: 1, BUILDING: 2, ROAD: 3, PERSON: 10, CAR: 8}
CITYSCAPES_ID = {SKY: 23, BUILDING: 11, ROAD: 7, PERSON: 24, CAR: 26}


def scene(rng: np.random.Generator, h: int = 64, w: int = 96) -> dict[str, np.ndarray]:
    """One scene: ``image`` (H, W, 3) uint8, ``label`` trainIds, ``panoptic`` ids,
    ``instance`` per-pixel instance number (0 = none, unique over the image)."""
    label = np.full((h, w), ROAD, dtype=np.uint8)
    top = int(rng.integers(h // 4, h // 3))
    label[:top] = SKY
    label[top : top + h // 4] = BUILDING
    instance = np.zeros((h, w), dtype=np.int64)
    road = top + h // 4
    n = 0
    objects = ((CAR, rng.integers(1, 4), (10, 22)), (PERSON, rng.integers(1, 3), (16, 9)))
    for cls, count, (hh, ww) in objects:
        for _ in range(int(count)):
            sh, sw = hh + int(rng.integers(-2, 3)), ww + int(rng.integers(-3, 4))
            y = int(rng.integers(road - sh // 2, h - sh))
            x = int(rng.integers(0, w - sw))
            n += 1
            label[y : y + sh, x : x + sw] = cls
            instance[y : y + sh, x : x + sw] = n
    panoptic = label.astype(np.int64) * D
    for cls in (CAR, PERSON):
        ids = sorted(set(instance[label == cls].tolist()) - {0})
        for k, i in enumerate(ids, start=1):
            panoptic[(instance == i) & (label == cls)] = cls * D + k
    image = np.zeros((h, w, 3), dtype=np.float64)
    for cls, colour in {**COLOURS, **THING_COLOURS}.items():
        image[label == cls] = colour
    image += rng.normal(0, 8, size=image.shape)
    return {
        "image": np.clip(image, 0, 255).astype(np.uint8),
        "label": label,
        "panoptic": panoptic,
        "instance": np.where(np.isin(label, (CAR, PERSON)), instance, 0),
    }


def _png16_rgb(path: Path, channels: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), channels[:, :, ::-1].astype(np.uint16))  # file order R, G, B


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_synthia(root: Path, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``root/RGB/<id>.png`` and ``root/GT/LABELS/<id>.png`` (16-bit: class, instance, 0)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        s = scene(rng)
        cls = np.vectorize(SYNTHIA_ID.get)(s["label"]).astype(np.uint16)
        inst = (s["instance"] * 7 + 3).astype(np.uint16)  # SYNTHIA's instance ids are arbitrary
        _save(root / "RGB" / f"{i:07d}.png", s["image"])
        _png16_rgb(root / "GT" / "LABELS" / f"{i:07d}.png", np.stack([cls, inst, 0 * cls], -1))
        scenes.append(s)
    return scenes


def write_cityscapes(root: Path, counts: dict[str, int], seed: int = 1) -> dict[str, list]:
    """``leftImg8bit`` / ``gtFine`` (labelIds, instanceIds) of ``counts`` images per split."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for split, n in counts.items():
        out[split] = []
        for i in range(n):
            s = scene(rng)
            stem = f"aachen_{i:06d}_000019"
            labels = np.vectorize(CITYSCAPES_ID.get)(s["label"]).astype(np.uint16)
            inst = labels.copy()
            thing = s["instance"] > 0
            k = s["panoptic"] % D
            inst[thing] = labels[thing] * 1000 + (k[thing] - 1)
            _save(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", s["image"])
            gt = root / "gtFine" / split / "aachen"
            _save(gt / f"{stem}_gtFine_labelIds.png", labels.astype(np.uint8))
            _save(gt / f"{stem}_gtFine_instanceIds.png", inst)
            out[split].append(s)
    return out


class _FakeMiniCity(SegmentationDataset):
    """Scenes as a SegmentationDataset whose ``load`` also returns the panoptic map."""

    EVAL_CLASSES = (ROAD, BUILDING, SKY, PERSON, CAR)

    def __init__(self, split: str, n: int, offset: int, panoptic: bool, **kwargs) -> None:
        samples = [SampleFiles(f"{split}/{i:05d}.png", Path("-"), Path("-")) for i in range(n)]
        super().__init__(samples, **kwargs)
        self.offset, self.panoptic = offset, panoptic

    def load(self, index: int):
        s = scene(np.random.default_rng(self.offset + index), h=96, w=128)
        label = s["label"] if self.with_labels else None
        return (s["image"], label, s["panoptic"]) if self.panoptic else (s["image"], label)

    def make_sample(self, index, image, label, panoptic=None):
        if panoptic is None:
            return super().make_sample(index, image, label)
        masks = [to_transform_code(panoptic)]
        if self.transform is not None:
            image, label, masks = self.transform.apply(image, label, masks)
        out = self.to_sample(self.samples[index].name, image, label)
        out["panoptic"] = torch.from_numpy(from_transform_code(masks[0]))
        return out


FAKE_COUNTS = {"source_train": 12, "source_val": 4, "target_train": 8, "target_val": 6}


def fake_minicity(
    split: str,
    root=None,
    *,
    seed: int = 0,
    size: str = "default",
    with_labels: bool | None = None,
    transform=None,
    with_panoptic: bool = False,
) -> _FakeMiniCity:
    """A stand-in for MiniCity v2's interface (``MiniCity(split, root, *, seed, size,
    with_labels, transform, with_panoptic)``) drawn from :func:`scene` at MiniCity's 96x128:
    samples carry ``"panoptic"`` (int64, cropped and flipped with the label) with
    ``with_panoptic``. Only for tests, until MiniCity v2 is merged."""
    offset = sorted(FAKE_COUNTS).index(split) * 1000
    labelled = split != "target_train" if with_labels is None else with_labels
    return _FakeMiniCity(
        split,
        FAKE_COUNTS[split],
        offset,
        with_panoptic,
        with_labels=labelled,
        transform=transform,
    )
