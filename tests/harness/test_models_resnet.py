"""ResNets: stems, stages and heads as the paper describes them, counts against torchvision's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")

from torchvision.models.resnet import BasicBlock, Bottleneck

from experiments.data import DataSpec
from experiments.models.resnet import resnet34_cifar, resnet50

CIFAR10 = DataSpec("classification", num_classes=10, input_shape=(3, 32, 32))
IMAGENET = DataSpec("classification", num_classes=1000, input_shape=(3, 224, 224))


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_blocks(net: nn.Module) -> list[list[type]]:
    return [[type(block) for block in stage] for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]


@pytest.fixture(scope="module")
def cifar_net() -> nn.Module:
    return resnet34_cifar(CIFAR10)


@pytest.fixture(scope="module")
def imagenet_net() -> nn.Module:
    return resnet50(IMAGENET)


def test_resnet34_cifar_gives_logits_for_32x32_images(cifar_net):
    with torch.no_grad():
        logits = cifar_net({"inputs": torch.randn(2, 3, 32, 32)})
    assert logits.shape == (2, 10)


def test_resnet34_cifar_has_a_3x3_stride_1_stem_no_max_pool_and_basic_blocks_3_4_6_3(cifar_net):
    net = cifar_net.backbone
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.in_channels) == ((3, 3), (1, 1), 3)
    assert isinstance(net.maxpool, nn.Identity)
    assert stage_blocks(net) == [[BasicBlock] * n for n in (3, 4, 6, 3)]
    assert isinstance(net.avgpool, nn.AdaptiveAvgPool2d) and net.avgpool.output_size in (1, (1, 1))
    assert (net.fc.in_features, net.fc.out_features) == (512, 10)


def test_resnet34_cifar_counts_torchvisions_resnet34_less_the_smaller_stem(cifar_net):
    stem_difference = 3 * 64 * (7 * 7 - 3 * 3)
    expected = count(torchvision.models.resnet34(num_classes=10)) - stem_difference
    assert count(cifar_net) == expected == 21_282_122


def test_resnet50_has_the_imagenet_stem_and_bottlenecks_3_4_6_3(imagenet_net):
    net = imagenet_net.backbone
    assert (net.conv1.kernel_size, net.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(net.maxpool, nn.MaxPool2d)
    assert stage_blocks(net) == [[Bottleneck] * n for n in (3, 4, 6, 3)]
    assert (net.fc.in_features, net.fc.out_features) == (2048, 1000)


def test_resnet50_has_torchvisions_published_parameter_count(imagenet_net):
    assert count(imagenet_net) == 25_557_032  # torchvision's ResNet50_Weights meta "num_params"


def test_resnet50_gives_logits_for_a_224x224_image(imagenet_net):
    imagenet_net.eval()
    with torch.no_grad():
        logits = imagenet_net({"inputs": torch.randn(1, 3, 224, 224)})
    assert logits.shape == (1, 1000)


def test_resnet50_sizes_its_head_from_the_spec():
    assert resnet50(CIFAR10).backbone.fc.out_features == 10


def test_cifar_resnet_init_choice():
    """``init="pytorch"`` (the authors' ResNet) keeps PyTorch's default convolution init, uniform
    in +-1/sqrt(fan_in); torchvision's He normal (fan-out) has std sqrt(2 / fan_out) and leaves
    that bound for a large share of the weights."""
    torch.manual_seed(0)
    pytorch = resnet34_cifar(CIFAR10, init="pytorch")
    torch.manual_seed(0)
    he = resnet34_cifar(CIFAR10)
    for net, inside in ((pytorch, True), (he, False)):
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                bound = 1 / fan_in**0.5
                share_outside = (module.weight.abs() > bound * (1 + 1e-6)).float().mean().item()
                if inside:
                    assert share_outside == 0.0, module
                elif module.in_channels > 3:  # the 3-channel stem's bound (0.19) is wide for He
                    assert share_outside > 0.2, (module, share_outside)
    with pytest.raises(ValueError, match="init"):
        resnet34_cifar(CIFAR10, init="xavier")
