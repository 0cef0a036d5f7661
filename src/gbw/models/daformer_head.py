"""DAFormer decoder: multi-level context-aware feature fusion (Hoyer et al., CVPR 2022).

Configuration read from lhoyer/DAFormer (``configs/_base_/models/daformer_sepaspp_mitb5.py``
on top of ``daformer_conv1_mitb5.py``; modules in ``mmseg/models/decode_heads/
daformer_head.py``, ``sep_aspp_head.py``, ``aspp_head.py``, ``segformer_head.py``,
``decode_head.py``):

* embedding: per encoder level, a linear layer to 256 channels (``embed_cfg`` /
  ``embed_neck_cfg``: ``type='mlp'``, no norm, no activation; mmseg's ``MLP`` is an
  ``nn.Linear`` on flattened tokens, here the equivalent 1x1 convolution with bias);
* each embedding bilinearly resized to the 1/4 level (``align_corners=False``), concatenated
  (4 x 256 = 1024 channels);
* fusion (``fusion_cfg``: ``type='aspp'``, ``sep=True``, ``dilations=(1, 6, 12, 18)``,
  ``pool=False``, BN + ReLU): dilation 1 is a 1x1 ConvModule (conv, BN, ReLU), each dilation
  > 1 a depthwise-separable ConvModule (depthwise 3x3 dilated conv, BN, ReLU; pointwise 1x1
  conv, BN, ReLU), the four 256-channel outputs concatenated and fused by a 3x3 ConvModule
  (``bottleneck``) to 256 channels. mmcv ConvModules followed by a norm have no conv bias;
* ``Dropout2d(0.1)`` then a 1x1 classifier with bias (``conv_seg``, init N(0, 0.01)).

Parameter count for in_channels (64, 128, 320, 512) and 19 classes: 3,712,275
(``tests/models/test_daformer.py`` checks it against this layer list).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(
    c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1
) -> nn.Sequential:
    """mmcv ``ConvModule`` with BN + ReLU: conv without bias (BN follows), BN, ReLU."""
    conv = nn.Conv2d(
        c_in,
        c_out,
        kernel,
        padding=dilation * (kernel // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
    )
    # mmcv ConvModule.init_weights: Kaiming normal (fan_out, ReLU) for the conv, BN = (1, 0).
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SepASPP(nn.Module):
    """Depthwise-separable ASPP without image pooling, fused by a 3x3 conv (``ASPPWrapper``)."""

    def __init__(
        self, in_channels: int, channels: int, dilations: Sequence[int] = (1, 6, 12, 18)
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = []
        for d in dilations:
            if d == 1:
                branches.append(_conv_bn_relu(in_channels, channels, 1))
            else:
                branches.append(
                    nn.Sequential(
                        _conv_bn_relu(in_channels, in_channels, 3, dilation=d, groups=in_channels),
                        _conv_bn_relu(in_channels, channels, 1),
                    )
                )
        self.branches = nn.ModuleList(branches)
        self.bottleneck = _conv_bn_relu(len(branches) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))


class DAFormerHead(nn.Module):
    """DAFormer decode head (``daformer_sepaspp``): features at strides 4-32 -> logits at 1/4.

    Args:
        in_channels: channels of the encoder levels (MiT-B5: 64, 128, 320, 512).
        num_classes: output classes.
        embed_dim: per-level embedding width (256).
        channels: fusion width (256).
        dilations: ASPP dilations of the fusion (1, 6, 12, 18).
        dropout: ``Dropout2d`` rate before the classifier (0.1).
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (64, 128, 320, 512),
        num_classes: int = 19,
        *,
        embed_dim: int = 256,
        channels: int = 256,
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = SepASPP(len(in_channels) * embed_dim, channels, dilations)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        size = features[0].shape[2:]
        embedded = []
        for f, embed in zip(features, self.embed):
            e = embed(f)
            if e.shape[2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
            embedded.append(e)
        x = self.fuse(torch.cat(embedded, dim=1))
        return self.conv_seg(self.dropout(x))
