"""DAFormer: DACS self-training with three training strategies (Hoyer et al., CVPR 2022,
https://arxiv.org/abs/2111.14887; code lhoyer/DAFormer ``mmseg/models/uda/dacs.py``).

On top of :class:`gbw.uda.dacs.DACS` (EMA teacher, ClassMix, confidence-weighted pseudo-labels):

* **Rare-class sampling** of the source images: a data-loader setting
  (``data.source.rcs: true``, :mod:`gbw.data.sampling`), not part of the step;
* **Thing-class ImageNet feature distance** (this file): the source images' bottleneck
  features (last encoder stage) are pulled towards those of a frozen copy of the
  ImageNet-initialised encoder, only on feature cells where a thing class dominates;
* **Learning-rate warm-up**: ``optim.warmup_iters: 1500`` (the engine's schedule).

Recipe values (``configs/daformer/*.yaml``): EMA alpha 0.999, pseudo-labels ignored in the
top 15 / bottom 120 rows of each 512x512 target crop, ClassMix over the classes of the whole
source batch (DAFormer's ``get_class_masks``), feature distance weight 0.005 on classes
6, 7, 11-18 with ``scale_min_ratio`` 0.75. Where DAFormer's code differs from DACS's, the
defaults follow DAFormer (``mmseg/models/uda/dacs.py``, ``mmseg/models/losses/
cross_entropy_loss.py``): the first EMA update averages with weight 1/2, the jitter sees RGB
images, every cross-entropy is mmseg's mean over all pixels, and logits are upsampled with
``align_corners=False``. GBW weights the source and the mixed-target cross-entropy (terms
``src`` and ``mix``); the feature distance is not a class-wise loss.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gbw.uda.base import Batch, check_range
from gbw.uda.blocks import downscale_label_ratio
from gbw.uda.dacs import DACS, DACSConfig

#: Cityscapes trainIds of DAFormer's feature-distance classes: traffic light, traffic sign and
#: the thing classes person ... bicycle (``imnet_feature_dist_classes``).
FD_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@dataclass
class DAFormerConfig(DACSConfig):
    """DACS settings with DAFormer's values, plus the ImageNet feature distance."""

    ema_alpha: float = 0.999
    # _init_ema_weights at iteration 0, then _update_ema(local_iter): alpha 1/2 after step 0
    ema_first_update: str = "half"
    pseudo_margins: list[int] = field(default_factory=lambda: [15, 120, 0, 0])
    mix_per_image: bool = False  # DAFormer's code: classes drawn from the whole source batch
    color_jitter_strength: float = 0.2  # color_jitter_strength in configs/_base_/uda/dacs.py
    color_jitter_channels: str = "rgb"  # mmseg normalises RGB images (to_rgb=True)
    # mmseg 0.16 CrossEntropyLoss: reduction 'mean' over all pixels, ignored ones as zeros
    src_ce_reduction: str = "all_pixel_mean"
    mix_ce_reduction: str = "all_pixel_mean"
    align_corners: bool = False  # the decode heads' resize(..., align_corners=False)
    fd_lambda: float = 0.005  # weight of the feature distance (0 = off)
    fd_classes: list[int] = field(default_factory=lambda: list(FD_CLASSES))
    # a feature cell counts for a class only if the class covers this share of its pixels
    fd_scale_min_ratio: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.fd_lambda, "uda.fd_lambda")
        check_range(self.fd_scale_min_ratio, "uda.fd_scale_min_ratio", 0.0, 1.0)
        for c in self.fd_classes:
            check_range(c, "uda.fd_classes[]", 0, 254, integer=True)


class FrozenEncoder(nn.Module):
    """A frozen copy of a network's encoder and input normalisation (DAFormer's
    ``imnet_model``, of which only ``extract_feat`` is used): no gradients, always eval mode.

    Copied when the method is built, i.e. right after the ImageNet weights were loaded.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        core = getattr(model, "base", model)  # HRDA wraps the single-scale network
        if not (hasattr(core, "normalize") and hasattr(core, "backbone")):
            raise ValueError(
                f"the ImageNet feature distance needs a network with .normalize and .backbone "
                f"(DAFormer), got {type(core).__name__}; set uda.fd_lambda=0 to switch it off"
            )
        self.normalize = copy.deepcopy(core.normalize)
        self.backbone = copy.deepcopy(core.backbone)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        self.training = mode
        for m in self.children():
            m.eval()  # DropPath and dropout stay off, as DAFormer's imnet_model.eval()
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> list[Tensor]:
        return self.backbone(self.normalize(x))


class DAFormer(DACS):
    """DACS whose source loss adds the thing-class ImageNet feature distance (step 1b)."""

    Config = DAFormerConfig
    name = "daformer"

    def __init__(self, model, cfg: DAFormerConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        super().__init__(model, cfg, exp, weighting)
        self.imnet: FrozenEncoder | None = FrozenEncoder(model) if cfg.fd_lambda > 0 else None
        # constant on the device: comparing labels with it needs no host round trip
        self.register_buffer(
            "fd_class_ids", torch.tensor(list(cfg.fd_classes), dtype=torch.long), persistent=False
        )

    def feature_input(self, image: Tensor) -> Tensor:
        """The image whose encoder features the distance compares (HRDA: the context)."""
        return image

    def feature_distance(self, features: list[Tensor], image: Tensor, label: Tensor) -> Tensor:
        """Mean L2 distance between the student's and the frozen ImageNet encoder's last-stage
        features, over the feature cells where a feature-distance class covers at least
        ``fd_scale_min_ratio`` of the pixels (DAFormer ``calc_feat_dist``).

        With no such cell the reference's mean is NaN and gives no gradient; here it is 0
        (same gradient, no NaN in the logs, no host read to test for emptiness).
        """
        assert self.imnet is not None
        student = features[-1]
        imnet = self.imnet(self.feature_input(image))[-1]
        scale = label.shape[-1] // student.shape[-1]
        cells = downscale_label_ratio(label, scale, self.cfg.fd_scale_min_ratio, self.num_classes)
        # label cells and features may differ by a trailing row/column (odd sizes)
        h, w = min(cells.shape[-2], student.shape[-2]), min(cells.shape[-1], student.shape[-1])
        mask = torch.isin(cells[:, :h, :w], self.fd_class_ids).float()
        diff = student[..., :h, :w].float() - imnet[..., :h, :w].float()
        dist = torch.linalg.vector_norm(diff, dim=1)
        return (dist * mask).sum() / mask.sum().clamp_min(1.0)

    def source_loss(self, source: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        # a) supervised cross-entropy on the source crops
        loss, logs, out = self.segmentation_loss(
            "src",
            source["image"],
            source["label"],
            reduction=self.cfg.src_ce_reduction,
            features=self.imnet is not None,
        )
        # b) thing-class ImageNet feature distance
        return self.add_feature_distance(loss, logs, out, source)

    def add_feature_distance(
        self, loss: Tensor, logs: dict[str, Tensor], out: dict, source: Batch
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``loss + fd_lambda * feature distance`` of the source forward ``out`` (which holds
        ``"features"`` when the distance is on), and its log ``src.fd``. DAFormer
        back-propagates it after the cross-entropy with retain_graph; one backward of the sum
        gives the same gradient."""
        if self.imnet is None:
            return loss, logs
        fd = self.feature_distance(out["features"], source["image"], source["label"])
        logs["src.fd"] = fd.detach()
        return loss + self.cfg.fd_lambda * fd, logs
