"""Training transforms of the DAFormer recipe on numpy arrays, image and label always together.

The pipeline follows DAFormer's mmseg configs (``configs/_base_/datasets/uda_*_512x512.py``):
keep-ratio rescale to the recipe scale -> random 512x512 crop, retried up to 10 times while one
class covers >= 75% of the crop -> horizontal flip (p = 0.5) -> [photometric distortion] -> pad
to the crop size. Every random choice comes from a ``numpy.random.Generator`` owned by the
transform, so a run is reproducible; :func:`gbw.data.loader.build_loader` gives each worker
process its own derived seed.

Normalisation is *not* part of the data pipeline: datasets emit RGB in [0, 1] and each model
normalises its own input (:func:`normalize`), because DeepLabV2 subtracts a BGR mean in 0..255
units while MiT uses ImageNet mean/std, and ClassMix / colour jitter act on plain images.

The DeepLabV2-era references (ADVENT ``advent/dataset/base_dataset.py``, AdaptSegNet
``dataset/gta5_dataset.py``, DACS ``data/gta5_dataset.py``) *stretch* every image to the
recipe size instead (PIL ``image.resize((1280, 720))``): ``keep_ratio=False``
(``data.*.keep_ratio: false`` in ``configs/_base_/deeplabv2*.yaml``) resizes to exactly
``(width, height)``, so a 1914x1052 GTA5 frame becomes 1280x720, not 1280x704.

Deliberate differences from the reference code:

* Labels are resized with ``cv2.INTER_NEAREST_EXACT`` (pixel-centre sampling, like the bilinear
  image resize), not mmcv's ``INTER_NEAREST``, which samples the top-left source pixel and so
  shifts the label by up to half an output pixel against the image.
* Images are resized with OpenCV's bilinear filter (mmcv's); the DeepLabV2-era references use
  PIL's bicubic filter (DACS: PIL bilinear for its Cityscapes halving, ``RandomCrop_city``).
* DAFormer's target (Cityscapes) pipeline runs mmseg's ``RandomCrop`` with its default
  ``cat_max_ratio=1.0`` (``configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py``), i.e. a
  plain random crop without the class-ratio check; gbw's target crops are the same plain
  random crops (the target sets are built without labels, so no crop can read them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gbw.data.classes import IGNORE_INDEX

# (long edge, short edge) given to the keep-ratio rescale, as in DAFormer's configs. GTA5's
# 1914x1052 images become 1280x704 (the long edge binds), SYNTHIA's 1280x760 stay as they are,
# Cityscapes' 2048x1024 become 1024x512.
RECIPE_SCALES: dict[str, tuple[int, int]] = {
    "gta": (1280, 720),
    "synthia": (1280, 760),
    "cityscapes": (1024, 512),
}
CROP_SIZE: tuple[int, int] = (512, 512)  # (height, width)
CAT_MAX_RATIO = 0.75  # a crop is retried while one class covers at least this share of it
CROP_TRIES = 10  # mmseg RandomCrop: at most 10 re-draws, the last one is kept unchecked

# Pseudo-label margins (top, bottom, left, right) in pixels. DAFormer zeroes the pseudo-label
# weight of the top 15 and bottom 120 rows of each 512x512 target *crop* (rectification
# artefacts and the ego-car bonnet); HRDA and MIC mask 30, 240, 30, 30 pixels of the *full*
# 2048x1024 target image before cropping, so only crops at the image border lose pixels.
DAFORMER_PSEUDO_MARGINS: tuple[int, int, int, int] = (15, 120, 0, 0)
HRDA_PSEUDO_MARGINS: tuple[int, int, int, int] = (30, 240, 30, 30)

# Model input normalisation constants.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, [0, 1] units
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The Caffe DeepLab mean used by AdaptSegNet, ADVENT and DACS: BGR order, 0..255 units, std 1.
DEEPLAB_BGR_MEAN: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

Box = tuple[int, int, int, int]  # y1, y2, x1, x2


# --- geometry -----------------------------------------------------------------------------------


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """New (width, height) for mmcv's keep-ratio rescale to ``scale = (long, short)``.

    The factor is the largest that fits the long edge into ``max(scale)`` and the short edge
    into ``min(scale)``; sizes round half up, as in ``mmcv.imrescale``.
    """
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def resize(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to ``size = (width, height)``: bilinear image, pixel-centre nearest label."""
    import cv2

    width, height = size
    if image.shape[1] != width or image.shape[0] != height:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = resize_mask(label, size)
    return image, label


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label or mask sampled at output pixel centres."""
    import cv2

    width, height = size
    if mask.shape[1] == width and mask.shape[0] == height:
        return mask
    dtype = mask.dtype
    if dtype == np.bool_:
        mask = mask.view(np.uint8)
    out = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.view(np.bool_) if dtype == np.bool_ else out


def random_crop_box(
    height: int, width: int, crop_size: tuple[int, int], rng: np.random.Generator
) -> Box:
    """A uniformly random crop window (y1, y2, x1, x2); the whole axis when it is too short."""
    margin_h = max(height - crop_size[0], 0)
    margin_w = max(width - crop_size[1], 0)
    y1 = int(rng.integers(0, margin_h + 1))
    x1 = int(rng.integers(0, margin_w + 1))
    return y1, y1 + crop_size[0], x1, x1 + crop_size[1]


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Crop the first two axes of ``array`` to ``box``."""
    y1, y2, x1, x2 = box
    return array[y1:y2, x1:x2]


def dominant_share(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[int, float]:
    """(number of classes present, share of the most frequent one), ignore pixels excluded."""
    counts = np.bincount(label.ravel(), minlength=ignore_index + 1)
    counts[ignore_index] = 0
    present = counts[counts > 0]
    if present.size == 0:
        return 0, 1.0
    return int(present.size), float(present.max() / present.sum())


def cat_max_ratio_crop_box(
    label: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    *,
    cat_max_ratio: float = CAT_MAX_RATIO,
    tries: int = CROP_TRIES,
    ignore_index: int = IGNORE_INDEX,
) -> Box:
    """mmseg's ``RandomCrop`` rule: re-draw the crop up to ``tries`` times while it shows a single
    class or one class covers ``cat_max_ratio`` or more of its labelled pixels.

    As in mmseg, the draw made after the last failed check is kept without checking it. With
    ``cat_max_ratio >= 1`` this is a plain random crop (as is every crop of an unlabelled image).
    """
    height, width = label.shape[:2]
    box = random_crop_box(height, width, crop_size, rng)
    if cat_max_ratio >= 1.0:
        return box
    for _ in range(tries):
        n_classes, share = dominant_share(crop(label, box), ignore_index)
        if n_classes > 1 and share < cat_max_ratio:
            break
        box = random_crop_box(height, width, crop_size, rng)
    return box


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror the width axis (a contiguous copy, so later steps see positive strides)."""
    return np.ascontiguousarray(array[:, ::-1])


def pad_to(array: np.ndarray, size: tuple[int, int], value: int | float) -> np.ndarray:
    """Pad the bottom and right of ``array`` to at least ``size = (height, width)``."""
    pad_h = max(size[0] - array.shape[0], 0)
    pad_w = max(size[1] - array.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="constant", constant_values=value)


# --- photometric --------------------------------------------------------------------------------


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg truncates (not rounds) after clipping; kept for parity.
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` on an (H, W, 3) uint8 RGB image.

    Each step runs with probability 0.5: brightness, contrast (first or last, at random),
    saturation and hue (in OpenCV's 8-bit HSV, hue in 0..179). DAFormer's recipe disables it in
    the loader and jitters colour on the GPU inside DACS instead; it is offered here for the
    DeepLabV2 recipes and for users who want it in the loader.
    """
    import cv2

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_last = bool(rng.integers(2))
    if not contrast_last and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta)) if hue_delta > 0 else 0
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast_last and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast_range))
    return image


# --- pipelines ----------------------------------------------------------------------------------


@dataclass
class TrainTransform:
    """The DAFormer training pipeline as one seeded callable ``(image, label) -> (image, label)``.

    Args:
        scale: (long, short) edge bounds of the keep-ratio rescale (``RECIPE_SCALES``), or None
            to keep the decoded size. With ``keep_ratio=False``: the (width, height) to
            stretch every image to.
        keep_ratio: mmcv's keep-ratio rescale (DAFormer, HRDA, MIC); False stretches to
            ``scale`` (ADVENT, AdaptSegNet, DACS).
        crop_size: (height, width) of the random crop, or None for no crop.
        cat_max_ratio: re-draw a crop while one class covers at least this share (labels only).
        crop_tries: how many re-draws at most.
        flip_prob: probability of a horizontal flip.
        photometric: apply :func:`photometric_distortion` (off in the DAFormer recipe).
        ignore_index: label value for padding and for pixels the crop check ignores.
        seed: seed of the transform's own generator; :meth:`reseed` replaces it.

    Shape:
        image (H, W, 3) uint8 RGB and label (H, W) uint8 or None in; (h, w, 3) and (h, w) out,
        where (h, w) is ``crop_size`` when cropping.
    """

    scale: tuple[int, int] | None = None
    keep_ratio: bool = True
    crop_size: tuple[int, int] | None = CROP_SIZE
    cat_max_ratio: float = CAT_MAX_RATIO
    crop_tries: int = CROP_TRIES
    flip_prob: float = 0.5
    photometric: bool = False
    ignore_index: int = IGNORE_INDEX
    seed: int | None = None
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart the generator from ``seed`` (called per worker by the loader)."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        image, label, _ = self.apply(image, label)
        return image, label

    def apply(
        self, image: np.ndarray, label: np.ndarray | None, masks: Sequence[np.ndarray] = ()
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """Like ``__call__``, also carrying extra (H, W) masks through the same geometry.

        Masks (e.g. the HRDA pseudo-label margin mask) are resized nearest, cropped, flipped and
        padded with 0 exactly like the label.
        """
        if label is not None and label.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"label shape {label.shape[:2]} does not match image {image.shape[:2]}"
            )
        extra = list(masks)
        if self.scale is not None:
            if self.keep_ratio:
                size = rescale_size(image.shape[1], image.shape[0], self.scale)
            else:
                size = (int(self.scale[0]), int(self.scale[1]))
            image, label = resize(image, label, size)
            extra = [resize_mask(m, size) for m in extra]
        if self.crop_size is not None:
            if label is not None:
                box = cat_max_ratio_crop_box(
                    label,
                    self.crop_size,
                    self.rng,
                    cat_max_ratio=self.cat_max_ratio,
                    tries=self.crop_tries,
                    ignore_index=self.ignore_index,
                )
            else:
                box = random_crop_box(image.shape[0], image.shape[1], self.crop_size, self.rng)
            image = crop(image, box)
            label = None if label is None else crop(label, box)
            extra = [crop(m, box) for m in extra]
        if self.flip_prob > 0 and self.rng.random() < self.flip_prob:
            image = hflip(image)
            label = None if label is None else hflip(label)
            extra = [hflip(m) for m in extra]
        if self.photometric:
            image = photometric_distortion(image, self.rng)
        if self.crop_size is not None:
            image = pad_to(image, self.crop_size, 0)
            label = None if label is None else pad_to(label, self.crop_size, self.ignore_index)
            extra = [pad_to(m, self.crop_size, 0) for m in extra]
        return image, label, extra


@dataclass
class EvalTransform:
    """Resize the image only (keep-ratio to ``scale``); labels stay at full resolution.

    All recipes score predictions against the full 2048x1024 Cityscapes labels, upsampling the
    logits, so the label must not be resized with the image.
    """

    scale: tuple[int, int] | None = RECIPE_SCALES["cityscapes"]

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.scale is not None:
            image, _ = resize(image, None, rescale_size(image.shape[1], image.shape[0], self.scale))
        return image, label


def recipe_train_transform(
    dataset: str, *, seed: int | None = None, **overrides: object
) -> TrainTransform:
    """The DAFormer training transform for ``dataset`` ("gta", "synthia" or "cityscapes")."""
    if dataset not in RECIPE_SCALES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(RECIPE_SCALES)}")
    return TrainTransform(scale=RECIPE_SCALES[dataset], seed=seed, **overrides)  # type: ignore[arg-type]


# --- pseudo-label margins ---------------------------------------------------------------------


def margin_mask(
    height: int, width: int, margins: Sequence[int] = DAFORMER_PSEUDO_MARGINS
) -> np.ndarray:
    """(H, W) bool mask, False within ``margins = (top, bottom, left, right)`` pixels of the border.

    Multiply it into the pseudo-label weight so that the ignored rows and columns never train.
    """
    top, bottom, left, right = (int(m) for m in margins)
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pseudo-label margins must be >= 0, got {tuple(margins)}")
    mask = np.ones((height, width), dtype=bool)
    # The explicit > 0 tests matter: a slice ``[-0:]`` would select everything.
    if top > 0:
        mask[:top] = False
    if bottom > 0:
        mask[-bottom:] = False
    if left > 0:
        mask[:, :left] = False
    if right > 0:
        mask[:, -right:] = False
    return mask


def pseudo_label_margins(
    height: int,
    width: int,
    margins: Sequence[int] = DAFORMER_PSEUDO_MARGINS,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`margin_mask` as a bool tensor on ``device``, for the pseudo-label weights.

    DAFormer style: call it with the crop's size. HRDA/MIC style: build target datasets with
    ``pseudo_margins=HRDA_PSEUDO_MARGINS`` and use each sample's ``valid_pseudo_mask`` instead.
    """
    return torch.from_numpy(margin_mask(height, width, margins)).to(device)


# --- normalisation (for models) -----------------------------------------------------------------


def _channel_tensor(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    value_scale: float = 1.0,
    bgr: bool = False,
) -> torch.Tensor:
    """Model input from RGB images in [0, 1], (..., 3, H, W): ``(x * value_scale - mean) / std``.

    ``bgr=True`` reverses the channels first. ImageNet (MiT, torchvision): the defaults.
    Caffe DeepLabV2: ``normalize(x, DEEPLAB_BGR_MEAN, (1, 1, 1), value_scale=255, bgr=True)``.
    """
    x = images * value_scale
    if bgr:
        x = x.flip(-3)
    return (x - _channel_tensor(mean, x)) / _channel_tensor(std, x)


def denormalize(
    inputs: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    value_scale: float = 1.0,
    bgr: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`normalize` with the same arguments: back to RGB in [0, 1]."""
    x = inputs * _channel_tensor(std, inputs) + _channel_tensor(mean, inputs)
    if bgr:
        x = x.flip(-3)
    return x / value_scale
