"""Fully-convolutional domain discriminator of AdaptSegNet (Tsai et al., CVPR 2018) and ADVENT
(Vu et al., CVPR 2019).

Five 4x4 convolutions with stride 2 and padding 1, channels ``in_channels -> 64 -> 128 -> 256
-> 512 -> 1``, LeakyReLU(0.2) after the first four (valeoai/ADVENT
``advent/model/discriminator.py`` ``get_fc_discriminator``; AdaptSegNet's
``model/discriminator.py`` ``FCDiscriminator`` is the same stack). AdaptSegNet feeds it the
softmax of the segmentation output, ADVENT the weighted self-information (entropy) maps; both
have ``num_classes`` channels. The output is one logit per ~32x32 input patch.
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn


class FCDiscriminator(nn.Module):
    """Patch discriminator: ``(B, in_channels, H, W) -> (B, 1, ~H/32, ~W/32)`` logits.

    Args:
        in_channels: channels of the maps it judges (``num_classes`` for softmax or
            entropy maps).
        ndf: width of the first layer; doubles at each of the next three (64 in both papers).
    """

    def __init__(self, in_channels: int = 19, ndf: int = 64) -> None:
        super().__init__()
        widths = (in_channels, ndf, ndf * 2, ndf * 4, ndf * 8)
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(widths):
            layers += [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
