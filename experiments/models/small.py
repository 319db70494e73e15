"""Small randomly initialised models that train on a CPU in seconds: the default run and tests.

``mlp`` and ``small_cnn`` need only torch; ``small_bert`` imports ``transformers`` when called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from experiments.data import DataSpec
from experiments.models.base import FirstTokenClassifier, InputsModel, require


def mlp(spec: DataSpec, hidden: int = 128, depth: int = 2, dropout: float = 0.0) -> InputsModel:
    """A ReLU perceptron on the flattened inputs.

    ``depth`` hidden layers of width ``hidden`` (0 gives logistic regression), each followed by
    dropout with probability ``dropout``. ``forward(batch)`` returns logits ``[B, num_classes]``
    for ``batch["inputs"]`` of shape ``[B, *spec.input_shape]``.
    """
    width = math.prod(require(spec, "input_shape"))
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, require(spec, "num_classes")))
    return InputsModel(nn.Sequential(*layers))


def small_cnn(
    spec: DataSpec,
    channels: Sequence[int] = (16, 32),
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> InputsModel:
    """A small conv net for images of any size: one stage per entry of ``channels``
    (3x3 convolution, optional BatchNorm, ReLU, 2x2 max-pool), then a global mean pool, dropout
    and a linear head.

    Each stage halves the height and width, so images must be at least ``2 ** len(channels)``
    pixels a side (8x8 digits take two stages). ``forward(batch)`` returns logits
    ``[B, num_classes]`` for ``batch["inputs"]`` of shape ``[B, C, H, W]``.
    """
    shape = require(spec, "input_shape")
    if len(shape) != 3 or min(shape[1:]) < 2 ** len(channels):
        raise ValueError(
            f"small_cnn with {len(channels)} stages needs [C, H, W] images of at least "
            f"{2 ** len(channels)} pixels a side, got input_shape {shape}"
        )
    layers: list[nn.Module] = []
    width = shape[0]
    for out in channels:
        # A conv bias is redundant before BatchNorm, which subtracts the mean anyway.
        layers.append(nn.Conv2d(width, out, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(width, require(spec, "num_classes")),
    ]
    return InputsModel(nn.Sequential(*layers))


def small_bert(
    spec: DataSpec,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 128,
    max_position: int = 512,
    dropout: float = 0.1,
) -> FirstTokenClassifier:
    """A randomly initialised BERT encoder with the paper's first-token head.

    ``dropout`` is the hidden and attention dropout probability. The vocabulary and padding id
    are the tokenizer's (``spec.vocab_size``, ``spec.pad_token_id``). ``forward(batch)`` returns
    logits ``[B, num_classes]``; see :class:`~experiments.models.base.FirstTokenClassifier`.
    """
    # Imported here so that the torch-only models above work without the nlp extra.
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=require(spec, "vocab_size"),
        pad_token_id=spec.pad_token_id,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    encoder = BertModel(config, add_pooling_layer=False)
    return FirstTokenClassifier(encoder, require(spec, "num_classes"))
