"""GPT-2 from scratch, as nanoGPT trains it, on Hugging Face's ``GPT2LMHeadModel``."""

from __future__ import annotations

from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel

from experiments.data import DataSpec
from experiments.models.base import require


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
) -> CausalLM:
    """A randomly initialised GPT-2; the defaults are nanoGPT's GPT-2 124M.

    ``vocab_size`` 50,304 is GPT-2's 50,257 tokens padded to a multiple of 64, as in nanoGPT
    (faster matmuls; the extra logits are never a target). ``None`` takes the tokenizer's
    ``spec.vocab_size``. ``dropout`` applies to the embeddings, attention and residual branches
    (0 in the paper). The input embedding and the output layer share one matrix, and the
    initialisation is GPT-2's (normal, std 0.02, residual projections scaled by
    1/sqrt(2 n_layer)), as in nanoGPT.

    Departure from nanoGPT: its ``bias=False`` (no biases in linear and LayerNorm layers) cannot
    be expressed in ``GPT2Config``, so this model has biases: 124,475,904 parameters at the
    defaults, 102,144 (0.08 %) more than nanoGPT's.
    """
    vocab_size = require(spec, "vocab_size") if vocab_size is None else vocab_size
    if spec.vocab_size is not None and spec.vocab_size > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {spec.vocab_size}")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        activation_function="gelu",  # nanoGPT's exact nn.GELU(), not GPT-2's tanh approximation
        use_cache=False,  # training only: no key/value cache to build and keep
    )
    return CausalLM(GPT2LMHeadModel(config))
