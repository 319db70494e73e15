"""ResNets from torchvision's building blocks, trained from scratch."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, ResNet

from experiments.data import DataSpec
from experiments.models.base import InputsModel, require


def resnet34_cifar(spec: DataSpec) -> InputsModel:
    """ResNet-34 for 32x32 images: BasicBlock stages [3, 4, 6, 3], a 3x3 stride-1 stem and no
    max-pool (the ImageNet stem would shrink 32x32 to 8x8 before the first block), global mean
    pool and a linear head. 21,282,122 parameters for 10 classes.

    ``forward(batch)`` returns logits ``[B, num_classes]`` for ``batch["inputs"]`` ``[B, C, H, W]``.
    """
    net = ResNet(BasicBlock, [3, 4, 6, 3], num_classes=require(spec, "num_classes"))
    net.conv1 = nn.Conv2d(require(spec, "input_shape")[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    # The same initialisation torchvision gives the stem it replaces.
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return InputsModel(net)


def resnet50(spec: DataSpec) -> InputsModel:
    """torchvision's ResNet-50 (Bottleneck stages [3, 4, 6, 3], 7x7 stride-2 stem and max-pool,
    global mean pool, linear head), randomly initialised. 25,557,032 parameters for 1000 classes.

    ``forward(batch)`` returns logits ``[B, num_classes]`` for ``batch["inputs"]`` ``[B, 3, H, W]``.
    """
    return InputsModel(resnet.resnet50(weights=None, num_classes=require(spec, "num_classes")))
