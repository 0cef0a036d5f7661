"""EDAPS: domain-adaptive panoptic segmentation (Saha et al., ICCV 2023,
https://arxiv.org/abs/2304.14291; code susaha/edaps ``mmdet/models/uda/dacs.py``).

DAFormer's self-training (:class:`gbw.uda.daformer.DAFormer`) with a panoptic network
(:class:`gbw.models.edaps.EDAPS`): only the encoder is shared, and the adaptation acts on the
semantic branch alone.

* **Source**: semantic cross-entropy + RPN (objectness + box) + RoI (classification + box) +
  mask losses, all of weight 1, + the thing-class ImageNet feature distance (0.005), in one
  backward. The detection targets are the source batch's ``"instances"``
  (``data.source.panoptic: true``; :func:`gbw.data.panoptic.instance_targets`).
* **Target**: the EMA teacher runs the semantic branch only on the un-augmented target
  crop; ClassMix of half the classes of the source batch; the semantic cross-entropy on the
  mixed images with the confidence weight. No instance pseudo-labels and no detection loss on
  the target: exactly DACS's steps 2-4 (inherited unchanged).

GBW weights the semantic terms ``src`` and ``mix``, as in every semantic recipe
(``self.weighting(term)``). ``uda.weight_instance_cls: true`` is an extension with no
precedent in the paper or the authors' code (off by default, report it separately): GBW on the
RoI classification cross-entropy (term ``roi_cls``), where the "pixels" are the sampled RoIs
and the classes are the 8 thing classes + background (its weights are logged as
``roi_cls/weight/0..8``, 0 = background, 1..8 = person ... bicycle).

The detector differs from the reference's mmdet in a few documented points (L1 box loss kept
as the reference, torchvision's per-image handling of images without instances instead of
the reference skipping the whole batch's instance loss, ...): :mod:`gbw.models.edaps`.
A step reads sizes on the host (the detector's proposals and sampled RoIs have data-dependent
shapes), so it cannot be captured as one CUDA graph (``train.cuda_graph`` is off for it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gbw.uda.base import Batch, Step, check_range
from gbw.uda.daformer import DAFormer, DAFormerConfig

#: the instance loss terms of the source step, in log order
INSTANCE_TERMS = ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "mask")


@dataclass
class EDAPSConfig(DAFormerConfig):
    """DAFormer's settings (EDAPS uses them unchanged) plus the instance terms."""

    instance_loss_weight: float = 1.0  # weight of every instance loss (the reference: 1)
    # extension, off in the reference recipe: GBW on the RoI classification CE (9 classes)
    weight_instance_cls: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.instance_loss_weight, "uda.instance_loss_weight")


class EDAPS(DAFormer):
    """DAFormer whose source loss adds the instance decoder's losses (see module docstring)."""

    Config = EDAPSConfig
    name = "edaps"
    # the semantic passes (mixed images, teacher) leave the instance decoder unused
    ddp_find_unused_parameters = True
    cuda_graph_capturable = False

    def __init__(self, model, cfg: EDAPSConfig, exp, weighting) -> None:  # type: ignore[no-untyped-def]
        core = getattr(model, "instance_head", None)
        if core is None:
            raise ValueError(
                f"method edaps needs a panoptic network with an instance decoder "
                f"(model.name: edaps_mitb5, edaps_mit or edaps_tiny), got {type(model).__name__}"
            )
        super().__init__(model, cfg, exp, weighting)
        self.num_things = core.num_things

    def source_loss(self, source: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        image, label = source["image"], source["label"]
        targets = source.get("instances")
        if targets is None:
            raise ValueError(
                "method edaps trains its instance decoder on the source's instances: set "
                "data.source.panoptic: true (panoptic maps from `gbw data prepare --panoptic`)"
            )
        # a) semantic cross-entropy, the detector's losses in the same forward pass
        out = self.model(image, return_features=self.imnet is not None, instances=targets)
        logits = self.resize_logits(out["main"], label.shape[-2:])
        loss = self.weighting("src").cross_entropy(
            logits, label, reduction=self.cfg.src_ce_reduction
        )
        logs = {"src.ce": loss.detach()}
        # b) thing-class ImageNet feature distance (DAFormer)
        loss, logs = self.add_feature_distance(loss, logs, out, source)
        # c) RPN, RoI classification and box, mask
        inst = out["instance"]
        terms = {k: inst[k] for k in INSTANCE_TERMS}
        if self.cfg.weight_instance_cls:
            weighting = self.weighting("roi_cls", num_classes=self.num_things + 1)
            # the weights in the numerator only, as on the semantic terms (every RoI is labelled,
            # so with v = 1 this is the reference's mean over the sampled RoIs)
            terms["roi_cls"] = weighting.cross_entropy(
                inst["roi_logits"], inst["roi_labels"], reduction="all_pixel_mean"
            )
        for k, v in terms.items():
            loss = loss + self.cfg.instance_loss_weight * v
            logs[f"src.{k}"] = v.detach()
        return loss, logs


class EDAPSSourceOnly(EDAPS):
    """EDAPS's network on the labelled source only: the semantic cross-entropy, the instance
    losses and the feature distance of :meth:`EDAPS.source_loss`, no target, no teacher
    update. The lower bound of the panoptic demo (EDAPS's "source-only" rows)."""

    name = "edaps_source_only"
    uses_target = False

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        opt = step.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss, logs = self.source_loss(source)
        step.backward(loss)
        opt.step()
        return logs

    def after_optimizer_step(self, step: Step) -> None:
        """No teacher to update."""
