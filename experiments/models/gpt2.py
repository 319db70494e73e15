"""GPT-2 from scratch, as nanoGPT trains it, on Hugging Face's ``GPT2LMHeadModel``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from experiments.data import DataSpec
from experiments.models.base import require

# Our names for the activations, and Hugging Face's for them. "gelu_tanh" is nanoGPT's `new_gelu`,
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the formula of Hugging Face's "gelu_new".
ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


class CausalLM(nn.Module):
    """A causal language model on the batch contract.

    ``forward`` takes ``input_ids`` ``[B, T]`` and returns next-token logits ``[B, T, vocab_size]``:
    position ``t`` predicts token ``t + 1``. The batch's labels are shifted already, so the model
    is called without them (Hugging Face would shift them a second time).
    """

    def __init__(self, model: GPT2LMHeadModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(input_ids=batch["input_ids"]).logits


def gpt2(
    spec: DataSpec,
    n_layer: int = 12,
    n_head: int = 12,
    n_embd: int = 768,
    block_size: int = 1024,
    vocab_size: int | None = 50304,
    dropout: float = 0.0,
    bias: bool = False,
    activation: Literal["gelu_tanh", "gelu"] = "gelu_tanh",
) -> CausalLM:
    """A randomly initialised GPT-2; the defaults are the GPT-2 124M of the authors' nanoGPT fork.

    ``vocab_size`` 50,304 is GPT-2's 50,257 tokens padded to a multiple of 64, as in nanoGPT
    (faster matmuls; the extra logits are never a target). ``None`` takes the tokenizer's
    ``spec.vocab_size``. ``dropout`` applies to the embeddings, attention and residual branches
    (0 in the paper). The input embedding and the output layer share one matrix, and the
    initialisation is GPT-2's (normal, std 0.02, residual projections scaled by
    1/sqrt(2 n_layer)), as in nanoGPT.

    ``bias=False`` (nanoGPT's ``bias = False``): the linear and LayerNorm layers have no bias
    parameters (124,373,760 parameters at the defaults; 124,475,904 with biases).
    ``activation``: ``"gelu_tanh"`` is nanoGPT's ``new_gelu`` (the tanh approximation), which the
    fork's ``model.py`` uses; ``"gelu"`` is the exact GELU.
    """
    vocab_size = require(spec, "vocab_size") if vocab_size is None else vocab_size
    if spec.vocab_size is not None and spec.vocab_size > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {spec.vocab_size}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        activation_function=ACTIVATIONS[activation],
        use_cache=False,  # training only: no key/value cache to build and keep
    )
    model = GPT2LMHeadModel(config)
    if not bias:
        remove_biases(model)
    return CausalLM(model)


def remove_biases(model: nn.Module) -> None:
    """Take the bias parameters out of every LayerNorm and linear layer of a Hugging Face GPT-2,
    which ``GPT2Config`` cannot leave out.

    A LayerNorm without a bias is PyTorch's own (``bias=None``). Hugging Face's ``Conv1D`` (GPT-2's
    linear layer, its weight stored transposed) always adds its bias, so a zero buffer stands in:
    not a parameter (no optimizer sees it) and not saved, so the model computes and holds what a
    bias-free layer does.
    """
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.bias is not None:
            del module.bias
            module.register_parameter("bias", None)
        elif isinstance(module, Conv1D):
            zeros = torch.zeros_like(module.bias, requires_grad=False)
            del module.bias
            module.register_buffer("bias", zeros, persistent=False)
