"""Source-only training: supervised cross-entropy on the labelled source domain.

The lower bound every UDA method is compared with; with GBW it is the paper's class
weighting alone, without adaptation. The recipe is the DACS code base with the target part
switched off (vikolss/DACS ``trainUDA.py``, ``"train_unlabeled": false``), so its defaults
are that code's: logits upsampled with ``align_corners=True`` (``interp``) and the
cross-entropy averaged over the labelled pixels (``utils/loss.py`` ``CrossEntropy2d``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gbw.uda.base import Batch, Step, UDAMethod, check_ce_reduction


@dataclass
class SourceOnlyConfig:
    """The source loss's reduction and upsampling (DACS ``trainUDA.py`` by default)."""

    # labelled_mean: CE averaged over labelled pixels (DACS CrossEntropy2d);
    # all_pixel_mean: over all pixels, ignored ones as zeros (mmseg, the GBW authors' code)
    ce_reduction: str = "labelled_mean"
    # logits upsampled to the label size with align_corners=True (DACS nn.Upsample);
    # false: mmseg's align_corners=False
    align_corners: bool = True

    def __post_init__(self) -> None:
        self.ce_reduction = check_ce_reduction(self.ce_reduction, "uda.ce_reduction")


class SourceOnly(UDAMethod):
    Config = SourceOnlyConfig
    name = "source_only"
    uses_target = False

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        opt = step.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        logits = self.resize_logits(self.model(source["image"])["main"], source["label"].shape[-2:])
        loss = self.weighting("src").cross_entropy(
            logits, source["label"], reduction=self.cfg.ce_reduction
        )
        step.backward(loss)
        opt.step()
        return {"src.ce": loss.detach()}
