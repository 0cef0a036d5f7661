"""The EDAPS network (Saha et al., ICCV 2023): a shared MiT encoder, the DAFormer head for
semantics and a Mask R-CNN style instance decoder built from torchvision's detection blocks.

Reference: susaha/edaps ``configs/_base_/models/maskrcnn_sepaspp_mitb5.py`` (mmdet 2.25),
``mmdet/models/detectors/mask_rcnn_panoptic.py``; the values are in shared/design/EDAPS.md.

* Encoder MiT-B5, semantic decoder the DAFormer head on the raw encoder features
  (:class:`gbw.models.daformer.DAFormer`, which this class extends).
* Instance decoder with its own neck: FPN 256 channels on the four encoder levels, P2-P6 (P6 by
  max-pool, ``LastLevelMaxPool``); RPN with one anchor size per level (32-512 px at strides
  4-64), ratios 0.5/1/2, IoU 0.7/0.3 with low-quality matches, 256 anchors at 50 % positives,
  2000 proposals per level before and 1000 after NMS 0.7 in training (1000/1000 at test);
  RoIAlign 7x7 (adaptive sampling, ``sampling_ratio=0``) on P2-P5, two FC 1024, 8 thing
  classes + background, class-specific regression with stds 0.1/0.1/0.2/0.2 (torchvision's
  weights 10/10/5/5), 512 RoIs at 25 % positives, IoU 0.5, ground-truth boxes added as
  proposals; mask head RoIAlign 14x14, 4 conv 256 + deconv -> 28x28, class-specific, BCE;
  test: score 0.05, NMS 0.5, 100 detections, masks pasted at the image size and thresholded
  at 0.5.
* Initialisation as mmdet's: FPN convolutions Xavier-uniform, the box head's FCs
  Xavier-uniform, its classifier N(0, 0.01) and regressor N(0, 0.001); the RPN and mask head
  are initialised by torchvision exactly as by mmdet (N(0, 0.01); Kaiming normal, fan-out).

The torchvision modules are called directly with an :class:`ImageList` of the already
normalised crops (torchvision's ``MaskRCNN`` wrapper would resize to 800 px and normalise
again). Detection targets come from :func:`gbw.data.panoptic.instance_targets` (classes are
the thing index 0..7; torchvision's labels are ``classes + 1``, 0 = background).

Differences from mmdet 2.25 (the reference's detector), each documented where it is set:

* Box regression loss: **L1** as the reference (``box_loss="l1"``, default);
  ``box_loss="smooth_l1"`` is torchvision's smooth-L1 with beta 1/9. Both normalised as both
  libraries do (RPN: by the sampled anchors; RoI: by the sampled RoIs).
* Low-quality RPN matches: torchvision gives every ground-truth box its best anchor whatever
  the IoU; mmdet only when that IoU is at least 0.3 (``min_pos_iou``).
* Mask targets: torchvision's RoIAlign of the binary mask (``aligned=False``, soft values);
  mmdet binarises the RoIAlign result at 0.5.
* Images without instances: torchvision treats them per image (all anchors and RoIs are
  negatives, box and mask losses 0); the reference skips the instance loss of the whole batch
  when any image has no instance (EDAPS.md "Reference quirk"): gbw's behaviour is the better
  one and is not switchable.
* Automatic mixed precision: box deltas and scores are decoded in float32 (bf16 coordinates
  would be off by several pixels at 2048 px).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.models.base import SegOutput, StateDictSource
from gbw.models.daformer import DAFormer

log = logging.getLogger(__name__)

BoxLoss = Literal["l1", "smooth_l1"]
LEVELS = ("0", "1", "2", "3")  # FPN outputs P2-P5 (+ "pool" = P6)


def _box_loss(pred: Tensor, target: Tensor, kind: BoxLoss) -> Tensor:
    """Summed box-regression loss (the caller normalises)."""
    if kind == "l1":
        return F.l1_loss(pred, target, reduction="sum")
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum")
    raise ValueError(f"box_loss must be 'l1' or 'smooth_l1', got {kind!r}")


class InstanceDecoder(nn.Module):
    """FPN + RPN + RoI box and mask heads (torchvision blocks) with EDAPS's values.

    Args:
        in_channels: encoder channels per level (MiT-B5: 64, 128, 320, 512).
        num_things: thing classes (8); the heads have ``num_things + 1`` outputs.
        fpn_channels, box_fc, mask_channels, mask_convs: widths (256, 1024, 256, 4).
        anchor_sizes: one anchor size per FPN level P2-P6 (32, 64, 128, 256, 512).
        box_loss: ``"l1"`` (reference) or ``"smooth_l1"`` (torchvision).
    Other arguments: the sampling and test values of the module docstring.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 128, 320, 512),
        num_things: int = 8,
        *,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_fg_iou: float = 0.7,
        rpn_bg_iou: float = 0.3,
        rpn_batch: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_pre_nms: tuple[int, int] = (2000, 1000),  # (training, testing), per level
        rpn_post_nms: tuple[int, int] = (1000, 1000),
        rpn_nms: float = 0.7,
        box_fc: int = 1024,
        roi_iou: float = 0.5,
        roi_batch: int = 512,
        roi_positive_fraction: float = 0.25,
        sampling_ratio: int = 0,
        score_threshold: float = 0.05,
        nms: float = 0.5,
        detections: int = 100,
        mask_channels: int = 256,
        mask_convs: int = 4,
        mask_threshold: float = 0.5,
        box_loss: BoxLoss = "l1",
    ) -> None:
        super().__init__()
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
        from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        if len(anchor_sizes) != len(in_channels) + 1:
            raise ValueError(
                f"anchor_sizes needs one size per FPN level P2-P6 ({len(in_channels) + 1}), "
                f"got {list(anchor_sizes)}"
            )
        _box_loss(torch.zeros(1), torch.zeros(1), box_loss)  # validates the name
        self.num_things = num_things
        self.box_loss = box_loss
        self.mask_threshold = mask_threshold
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        for m in self.fpn.modules():
            if isinstance(m, nn.Conv2d):  # mmdet FPN: Xavier uniform, bias 0
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        anchors = AnchorGenerator(
            tuple((int(s),) for s in anchor_sizes),
            (tuple(float(r) for r in aspect_ratios),) * len(anchor_sizes),
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(fpn_channels, len(aspect_ratios)),
            fg_iou_thresh=rpn_fg_iou,
            bg_iou_thresh=rpn_bg_iou,
            batch_size_per_image=rpn_batch,
            positive_fraction=rpn_positive_fraction,
            pre_nms_top_n={"training": rpn_pre_nms[0], "testing": rpn_pre_nms[1]},
            post_nms_top_n={"training": rpn_post_nms[0], "testing": rpn_post_nms[1]},
            nms_thresh=rpn_nms,
        )
        box_head = TwoMLPHead(fpn_channels * 7 * 7, box_fc)
        predictor = FastRCNNPredictor(box_fc, num_things + 1)
        for fc in (box_head.fc6, box_head.fc7):  # mmdet Shared2FCBBoxHead: Xavier uniform
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(predictor.cls_score.weight, std=0.01)
        nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
        nn.init.zeros_(predictor.cls_score.bias)
        nn.init.zeros_(predictor.bbox_pred.bias)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(list(LEVELS), 7, sampling_ratio),
            box_head,
            predictor,
            fg_iou_thresh=roi_iou,
            bg_iou_thresh=roi_iou,
            batch_size_per_image=roi_batch,
            positive_fraction=roi_positive_fraction,
            bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
            score_thresh=score_threshold,
            nms_thresh=nms,
            detections_per_img=detections,
            mask_roi_pool=MultiScaleRoIAlign(list(LEVELS), 14, sampling_ratio),
            mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * mask_convs, 1),
            mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_things + 1),
        )

    # --- shared ---------------------------------------------------------------------------

    def _pyramid(self, images: Tensor, features: Sequence[Tensor]) -> tuple[Any, dict[str, Tensor]]:
        from torchvision.models.detection.image_list import ImageList

        size = (int(images.shape[-2]), int(images.shape[-1]))
        image_list = ImageList(images, [size] * images.shape[0])
        return image_list, self.fpn(OrderedDict(zip(LEVELS, features)))

    def _proposals(
        self, image_list: Any, pyramid: dict[str, Tensor]
    ) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, list[int]]:
        """Anchors, decoded proposals (one list entry per image), raw objectness and deltas."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn = self.rpn
        levels = list(pyramid.values())
        objectness, deltas = rpn.head(levels)
        anchors = rpn.anchor_generator(image_list, levels)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        objectness, deltas = objectness.float(), deltas.float()  # decode in float32
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
        return anchors, boxes, objectness, deltas, per_level

    # --- training -------------------------------------------------------------------------

    def losses(
        self, images: Tensor, features: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """RPN, RoI box and mask losses of a batch of normalised crops and their targets
        (:func:`gbw.data.panoptic.instance_targets`, on the images' device).

        Returns ``rpn_cls``, ``rpn_box``, ``roi_cls``, ``roi_box``, ``mask`` (scalars) and the
        sampled RoIs' ``roi_logits`` (R, num_things + 1) and ``roi_labels`` (R,), 0 =
        background, for a class-weighted RoI classification loss.
        """
        from torchvision.models.detection.roi_heads import maskrcnn_loss

        if len(targets) != images.shape[0]:
            raise ValueError(f"{len(targets)} instance targets for {images.shape[0]} images")
        tv_targets = [
            {"boxes": t["boxes"].float(), "labels": t["classes"].long() + 1, "masks": t["masks"]}
            for t in targets
        ]
        image_list, pyramid = self._pyramid(images, features)
        anchors, proposals, objectness, deltas, _ = self._proposals(image_list, pyramid)
        rpn = self.rpn
        labels, matched = rpn.assign_targets_to_anchors(anchors, tv_targets)
        regression = rpn.box_coder.encode(matched, anchors)
        pos, neg = rpn.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        labels_all = torch.cat(labels)
        out = {
            "rpn_cls": F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled], labels_all[sampled]
            ),
            "rpn_box": _box_loss(deltas[pos], torch.cat(regression)[pos], self.box_loss)
            / max(sampled.numel(), 1),
        }

        heads = self.roi_heads
        rois, matched_idxs, roi_labels, roi_targets = heads.select_training_samples(
            proposals, tv_targets
        )
        box_features = heads.box_head(heads.box_roi_pool(pyramid, rois, image_list.image_sizes))
        logits, box_deltas = heads.box_predictor(box_features)
        logits, box_deltas = logits.float(), box_deltas.float()
        roi_labels_all = torch.cat(roi_labels)
        positive = torch.where(roi_labels_all > 0)[0]
        box_deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)
        out["roi_cls"] = F.cross_entropy(logits, roi_labels_all)
        out["roi_box"] = _box_loss(
            box_deltas[positive, roi_labels_all[positive]],
            torch.cat(roi_targets)[positive],
            self.box_loss,
        ) / max(roi_labels_all.numel(), 1)
        out["roi_logits"], out["roi_labels"] = logits, roi_labels_all

        # mask head on the positive RoIs only
        mask_rois, mask_idxs = [], []
        for r, lab, idx in zip(rois, roi_labels, matched_idxs):
            keep = torch.where(lab > 0)[0]
            mask_rois.append(r[keep])
            mask_idxs.append(idx[keep])
        mask_logits = heads.mask_predictor(
            heads.mask_head(heads.mask_roi_pool(pyramid, mask_rois, image_list.image_sizes))
        )
        out["mask"] = maskrcnn_loss(
            mask_logits.float(),
            mask_rois,
            [t["masks"] for t in tv_targets],
            [t["labels"] for t in tv_targets],
            mask_idxs,
        )
        return out

    # --- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, images: Tensor, features: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes`` (N, 4), ``classes`` (N,) thing index 0..7,
        ``scores`` (N,), ``masks`` (N, H, W) bool at the input size (threshold 0.5)."""
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        if self.training:
            raise RuntimeError("detect() runs the test-time settings: call .eval() first")
        image_list, pyramid = self._pyramid(images, features)
        _, proposals, *_ = self._proposals(image_list, pyramid)
        pyramid = {k: v.float() for k, v in pyramid.items()}
        with torch.autocast(images.device.type, enabled=False):
            results, _ = self.roi_heads(pyramid, proposals, image_list.image_sizes)
        size = image_list.image_sizes[0]
        out = []
        for r in results:
            masks = paste_masks_in_image(r["masks"], r["boxes"], size)[:, 0]
            out.append(
                {
                    "boxes": r["boxes"],
                    "classes": r["labels"] - 1,
                    "scores": r["scores"],
                    "masks": masks >= self.mask_threshold,
                }
            )
        return out


class EDAPS(DAFormer):
    """MiT encoder + DAFormer head + :class:`InstanceDecoder` (see the module docstring).

    ``forward(x)`` is the semantic branch only (the EMA teacher and the semantic evaluation
    use it); ``instances=`` (a list of :func:`~gbw.data.panoptic.instance_targets`) adds the
    instance losses as ``"instance"``; ``detect=True`` adds ``"detections"`` (eval mode).

    Args:
        num_classes, encoder, backend, fused_attention, embed_dim, channels, dilations,
            dropout: as :class:`~gbw.models.daformer.DAFormer`.
        num_things: thing classes of the instance decoder (8: trainIds 11-18).
        instance: keyword arguments of :class:`InstanceDecoder`.
    """

    head_prefixes = ("decode_head", "instance_head")  # EDAPS: neck and heads at lr x10

    def __init__(
        self,
        num_classes: int = 19,
        *,
        num_things: int = 8,
        instance: dict[str, Any] | None = None,
        **daformer: Any,
    ) -> None:
        super().__init__(num_classes, **daformer)
        self.instance_head = InstanceDecoder(
            self.backbone.out_channels, num_things, **(instance or {})
        )

    def forward(
        self,
        x: Tensor,
        return_features: bool = False,
        instances: Sequence[dict[str, Tensor]] | None = None,
        detect: bool = False,
    ) -> SegOutput:
        normalized = self.normalize(x)
        feats = self.backbone(normalized)
        out: Any = {"main": self.decode_head(feats)}
        if return_features:
            out["features"] = feats
        if instances is not None:
            out["instance"] = self.instance_head.losses(normalized, feats, instances)
        if detect:
            out["detections"] = self.instance_head.detect(normalized, feats)
        return out


#: a CPU-sized EDAPS on the tiny MiT (tests, the panoptic demo): 16-channel DAFormer head,
#: 32-channel FPN and heads, anchors 8-128 px for 64-128 px images
TINY_INSTANCE: dict[str, Any] = {
    "fpn_channels": 32,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "box_fc": 64,
    "mask_channels": 32,
    "mask_convs": 2,
    "rpn_batch": 64,
    "rpn_pre_nms": (200, 100),
    "rpn_post_nms": (100, 100),
    "roi_batch": 64,
}
TINY_DAFORMER: dict[str, Any] = {"encoder": "tiny", "embed_dim": 16, "channels": 16}


def build_edaps(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> EDAPS:
    """An EDAPS network whose MiT encoder starts from ``weights`` (a local SegFormer
    ImageNet-1k ``mit_b*.pth``, as the DAFormer models; None = random init)."""
    from gbw.models.mit import load_mit_weights

    model = EDAPS(num_classes, **kwargs)
    if weights is not None:
        log.info(load_mit_weights(model.backbone, weights).summary())
    return model


def build_edaps_tiny(num_classes: int = 19, **kwargs: Any) -> EDAPS:
    """:func:`build_edaps` with the CPU sizes (:data:`TINY_DAFORMER`, :data:`TINY_INSTANCE`);
    ``kwargs`` (and ``instance=`` entries) override them."""
    instance = {**TINY_INSTANCE, **kwargs.pop("instance", {})}
    return build_edaps(num_classes, **{**TINY_DAFORMER, **kwargs, "instance": instance})
