"""AdaptSegNet/ADVENT fully-convolutional discriminator."""

from __future__ import annotations

import torch
from torch import nn

from gbw.models import FCDiscriminator


def test_discriminator_layers_match_the_references() -> None:
    d = FCDiscriminator(19)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (19, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1),
    ]
    assert all(
        c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs
    )
    acts = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)
    assert isinstance(d.net[-1], nn.Conv2d)  # no activation on the output logits


def test_discriminator_output_shape() -> None:
    d = FCDiscriminator(19)
    # 1024x512 Cityscapes logits at 1/8 (128x64) -> 4x2 patches; 65x65 (DeepLab 512 crop) -> 2x2.
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)
    assert d(torch.rand(1, 19, 65, 65)).shape == (1, 1, 2, 2)
    assert d(torch.rand(1, 19, 512, 1024)).shape == (1, 1, 16, 32)
