"""Which parameters an optimizer's weight decay reaches (``optimizer.weight_decay_on``)."""

from __future__ import annotations

import enum
from typing import Any

from torch import nn


class DecayScope(enum.Enum):
    """``all``: every parameter decays (one param group). ``matrices``: only parameters of two or
    more dimensions (weights of linear, convolution and embedding layers) decay; biases and
    normalisation weights form a second group with ``weight_decay`` 0, as nanoGPT's
    ``configure_optimizers`` builds them."""

    all = "all"
    matrices = "matrices"


def parameter_groups(model: nn.Module, scope: DecayScope) -> Any:
    """The ``params`` argument for the optimizer of ``model``: its trainable parameters, or the
    two groups of ``scope=matrices`` (the first takes the optimizer's own ``weight_decay``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scope == DecayScope.all:
        return trainable
    decayed = [p for p in trainable if p.dim() >= 2]
    kept = [p for p in trainable if p.dim() < 2]
    return [{"params": decayed}, {"params": kept, "weight_decay": 0.0}]
