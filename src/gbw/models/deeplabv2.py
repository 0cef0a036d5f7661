"""DeepLabV2 with a dilated ResNet-101 (Chen et al., TPAMI 2017), as used by AdaptSegNet, ADVENT
and DACS, with loaders for the reference initialisations.

Backbone: torchvision's ResNet-101 with ``replace_stride_with_dilation=[False, True, True]``
(output stride 8). Classifier: DeepLabV2's ASPP-L used directly as the classifier, i.e. a
*sum* of dilated 3x3 convolutions to ``num_classes`` channels. Which dilations are summed
differs between the reference code bases (read in their repositories):

* ``aspp="advent"``: 6 + 12 + 18 + 24, all four branches (valeoai/ADVENT
  ``advent/model/deeplabv2.py`` ``ClassifierModule``; also the mmseg port in lhoyer/DAFormer
  ``mmseg/models/decode_heads/dlv2_head.py``).
* ``aspp="adaptsegnet"``: 6 + 12 only (wasidennis/AdaptSegNet ``model/deeplab_multi.py`` and
  vikolss/DACS ``model/deeplabv2.py`` ``Classifier_Module``: the ``return`` sits inside the
  loop, so the loop returns after adding the second branch; branches 18 and 24 exist there
  as parameters but never receive a gradient). This model does not build the dead branches.

Optional auxiliary classifier on conv4 (layer3, 1024 channels) with the same ASPP for the
multi-level variants (AdaptSegNet ``layer5``, ADVENT ``layer5`` when ``MULTI_LEVEL``).

Layout differences from the references' caffe-converted ResNet (``layout=``):

* ``"torchvision"`` (default): stride 2 of layer2 in the 3x3 conv, max-pool
  ``ceil_mode=False``, dilation of the first block of layer3/layer4 = 1/2 (torchvision's
  rule). Right for torchvision ImageNet weights. A 512x512 input gives 64x64 logits.
* ``"caffe"``: what the references build (``Bottleneck`` with ``stride`` in ``conv1``, the
  1x1; ``MaxPool2d(..., ceil_mode=True)``; dilation 2 in *every* layer3 block, 4 in every
  layer4 block). Use it with the DeepLab COCO/ImageNet inits to reproduce the references
  exactly. A 512x512 input gives 65x65 logits. Parameter shapes are identical, so every file
  loads into either layout.

BatchNorm (``bn=``): ``"frozen"`` (default) uses :class:`torchvision.ops.FrozenBatchNorm2d`:
eval-mode statistics and no trainable affine parameters, whatever ``.train()`` says. Note that
the PyTorch references only set ``requires_grad=False`` on the BN affine parameters and then
call ``model.train()``, so their BN layers normalise with *batch* statistics (batch 1-2) and
update the running statistics; ``bn="affine_frozen"`` reproduces that.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.models import resnet101
from torchvision.ops import FrozenBatchNorm2d

from gbw.models.base import (
    CAFFE_BGR_MEAN,
    InputNormalization,
    LoadReport,
    SegmentationModel,
    SegOutput,
    StateDictSource,
    check_shape,
    load_state_dict_file,
)

log = logging.getLogger(__name__)

ASPP_DILATIONS: dict[str, tuple[int, ...]] = {
    "advent": (6, 12, 18, 24),
    "adaptsegnet": (6, 12),
}


class ASPPClassifier(nn.Module):
    """DeepLabV2 classifier: sum of dilated 3x3 convs ``in_channels -> num_classes``.

    Weights ~ N(0, 0.01) as in the references; biases keep PyTorch's default init (the
    references do not touch them).
    """

    def __init__(
        self, in_channels: int, num_classes: int, dilations: tuple[int, ...] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in self.dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(SegmentationModel):
    """DeepLabV2 ResNet-101, output stride 8, for AdaptSegNet / ADVENT / MinEnt / DACS.

    Args:
        num_classes: output classes (19 for Cityscapes).
        aspp: ``"advent"`` (sum of dilations 6, 12, 18, 24) or ``"adaptsegnet"`` (6 + 12, what
            AdaptSegNet's and DACS's classifier computes); see the module docstring.
        aux: add the conv4 (layer3) classifier, returned as ``"aux"`` (multi-level training).
        layout: ``"torchvision"`` or ``"caffe"`` (stride/dilation/max-pool layout of the
            references' caffe-converted ResNet; see the module docstring).
        bn: ``"frozen"`` (eval statistics, no affine gradients) or ``"affine_frozen"`` (the
            references' behaviour: batch statistics in train mode, affine not trained).

    Input: RGB in [0, 1]; normalised inside to 0..255 BGR minus the caffe mean
    (104.008, 116.669, 122.679), no std, as AdaptSegNet/ADVENT/DACS feed their networks.
    """

    output_stride = 8
    head_prefixes = ("classifier", "aux_classifier")

    def __init__(
        self,
        num_classes: int = 19,
        *,
        aspp: Literal["advent", "adaptsegnet"] = "advent",
        aux: bool = False,
        layout: Literal["torchvision", "caffe"] = "torchvision",
        bn: Literal["frozen", "affine_frozen"] = "frozen",
    ) -> None:
        super().__init__()
        if aspp not in ASPP_DILATIONS:
            raise ValueError(f"aspp must be one of {sorted(ASPP_DILATIONS)}, got {aspp!r}")
        if layout not in ("torchvision", "caffe"):
            raise ValueError(f"layout must be 'torchvision' or 'caffe', got {layout!r}")
        if bn not in ("frozen", "affine_frozen"):
            raise ValueError(f"bn must be 'frozen' or 'affine_frozen', got {bn!r}")
        self.num_classes = num_classes
        self.aspp, self.layout, self.bn = aspp, layout, bn
        self.normalize = InputNormalization(CAFFE_BGR_MEAN, scale=255.0, bgr=True)

        norm_layer = FrozenBatchNorm2d if bn == "frozen" else nn.BatchNorm2d
        net = resnet101(
            weights=None, replace_stride_with_dilation=[False, True, True], norm_layer=norm_layer
        )
        # Only the convolutional trunk is used; the ImageNet pooling/fc would be dead weights.
        del net.fc, net.avgpool
        if layout == "caffe":
            _to_caffe_layout(net)
        if bn == "affine_frozen":
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
        self.backbone = net

        dilations = ASPP_DILATIONS[aspp]
        self.classifier = ASPPClassifier(2048, num_classes, dilations)
        self.aux_classifier = ASPPClassifier(1024, num_classes, dilations) if aux else None

    def forward(self, x: Tensor, return_features: bool = False) -> SegOutput:
        b = self.backbone
        x = self.normalize(x)
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c1 = b.layer1(x)
        c2 = b.layer2(c1)
        c3 = b.layer3(c2)
        c4 = b.layer4(c3)
        out: SegOutput = {"main": self.classifier(c4)}
        if self.aux_classifier is not None:
            out["aux"] = self.aux_classifier(c3)
        if return_features:
            out["features"] = [c1, c2, c3, c4]
        return out


def _to_caffe_layout(net: nn.Module) -> None:
    """Moves torchvision's ResNet to the references' caffe layout (same parameter shapes)."""
    net.maxpool.ceil_mode = True
    first = net.layer2[0]
    first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for block in layer:
            block.conv2.dilation = (dilation, dilation)
            block.conv2.padding = (dilation, dilation)


_CLASSIFIER_KEY = re.compile(r"^layer([56])\.conv2d_list\.(\d+)\.(weight|bias)$")


def load_deeplab_weights(
    model: DeepLabV2, source: StateDictSource, *, load_classifier: bool = False, strict: bool = True
) -> LoadReport:
    """Loads ResNet-101 / DeepLab weights from a local file into ``model``.

    Understood formats (detected from the key names):

    * torchvision ImageNet ``resnet101-*.pth``: ``conv1.weight``, ``bn1.running_mean``,
      ``layer1.0.conv1.weight``, ``layer1.0.downsample.1.weight``, ..., ``fc.*`` (skipped).
    * the DeepLab inits of the references, converted from caffe with a ``Scale.`` prefix
      (isht7's ``MS_Deeplab`` wrapper): AdaptSegNet's ``DeepLab_resnet_pretrained_init-
      f81d91e8.pth`` (COCO) and ADVENT's ``DeepLab_resnet_pretrained_imagenet.pth``; both
      repos strip the first name component and skip ``layer5`` (train_gta2cityscapes_multi.py,
      advent/scripts/train.py). Keys: ``Scale.conv1.weight``, ``Scale.layer1.0.conv1.weight``,
      ``Scale.bn1.running_mean``, ``Scale.layer5.conv2d_list.0.weight``, ...
    * the same names without prefix: DACS's ``resnet101COCO-41f33a49.pth`` (DACS copies
      every key whose name and shape match its model, trainUDA.py).

    The backbone names are the same in all three, so they map to ``backbone.<name>``.
    Classifier keys ``layer5/6.conv2d_list.<i>.*`` map to ``classifier`` (2048 input
    channels) or ``aux_classifier`` (1024) only with ``load_classifier=True``: the inits carry
    a VOC/COCO (21-class) classifier that the references do not load for 19 classes. Branch
    ``i`` has dilation ``(6, 12, 18, 24)[i]`` in every reference; branches that this model's
    ``aspp`` does not build are skipped.

    Raises ``FileNotFoundError``/``ValueError`` for a missing or unreadable file,
    ``ValueError`` naming the key and both shapes for any shape mismatch, and (``strict``)
    ``ValueError`` when a backbone tensor is missing or a file key maps to nothing.
    """
    sd, where = load_state_dict_file(source)
    if sd and all(k.startswith("Scale.") for k in sd):
        sd = {k[len("Scale.") :]: v for k, v in sd.items()}
    own = model.state_dict()
    report = LoadReport(where)
    new: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            report.skipped[key] = "BatchNorm counter, unused by frozen BN"
            continue
        if key.startswith("fc."):
            report.skipped[key] = "ImageNet classification layer"
            continue
        m = _CLASSIFIER_KEY.match(key)
        if m is None:
            target = "backbone." + key
            if target not in own:
                report.unexpected.append(key)
                continue
        else:
            if not load_classifier:
                report.skipped[key] = "pretrained classifier (load_classifier=False)"
                continue
            weight = sd.get(f"layer{m[1]}.conv2d_list.{m[2]}.weight")
            in_ch = weight.shape[1] if weight is not None and weight.ndim == 4 else -1
            head = {2048: "classifier", 1024: "aux_classifier"}.get(in_ch)
            if head is None:
                report.unexpected.append(key)
                continue
            if getattr(model, head) is None:
                report.skipped[key] = f"model has no {head}"
                continue
            if int(m[2]) >= len(model.classifier.dilations):
                report.skipped[key] = f"ASPP branch unused by aspp={model.aspp!r}"
                continue
            target = f"{head}.branches.{m[2]}.{m[3]}"
        check_shape(where, key, value, target, own[target])
        new[target] = value
        report.loaded.append(key)

    # BatchNorm step counters are bookkeeping, not weights (absent from caffe conversions).
    required = [
        k for k in own if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    ]
    if load_classifier:
        required += [k for k in own if k.split(".", 1)[0] in model.head_prefixes]
    report.missing = [k for k in required if k not in new]
    if strict:
        report.raise_if_incomplete()
    with torch.no_grad():
        for target, value in new.items():
            own[target].copy_(value)
    return report


def build_deeplabv2(
    num_classes: int = 19, weights: StateDictSource | None = None, **kwargs: Any
) -> DeepLabV2:
    """A DeepLabV2 ResNet-101 starting from ``weights`` (a local DeepLab or torchvision
    ResNet-101 file; None = random init); ``kwargs`` go to :class:`DeepLabV2`."""
    model = DeepLabV2(num_classes, **kwargs)
    if weights is not None:
        log.info(load_deeplab_weights(model, weights).summary())
    return model
