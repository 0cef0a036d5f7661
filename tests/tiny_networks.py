"""The tiny networks the method tests train: one place for their config overrides.

Used by ``tests/engine/`` (step runners, engine configs) and ``tests/uda/`` (the DeepLabV2-era
and the transformer recipes). Importable as ``tiny_networks`` because ``tests/conftest.py``
puts this folder on ``sys.path`` (pytest's default "prepend" import mode).
"""

from __future__ import annotations

#: TinySeg at the smallest widths the tests use; ``%s`` = the conv4-like aux head (true/false)
TINYSEG_KWARGS = (
    "model.kwargs={widths: [8, 8, 16, 16], aspp_channels: 8, decoder_channels: 8, aux: %s}"
)
#: a 2-stage MiT (embed 16) under the DAFormer head (16 channels)
TINY_MIT = ["model.kwargs.encoder=tiny", "model.kwargs.embed_dim=16", "model.kwargs.channels=16"]
#: HRDA around the tiny MiT: 32x32 detail crops, a 16-wide scale-attention head
TINY_HRDA = [*TINY_MIT, "model.kwargs.detail_crop=[32,32]", "model.kwargs.attention_embed_dim=16"]

#: methods trained with the multi-level (aux) source loss / with discriminators / self-training
MULTI_LEVEL = frozenset({"advent", "minent", "adaptsegnet"})
ADVERSARIAL = frozenset({"advent", "adaptsegnet"})
SELF_TRAINING = frozenset({"dacs", "daformer", "hrda", "mic"})
#: an untrained tiny teacher is never 96.8 % sure: drop the bar so the pseudo-labels count
UNTRAINED_TEACHER = ["uda.pseudo_threshold=0.0"]


def tinyseg(aux: bool = False) -> list[str]:
    """``model.name=tinyseg`` at the tests' size, with or without the aux head."""
    return ["model.name=tinyseg", TINYSEG_KWARGS % ("true" if aux else "false")]


def tiny_network(method: str, *, base: str = "hrda") -> list[str]:
    """The overrides that give ``method`` its tiny network (and tiny discriminators / MIC
    blocks): TinySeg for the DeepLabV2-era methods, the tiny MiT for DAFormer, HRDA around it
    for HRDA and MIC (``base="daformer"``: MIC on the single-resolution DAFormer)."""
    if method == "daformer":
        return ["model.name=daformer_mit", *TINY_MIT]
    if method == "mic" and base == "daformer":
        return ["model.name=daformer_mit", *TINY_MIT, "uda.base=daformer", "uda.mask_block_size=16"]
    if method == "hrda":
        return ["model.name=hrda_daformer_mit", *TINY_HRDA]
    if method == "mic":
        return ["model.name=hrda_daformer_mit", *TINY_HRDA, "uda.mask_block_size=16"]
    overrides = tinyseg(aux=method in MULTI_LEVEL)
    if method in ADVERSARIAL:
        overrides.append("uda.disc_ndf=8")
    return overrides


def tiny_method(method: str, *, base: str = "hrda") -> list[str]:
    """``method=...``, its tiny network and, for self-training, a teacher whose pseudo-labels
    all count."""
    teacher = UNTRAINED_TEACHER if method in SELF_TRAINING else []
    return [f"method={method}", *tiny_network(method, base=base), *teacher]
