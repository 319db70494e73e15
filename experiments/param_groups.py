"""Which parameters an optimizer's weight decay reaches (``optimizer.weight_decay_on``)."""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from .config import DecayScope


def parameter_groups(model: nn.Module, scope: DecayScope) -> Any:
    """The ``params`` argument for the optimizer of ``model``: its trainable parameters, or the
    two groups of ``scope=linear`` (the first takes the optimizer's own ``weight_decay``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scope == DecayScope.all:
        return trainable
    decayed = linear_weights(model)
    return [
        {"params": [p for p in trainable if id(p) in decayed]},
        {"params": [p for p in trainable if id(p) not in decayed], "weight_decay": 0.0},
    ]


def linear_weights(model: nn.Module) -> set[int]:
    """The ids of the weights of ``model``'s linear layers that are not also an embedding's.

    A linear layer is ``nn.Linear`` or Hugging Face's ``Conv1D`` (GPT-2's, the same layer with its
    weight stored transposed). nanoGPT ties the output layer to the token embedding and leaves
    that matrix undecayed (``decay.remove('lm_head.weight')``); so does this rule.
    """
    linear_types: tuple[type, ...] = (nn.Linear,)
    hf_utils = sys.modules.get("transformers.pytorch_utils")  # a model can hold a Conv1D only if it is loaded
    if hf_utils is not None:
        linear_types += (hf_utils.Conv1D,)
    modules = list(model.modules())
    embeddings = {id(m.weight) for m in modules if isinstance(m, nn.Embedding)}
    return {id(m.weight) for m in modules if isinstance(m, linear_types)} - embeddings
