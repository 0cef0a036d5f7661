"""ADVENT and MinEnt: entropy-based adaptation (Vu et al., CVPR 2019,
https://arxiv.org/abs/1811.12833, github.com/valeoai/ADVENT).

Both train on labelled source images as AdaptSegNet does (multi-level DeepLabV2: main output
plus 0.1 x the conv4 auxiliary output) and push target predictions towards low entropy:

* **MinEnt** minimises the normalised entropy of the target predictions directly:
  ``0.001 * H(main) + 0.0002 * H(aux)``, ``H = mean_i sum_c -p_ic log p_ic / log C``
  (``train_minent``, ``LAMBDA_ENT_MAIN``/``LAMBDA_ENT_AUX``; ADVENT applies the aux term
  whenever the model has the aux head).
* **AdvEnt** aligns the *weighted self-information maps* ``I_c = -p_c log p_c / log C`` (one
  channel per class, ADVENT's ``prob_2_entropy``) of both domains with AdaptSegNet's
  discriminators: ``0.001 * BCE(D_main(I_main^trg), source) + 0.0002 * BCE(D_aux(...))``,
  discriminators trained on detached maps of both domains (``train_advent``). Same loop as
  :class:`gbw.uda.adaptsegnet.AdaptSegNet`, of which it only changes the discriminator input.

Class weighting (paper Sec. 3.1: for the target domain "some regimes also minimize the entropy
of the predictions", ``l_c = -y^c log y^c``). Terms: ``src``/``src_aux`` (source CE, from the
cross-entropy signal) and ``trg_ent``/``trg_ent_aux`` (target entropy, from the entropy signal
of :func:`gbw.weighting.entropy_grad_sqnorms`).

* MinEnt: ``strategy.entropy(logits)`` is ``sum_c v_c l_c``, exactly Eq. 2.
* AdvEnt: the entropy enters through the discriminator, not as a loss of its own. The maps'
  channel ``c`` *is* ``l_c`` per pixel, so the class weights multiply the channels before the
  discriminator: ``D(v * I)``. The generator's gradient through channel ``c`` is then scaled by
  ``v_c``, the direct analogue of weighting ``l_c`` in Eq. 2. ``v`` is computed from the
  target logits of that level (the entropy signal, at full input resolution) and the *same*
  ``v`` multiplies the source maps the discriminator is trained on in that iteration, so that
  the weights never tell the domains apart. With ``weighting.name=none`` (v = 1) this is
  ADVENT exactly. GBW's weights at lambda = 1 stay close to 1 (METHOD.md section 2), so the
  discriminator's input changes only slightly from step to step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from gbw.uda.adaptsegnet import AdaptSegNet, AdaptSegNetConfig, MultiLevelConfig, MultiLevelMethod
from gbw.uda.base import Batch, Step, check_range

# Loss-term names of the target entropy, by output level (one weighting strategy each).
ENTROPY_TERMS = {"main": "trg_ent", "aux": "trg_ent_aux"}


def self_information(logits: Tensor) -> Tensor:
    """ADVENT's weighted self-information maps ``-p_c log p_c / log C`` (B, C, H, W), float32.

    Equal to ``prob_2_entropy`` (``-p log2 p / log2 C``); computed from ``log_softmax``, so a
    class with ``p = 0`` contributes an exact 0 instead of going through ``log(p + 1e-30)``.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp) / math.log(logits.shape[1])


@dataclass
class AdvEntConfig(AdaptSegNetConfig):
    """ADVENT's ``advent.yml`` + ``config.py`` (same adversarial weights as AdaptSegNet)."""


@dataclass
class MinEntConfig(MultiLevelConfig):
    """ADVENT's ``minent.yml`` + ``config.py``."""

    lambda_ent_main: float = 0.001  # LAMBDA_ENT_MAIN
    lambda_ent_aux: float = 0.0002  # LAMBDA_ENT_AUX

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.lambda_ent_main, "uda.lambda_ent_main")
        check_range(self.lambda_ent_aux, "uda.lambda_ent_aux")


class AdvEnt(AdaptSegNet):
    """Adversarial entropy minimisation: AdaptSegNet's discriminators on self-information maps,
    their channels weighted by the target entropy's class weights."""

    Config = AdvEntConfig
    name = "advent"

    def map_weights(self, level: str, target_logits: Tensor) -> Tensor:
        """Class weights ``v`` (C,) of this level's entropy term, from the target logits."""
        # the maps are ADVENT's normalised self-information (/ log C): scale the signal alike
        return self.weighting(ENTROPY_TERMS[level]).entropy_weights(
            target_logits.detach(), normalize=True
        )

    def discriminator_input(self, logits: Tensor, weights: Tensor | None) -> Tensor:
        maps = self_information(logits)
        return maps if weights is None else maps * weights.view(1, -1, 1, 1).to(maps.dtype)


class MinEnt(MultiLevelMethod):
    """Direct entropy minimisation on the target domain, class-weighted per Eq. 2."""

    Config = MinEntConfig
    name = "minent"

    def training_step(self, source: Batch, target: Batch | None, step: Step) -> dict[str, Tensor]:
        assert target is not None
        opt = step.optimizers["model"]
        opt.zero_grad(set_to_none=True)

        # 1. segmentation loss on the labelled source images
        _, logs = self.source_step(source, step)

        # 2. weighted, normalised entropy of the target predictions (upsampled, as ADVENT)
        trg_logits = self.outputs(target["image"])
        ent = {
            level: self.weighting(ENTROPY_TERMS[level]).entropy(trg_logits[level], normalize=True)
            for level in self.levels
        }
        lambda_ent = {"main": self.cfg.lambda_ent_main, "aux": self.cfg.lambda_ent_aux}
        step.backward(sum(lambda_ent[level] * ent[level] for level in self.levels))
        prefix = {"main": "trg", "aux": "trg_aux"}
        logs |= {f"{prefix[level]}.ent": loss.detach() for level, loss in ent.items()}

        # 3. one step of the segmentation network
        opt.step()
        return logs
