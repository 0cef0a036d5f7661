"""TinySeg: a small CPU-friendly segmentation network for the embedded benchmark and demo.

Not from a paper: a plain conv encoder-decoder sized so that every UDA recipe can run end to
end on two CPU cores. Encoder (BatchNorm + ReLU after every conv):

* stem  3x3 s2, 3 -> 24                     (1/2)
* stage1 3x3 s2 24 -> 32, 3x3 32 -> 32      (1/4)
* stage2 3x3 s2 32 -> 64, 3x3 64 -> 64      (1/8)
* stage3 3x3 d2 64 -> 96, 3x3 d2 96 -> 96   (1/8, dilated: DeepLab-style output stride 8)

Decoder: a light ASPP on stage3 (1x1, 3x3 dilation 2, 3x3 dilation 4, image pooling; 48
channels each, fused by a 1x1 to 64), upsampled to 1/4 and fused with stage1 (DeepLabV3+-style
skip, 1x1 to 48 + depthwise 3x3), then a 1x1 classifier. Logits at 1/4 (32x32 for 128x128).

Parameter count with 19 classes: 322,203 (``tests/models/test_tinyseg.py`` asserts it).
Input normalisation: ImageNet mean/std, like the MiT models.

``aux=True`` adds a 1x1 classifier on stage3 (1/8), returned as ``"aux"``: the stand-in for
DeepLabV2's conv4 classifier, so that the multi-level methods (AdaptSegNet, ADVENT) run on the
CPU. It is trained with the head learning rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gbw.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputNormalization,
    SegmentationModel,
    SegOutput,
)


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias: BN follows) + BatchNorm + ReLU."""
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinySeg(SegmentationModel):
    """Small conv segmentation net (322,203 parameters for 19 classes), logits at 1/4 resolution.

    Args:
        num_classes: output classes.
        widths: channels of (stem, stage1, stage2, stage3).
        aspp_channels: width of each ASPP branch.
        decoder_channels: width after the ASPP fusion.
        aux: add the auxiliary 1/8 classifier (``"aux"`` output) for multi-level methods.
    """

    output_stride = 4
    head_prefixes = ("decode_head", "aux_classifier")

    def __init__(
        self,
        num_classes: int = 19,
        *,
        widths: tuple[int, int, int, int] = (24, 32, 64, 96),
        aspp_channels: int = 48,
        decoder_channels: int = 64,
        aux: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = InputNormalization(IMAGENET_MEAN, IMAGENET_STD)
        w0, w1, w2, w3 = widths
        self.backbone = nn.ModuleDict(
            {
                "stem": conv_bn_relu(3, w0, stride=2),
                "stage1": nn.Sequential(conv_bn_relu(w0, w1, stride=2), conv_bn_relu(w1, w1)),
                "stage2": nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2)),
                "stage3": nn.Sequential(
                    conv_bn_relu(w2, w3, dilation=2), conv_bn_relu(w3, w3, dilation=2)
                ),
            }
        )
        self.decode_head = _TinyHead(w1, w3, num_classes, aspp_channels, decoder_channels)
        self.aux_classifier = nn.Conv2d(w3, num_classes, 1) if aux else None

    def forward(self, x: Tensor, return_features: bool = False) -> SegOutput:
        b = self.backbone
        x = b["stem"](self.normalize(x))
        f1 = b["stage1"](x)
        f2 = b["stage2"](f1)
        f3 = b["stage3"](f2)
        out: SegOutput = {"main": self.decode_head(f1, f3)}
        if self.aux_classifier is not None:
            out["aux"] = self.aux_classifier(f3)
        if return_features:
            out["features"] = [x, f1, f2, f3]
        return out


class _TinyHead(nn.Module):
    """Light ASPP (with image pooling) on the 1/8 features + a 1/4 skip connection."""

    def __init__(
        self,
        skip_channels: int,
        in_channels: int,
        num_classes: int,
        aspp_channels: int,
        decoder_channels: int,
    ) -> None:
        super().__init__()
        self.aspp = nn.ModuleList(
            [
                conv_bn_relu(in_channels, aspp_channels, kernel=1),
                conv_bn_relu(in_channels, aspp_channels, dilation=2),
                conv_bn_relu(in_channels, aspp_channels, dilation=4),
            ]
        )
        # No BatchNorm on the pooled branch: a 1x1 map has one value per image, so BN would
        # fail (or be meaningless) with batch size 1.
        self.pool = nn.Sequential(nn.Conv2d(in_channels, aspp_channels, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(4 * aspp_channels, decoder_channels, kernel=1)
        skip_out = decoder_channels * 3 // 4
        self.skip = conv_bn_relu(skip_channels + decoder_channels, skip_out, kernel=1)
        self.refine = conv_bn_relu(skip_out, skip_out, groups=skip_out)
        self.classifier = nn.Conv2d(skip_out, num_classes, 1)

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[2:])
        x = self.project(torch.cat([branch(x) for branch in self.aspp] + [pooled], dim=1))
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        x = self.refine(self.skip(torch.cat([x, skip], dim=1)))
        return self.classifier(x)
