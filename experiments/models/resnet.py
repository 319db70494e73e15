"""ResNets from torchvision's building blocks, trained from scratch."""

from __future__ import annotations

from typing import Literal

from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, ResNet

from experiments.data import DataSpec
from experiments.models.base import InputsModel, require


def resnet34_cifar(spec: DataSpec, init: Literal["torchvision", "pytorch"] = "torchvision") -> InputsModel:
    """ResNet-34 for 32x32 images: BasicBlock stages [3, 4, 6, 3], a 3x3 stride-1 stem and no
    max-pool (the ImageNet stem would shrink 32x32 to 8x8 before the first block), global mean
    pool and a linear head. 21,282,122 parameters for 10 classes.

    ``init``: ``"torchvision"`` draws every convolution from torchvision's He normal (fan-out);
    ``"pytorch"`` keeps PyTorch's default layer initialisation (convolutions uniform in
    +-1/sqrt(fan_in)), as the authors' CIFAR ResNet did. BatchNorm (weight 1,
    bias 0) and the linear head (PyTorch's default) are the same under both.

    ``forward(batch)`` returns logits ``[B, num_classes]`` for ``batch["inputs"]`` ``[B, C, H, W]``.
    """
    if init not in ("torchvision", "pytorch"):
        raise ValueError(f"init must be 'torchvision' or 'pytorch', got {init!r}")
    net = ResNet(BasicBlock, [3, 4, 6, 3], num_classes=require(spec, "num_classes"))
    net.conv1 = nn.Conv2d(require(spec, "input_shape")[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if init == "torchvision":  # the stem replaced above gets the init torchvision gives its own
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    else:  # undo torchvision's He init of the other convolutions
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
    return InputsModel(net)


def resnet50(spec: DataSpec) -> InputsModel:
    """torchvision's ResNet-50 (Bottleneck stages [3, 4, 6, 3], 7x7 stride-2 stem and max-pool,
    global mean pool, linear head), randomly initialised. 25,557,032 parameters for 1000 classes.

    ``forward(batch)`` returns logits ``[B, num_classes]`` for ``batch["inputs"]`` ``[B, 3, H, W]``.
    """
    return InputsModel(resnet.resnet50(weights=None, num_classes=require(spec, "num_classes")))
