"""Language-modelling data: documents -> tokens -> fixed blocks, and OpenWebText built on that.

The first half serves any corpus given as an iterable of strings; :func:`openwebtext` adds the
corpus, its validation split and a token cache on disk, in the manner of nanoGPT's ``prepare.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import DatasetDict
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from transformers import PreTrainedTokenizerBase

from experiments.data import DataBundle, DatasetNotFound, DataSpec
from experiments.data.hub import load_saved_or_hub
from experiments.data.tokenization import load_tokenizer

TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit in two bytes, as in nanoGPT's train.bin
_DOCS_PER_CALL = 1024  # documents per tokenizer call: enough for its batch encoder, few enough to stream
_SPLIT_SEED = 2357  # nanoGPT's validation split of OpenWebText
# OpenWebText on the hub: its main branch is built by a loading script, which datasets >= 4 no
# longer runs; the hub's parquet export of the same data loads with every datasets version.
OPENWEBTEXT_HUB = dict(path="Skylion007/openwebtext", config="plain_text", revision="refs/convert/parquet")
Sampling = Literal["blocks", "random_windows"]


def encode_chunks(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None
) -> Iterator[np.ndarray]:
    """Tokenize documents in order, each followed by the eos token (as nanoGPT does).

    Yields ``uint16[n]`` arrays whose concatenation is the token stream, truncated to
    ``max_tokens`` tokens; documents are read in batches of 1,024 and none after the batch that
    reaches ``max_tokens``.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{tokenizer.name_or_path!r} has no eos token to separate documents")
    if len(tokenizer) > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"a vocabulary of {len(tokenizer)} tokens does not fit in {TOKEN_DTYPE.__name__}")
    remaining = max_tokens
    documents = iter(texts)
    while batch := list(islice(documents, _DOCS_PER_CALL)):
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        chunk = np.fromiter(chain.from_iterable(doc + [tokenizer.eos_token_id] for doc in ids), TOKEN_DTYPE)
        if remaining is not None:
            chunk = chunk[:remaining]
            remaining -= len(chunk)
        yield chunk
        if remaining == 0:
            return


def encode_texts(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None
) -> np.ndarray:
    """The whole token stream of :func:`encode_chunks` in memory, as ``uint16[N]``."""
    return np.concatenate([np.empty(0, TOKEN_DTYPE), *encode_chunks(texts, tokenizer, max_tokens)])


def cached_tokens(
    path: Path | None,
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int | None = None,
) -> np.ndarray:
    """The token stream of ``texts`` (see :func:`encode_chunks`) as ``uint16[N]``.

    With a ``path``, the stream is memory-mapped from the file there; a missing file is built
    first, streamed into a temporary file that is renamed into place only once complete, so an
    interrupted build leaves nothing behind and a present file is always whole. ``texts`` is
    consumed only when something is built: pass a generator to defer reading the corpus.
    The file does not record its settings: give each setting its own path.
    """
    if path is None:
        return encode_texts(texts, tokenizer, max_tokens)
    if not path.exists():
        _write_atomically(path, encode_chunks(texts, tokenizer, max_tokens))
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def _write_atomically(path: Path, chunks: Iterable[np.ndarray]) -> None:
    """Write the concatenated ``chunks`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            for chunk in chunks:
                tmp.write(chunk.tobytes())
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)  # atomic on POSIX: readers see no file or the whole file
    except BaseException:  # includes KeyboardInterrupt: an interrupted build must not linger
        Path(tmp_name).unlink(missing_ok=True)
        raise


class TokenBlocks(Dataset):
    """A token stream cut into blocks for next-token prediction.

    Block ``i`` is the window ``tokens[i * block_size : (i + 1) * block_size + 1]`` of
    ``block_size + 1`` tokens; consecutive windows share their boundary token, so every pair of
    neighbouring tokens is a (input, target) pair of exactly one block. A tail too short for a
    block is dropped.
    """

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one block of {block_size} + 1 tokens")
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """``{"input_ids": long[block_size], "labels": long[block_size]}``, labels shifted by one."""
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        start = index * self.block_size
        block = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return {"input_ids": block[:-1], "labels": block[1:]}


class RandomWindows(Dataset):
    """Windows of ``block_size + 1`` tokens at random positions, drawn with replacement: what
    nanoGPT's ``get_batch`` samples on every step (``torch.randint(len(data) - block_size)``).

    An epoch holds ``len(tokens) // block_size`` windows, as many as :class:`TokenBlocks` has
    blocks. Window ``i`` of epoch ``e`` starts at a position drawn from a generator seeded with
    ``(seed, e, i)``: every epoch draws afresh, and a run resumed mid-epoch (or a DataLoader
    worker) sees the same windows as an uninterrupted one. The trainer calls :meth:`set_epoch`.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {block_size} + 1 tokens")
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def start(self, index: int) -> int:
        """Where window ``index`` of the current epoch starts, uniform on [0, N - block_size)."""
        generator = np.random.default_rng([self.seed, self.epoch, index])
        return int(generator.integers(0, len(self.tokens) - self.block_size))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """``{"input_ids": long[block_size], "labels": long[block_size]}``, labels shifted by one."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        start = self.start(index)
        window = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return {"input_ids": window[:-1], "labels": window[1:]}


def compact_vocabulary(train: np.ndarray, others: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Renumber token ids to a vocabulary of ``size``: the ``size - 1`` ids most frequent in
    ``train`` become ``0 .. size - 2`` (most frequent first, ties by id), every other id becomes
    ``size - 1``. Returns ``train`` and then ``others`` renumbered.

    A small model's output layer over GPT-2's 50,257 tokens costs more than the rest of it; on a
    small corpus most of those tokens never occur (a CPU-sized language-modelling task)."""
    if size < 2:
        raise ValueError(f"vocab_size must be at least 2 (one kept token and 'other'), got {size}")
    ids, counts = np.unique(train, return_counts=True)
    kept = ids[np.lexsort((ids, -counts))][: size - 1]  # by count, descending; then by id
    mapping = np.full(int(max(train.max(), *(o.max() for o in others))) + 1, size - 1, dtype=np.int64)
    mapping[kept] = np.arange(len(kept))
    return [mapping[tokens] for tokens in (train, *others)]


def language_model_bundle(
    name: str,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    block_size: int,
    vocab_size: int,
    sampling: Sampling = "blocks",
    seed: int = 0,
) -> DataBundle:
    """Train and validation token streams (ids below ``vocab_size``) as blocks.

    ``sampling``: the training examples are the disjoint ``"blocks"`` of the stream (one pass per
    epoch) or ``"random_windows"`` drawn with replacement (nanoGPT's sampling, seeded by
    ``seed``). Validation always uses the blocks.

    Returns a bundle whose batches are ``{"input_ids": long[B, block_size],
    "labels": long[B, block_size]}``.
    """
    if sampling not in ("blocks", "random_windows"):
        raise ValueError(f"sampling must be 'blocks' or 'random_windows', got {sampling!r}")
    train = (
        TokenBlocks(train_tokens, block_size) if sampling == "blocks"
        else RandomWindows(train_tokens, block_size, seed)
    )
    return DataBundle(
        name=name,
        spec=DataSpec(task_kind="language_modeling", vocab_size=vocab_size),
        train=train,
        val=TokenBlocks(val_tokens, block_size),
        collate=default_collate,
    )


def openwebtext(
    tokenizer: str = "gpt2-offline",
    data_dir: str | None = None,
    block_size: int = 1024,
    token_budget: int | None = None,
    val_fraction: float = 0.0005,
    text_field: str = "text",
    sampling: Sampling = "blocks",
    seed: int = 0,
) -> DataBundle:
    """OpenWebText for GPT-2, with nanoGPT's validation split.

    Args:
        tokenizer: as :func:`~experiments.data.tokenization.load_tokenizer` names it.
        data_dir: holds a ``save_to_disk`` copy under ``openwebtext/`` (else the hub's parquet
            export is loaded, see ``OPENWEBTEXT_HUB``) and the token cache under
            ``openwebtext-tokens/``; None keeps tokens in memory only.
        block_size: tokens per example.
        token_budget: at most this many training target tokens (``token_budget // block_size``
            blocks); only the documents needed for them are tokenized. None: the whole split.
        val_fraction: share of the documents held out for validation (shuffled, seed 2357).
        text_field: the column holding each document.
        sampling, seed: the training examples, as :func:`language_model_bundle` takes them
            (``"random_windows"``: the GPT-2 row's sampling, windows drawn with replacement).

    Returns:
        A bundle whose batches are ``{"input_ids": long[B, block_size],
        "labels": long[B, block_size]}``.
    """
    tok = load_tokenizer(tokenizer)
    # Read at most once, and only if some split's tokens are not cached yet.
    corpus = functools.cache(functools.partial(_openwebtext_splits, data_dir, val_fraction))
    settings = {
        "tokenizer": tokenizer,
        "vocab_size": len(tok),
        "val_fraction": val_fraction,
        "text_field": text_field,
    }

    def split_tokens(split: str, max_tokens: int | None) -> np.ndarray:
        path = None if data_dir is None else _cache_path(data_dir, split, max_tokens=max_tokens, **settings)
        return cached_tokens(path, _documents(corpus, split, text_field), tok, max_tokens)

    # One token more than the budget: the last target token needs its input.
    train = split_tokens("train", None if token_budget is None else token_budget + 1)
    val = split_tokens("val", None)
    return language_model_bundle("openwebtext", train, val, block_size, len(tok), sampling, seed)


def _openwebtext_splits(data_dir: str | None, val_fraction: float) -> DatasetDict:
    """OpenWebText's documents as ``train`` and ``val`` splits (it ships only ``train``)."""
    corpus = load_saved_or_hub(
        OPENWEBTEXT_HUB["path"], OPENWEBTEXT_HUB["config"], data_dir, "openwebtext",
        revision=OPENWEBTEXT_HUB["revision"],
    )
    if "train" not in corpus:
        # The hub's parquet export of a corpus this large may be cut to a "partial-train" split.
        raise DatasetNotFound(
            "openwebtext (all of its train split)",
            f"the splits {sorted(corpus)} of {OPENWEBTEXT_HUB['path']} at {OPENWEBTEXT_HUB['revision']}",
            f"Save the whole corpus into {Path(data_dir or '<data_dir>', 'openwebtext')} with an older "
            'datasets in a separate environment: pip install "datasets<4", then load_dataset('
            f"{OPENWEBTEXT_HUB['path']!r}, trust_remote_code=True).save_to_disk(<that folder>)",
        )
    split = corpus["train"].train_test_split(test_size=val_fraction, seed=_SPLIT_SEED, shuffle=True)
    return DatasetDict(train=split["train"], val=split["test"])


def _documents(corpus: Callable[[], DatasetDict], split: str, field: str) -> Iterator[str]:
    """The texts of one split; a generator, so the corpus is loaded only if it is iterated."""
    for batch in corpus()[split].iter(batch_size=_DOCS_PER_CALL):
        yield from batch[field]


def _cache_path(data_dir: str, split: str, **settings: object) -> Path:
    """Where the tokens of ``split`` made with ``settings`` are cached: one file per setting."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data_dir, "openwebtext-tokens", f"{split}-{digest}.uint16")
