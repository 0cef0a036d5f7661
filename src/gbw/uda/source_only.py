"""Source-only training: supervised cross-entropy on the labelled source domain.

The lower bound every UDA method is compared with; with GBW it is the paper's class
weighting alone, without adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gbw.uda.base import Batch, Step, UDAMethod, resize_to


@dataclass
class SourceOnlyConfig:
    """No settings beyond the experiment's model, data, weighting and optimiser."""


class SourceOnly(UDAMethod):
    Config = SourceOnlyConfig
    name = "source_only"
    uses_target = False

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        opt = step.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        logits = resize_to(self.model(source["image"])["main"], source["label"].shape[-2:])
        loss = self.weighting("src").cross_entropy(logits, source["label"])
        step.backward(loss)
        opt.step()
        return {"src.ce": loss.detach()}
