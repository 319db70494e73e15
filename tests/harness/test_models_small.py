"""The small CPU models: shapes on any image size, hand-counted parameters, spec checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from experiments.data import DataSpec
from experiments.models.small import mlp, small_cnn

DIGITS = DataSpec("classification", num_classes=10, input_shape=(1, 8, 8))
CIFAR = DataSpec("classification", num_classes=100, input_shape=(3, 32, 32))


def image_batch(spec: DataSpec, size: int = 4) -> dict[str, torch.Tensor]:
    return {"inputs": torch.randn(size, *spec.input_shape), "labels": torch.zeros(size, dtype=torch.long)}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("spec", [DIGITS, CIFAR], ids=["1x8x8", "3x32x32"])
def test_small_cnn_gives_logits_for_any_image_size(spec, batch_norm):
    logits = small_cnn(spec, batch_norm=batch_norm)(image_batch(spec))
    assert logits.shape == (4, spec.num_classes)


def test_small_cnn_parameter_count_by_hand():
    conv1 = 1 * 16 * 3 * 3 + 16
    conv2 = 16 * 32 * 3 * 3 + 32
    head = 32 * 10 + 10
    assert count(small_cnn(DIGITS, channels=[16, 32])) == conv1 + conv2 + head


def test_small_cnn_batch_norm_replaces_the_conv_bias():
    model = small_cnn(CIFAR, channels=(8, 16), batch_norm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [8, 16]
    assert all(conv.bias is None for conv in convs)


def test_small_cnn_rejects_images_too_small_for_its_stages():
    with pytest.raises(ValueError, match="at least 16 pixels"):
        small_cnn(DIGITS, channels=(4, 4, 4, 4))


def test_mlp_flattens_the_inputs_and_counts_by_hand():
    model = mlp(DIGITS, hidden=32, depth=2)
    assert model(image_batch(DIGITS)).shape == (4, 10)
    assert count(model) == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)


def test_mlp_of_depth_zero_is_logistic_regression():
    assert count(mlp(DIGITS, depth=0)) == 64 * 10 + 10


def test_mlp_dropout_is_active_in_train_mode_only():
    model = mlp(DIGITS, dropout=0.5)
    batch = image_batch(DIGITS)
    assert not torch.equal(model(batch), model(batch))
    model.eval()
    assert torch.equal(model(batch), model(batch))


def test_a_classifier_on_a_language_modelling_spec_names_what_is_missing():
    with pytest.raises(ValueError, match="num_classes"):
        mlp(DataSpec("language_modeling", vocab_size=100, input_shape=(8,)))
