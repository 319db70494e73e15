"""GPT-2: unshifted next-token logits, a training step, nanoGPT's settings, the 124M count."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("transformers")

from experiments.data import DataSpec
from experiments.models.gpt2 import gpt2

SPEC = DataSpec("language_modeling", vocab_size=50)
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": None}


def lm_batch(seed: int = 0, length: int = 12) -> dict[str, torch.Tensor]:
    """Tokens and their successors, as the data helper shifts them."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, SPEC.vocab_size, (2, length + 1), generator=g)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return gpt2(SPEC, **TINY)


def test_logits_cover_every_position_and_token(model):
    assert model(lm_batch()).shape == (2, 12, SPEC.vocab_size)


def test_logits_are_not_shifted_again(model):
    batch = lm_batch()
    ours = F.cross_entropy(model(batch).flatten(0, 1), batch["labels"].flatten())
    # Hugging Face shifts labels itself: given the unshifted sequence it computes the same loss.
    sequence = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1)
    theirs = model.model(input_ids=sequence, labels=sequence).loss
    torch.testing.assert_close(ours, theirs)


def test_logits_at_a_position_ignore_later_tokens(model):
    batch = lm_batch()
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][:, 8] = (changed["input_ids"][:, 8] + 1) % SPEC.vocab_size
    before, after = model(batch), model(changed)
    torch.testing.assert_close(after[:, :8], before[:, :8])
    assert not torch.allclose(after[:, 8:], before[:, 8:])


def test_one_step_of_gradient_descent_lowers_the_loss(model):
    batch = lm_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(batch).flatten(0, 1), batch["labels"].flatten())

    first = loss()
    first.backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert loss() < first


def test_nanogpt_settings_tied_embeddings_and_no_dropout(model):
    net = model.model
    assert net.lm_head.weight is net.transformer.wte.weight
    config = net.config
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.0, 0.0, 0.0)
    assert config.activation_function == "gelu_new"  # nanoGPT's new_gelu, the tanh approximation
    assert config.n_positions == 16
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]


def test_biases_and_the_exact_gelu_on_request():
    net = gpt2(SPEC, **TINY, bias=True, activation="gelu").model
    assert net.config.activation_function == "gelu"
    assert net.transformer.h[0].attn.c_attn.bias.requires_grad and net.transformer.ln_f.bias is not None


def test_vocab_size_none_takes_the_tokenizers_and_too_small_is_rejected():
    assert gpt2(SPEC, **TINY).model.config.vocab_size == SPEC.vocab_size
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        gpt2(SPEC, **dict(TINY, vocab_size=SPEC.vocab_size - 1))


def test_the_default_is_gpt2_124m_with_vocab_50304():
    with torch.device("meta"):  # shapes only, nothing allocated
        model = gpt2(DataSpec("language_modeling", vocab_size=50257), bias=True)
    vocab, dim, layers, block = 50304, 768, 12, 1024
    assert vocab % 64 == 0 and vocab >= 50257
    layer_norms = 2 * (dim + dim)  # two, each with a weight and a bias
    attention = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)  # query/key/value in, output
    mlp = (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)  # in, out
    per_layer = layer_norms + attention + mlp
    expected = vocab * dim + block * dim + layers * per_layer + 2 * dim  # output layer tied to wte
    parameters = list(model.parameters())
    assert all(p.is_meta for p in parameters)
    assert sum(p.numel() for p in parameters) == expected == 124_475_904
    with torch.device("meta"):
        without_biases = gpt2(DataSpec("language_modeling", vocab_size=50257))
    biases = layers * (2 * dim + 3 * dim + dim + 4 * dim + dim) + dim  # and ln_f's
    assert sum(p.numel() for p in without_biases.parameters()) == expected - biases == 124_373_760
