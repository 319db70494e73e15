"""GLUE loading from local Hugging Face and tfds fixtures, tokenized with a tiny WordPiece tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from experiments.data import DatasetNotFound
from experiments.data.glue import GLUE_TASKS, glue

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "is", "good", "bad", "movie", "who", "what"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
SENTENCES = ["the cat sat", "a dog", "the good movie is bad", "who is the cat on a mat", "what a mat"]
VAL_SIZES = {"validation": 3, "validation_matched": 3, "validation_mismatched": 2}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A BERT-style tokenizer directory in which every word of ``WORDS`` is one token."""
    backend = Tokenizer(
        models.WordPiece({token: i for i, token in enumerate(SPECIALS + WORDS)}, unk_token="[UNK]")
    )
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SPECIALS.index("[CLS]")), ("[SEP]", SPECIALS.index("[SEP]"))],
    )
    directory = tmp_path_factory.mktemp("wordpiece")
    PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    ).save_pretrained(directory)
    return str(directory)


def rows(task: str, n: int) -> dict[str, list]:
    """``n`` rows in the layout of the GLUE task: its text fields, ``label`` and ``idx``."""
    fields = GLUE_TASKS[task].text_fields
    return {
        **{field: [SENTENCES[(i + k) % len(SENTENCES)] for i in range(n)] for k, field in enumerate(fields)},
        "label": [i % GLUE_TASKS[task].num_classes for i in range(n)],
        "idx": list(range(n)),
    }


def save_glue(data_dir, task: str) -> dict[str, dict[str, list]]:
    """Write the task as ``save_to_disk`` would from the hub; return its rows by split."""
    val_splits = ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]
    splits = {"train": rows(task, 4)} | {split: rows(task, VAL_SIZES[split]) for split in val_splits}
    DatasetDict({split: Dataset.from_dict(data) for split, data in splits.items()}).save_to_disk(
        data_dir / "glue" / task
    )
    return splits


def expected_lengths(task: str, data: dict[str, list]) -> list[int]:
    """Tokens per row: one per word, plus [CLS] and one [SEP] per text."""
    fields = GLUE_TASKS[task].text_fields
    n = len(data["label"])
    return [1 + sum(len(data[field][i].split()) + 1 for field in fields) for i in range(n)]


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_hf_batches_are_padded_to_the_longest(task, tokenizer_dir, tmp_path):
    splits = save_glue(tmp_path, task)
    bundle = glue(task, tokenizer_dir, data_dir=str(tmp_path))

    assert bundle.name == task
    assert bundle.spec.num_classes == GLUE_TASKS[task].num_classes
    assert bundle.spec.vocab_size == len(SPECIALS + WORDS) and bundle.spec.pad_token_id == 0
    assert len(bundle.train) == 4
    assert len(bundle.val) == VAL_SIZES[GLUE_TASKS[task].val_split]  # mnli: the matched split
    assert [bundle.train[i]["idx"] for i in range(4)] == [0, 1, 2, 3]  # stored order

    batch = bundle.collate([bundle.train[i] for i in range(4)])
    lengths = expected_lengths(task, splits["train"])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert torch.equal(batch["labels"], torch.tensor(splits["train"]["label"]))
    assert all(value.dtype == torch.long for value in batch.values())
    pairs = len(GLUE_TASKS[task].text_fields) == 2
    assert bool(batch["token_type_ids"].any()) == pairs  # second segments are type 1


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_truncation_at_max_length(task, tokenizer_dir, tmp_path):
    splits = save_glue(tmp_path, task)
    bundle = glue(task, tokenizer_dir, data_dir=str(tmp_path), max_length=5)
    batch = bundle.collate([bundle.train[i] for i in range(4)])
    lengths = batch["attention_mask"].sum(dim=1)
    assert batch["input_ids"].shape == (4, 5)
    assert lengths.tolist() == [min(n, 5) for n in expected_lengths(task, splits["train"])]
    last_tokens = batch["input_ids"].gather(1, (lengths - 1)[:, None])
    assert (last_tokens == SPECIALS.index("[SEP]")).all()  # texts are cut, not the closing [SEP]


def test_max_train_examples_keeps_the_first_rows(tokenizer_dir, tmp_path):
    save_glue(tmp_path, "qnli")
    bundle = glue("qnli", tokenizer_dir, data_dir=str(tmp_path), max_train_examples=2)
    assert [bundle.train[i]["idx"] for i in range(len(bundle.train))] == [0, 1]
    assert len(bundle.val) == VAL_SIZES["validation"]


def test_bytes_literal_tokenizes_the_printed_bytes(tokenizer_dir, tmp_path):
    save_glue(tmp_path, "sst2")
    rows_ = [glue("sst2", tokenizer_dir, data_dir=str(tmp_path)).train[0]]
    plain = glue("sst2", tokenizer_dir, data_dir=str(tmp_path)).collate(rows_)
    as_run = glue("sst2", tokenizer_dir, data_dir=str(tmp_path), bytes_literal=True).collate(rows_)
    # "b'the cat sat'" splits into b, ', the, cat, sat, ' : three tokens more.
    assert as_run["input_ids"].shape[1] == plain["input_ids"].shape[1] + 3


def test_hf_missing_offline_raises_dataset_not_found(tokenizer_dir, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr("experiments.data.hub.load_dataset", offline)
    with pytest.raises(DatasetNotFound, match="nyu-mll/glue") as info:
        glue("mrpc", tokenizer_dir, data_dir=str(tmp_path))
    message = str(info.value)
    assert "mrpc" in message and str(tmp_path / "glue" / "mrpc") in message and "save_to_disk" in message


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_tfds_source(task, tokenizer_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5):
        bundle = glue(task, tokenizer_dir, data_dir=str(tmp_path), source="tfds")
        batch = bundle.collate([bundle.train[i] for i in range(5)])
    assert len(bundle.train) == 5 and len(bundle.val) == 5
    assert batch["input_ids"].shape[0] == 5 and batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].dtype == torch.long
    assert ((batch["labels"] >= 0) & (batch["labels"] < GLUE_TASKS[task].num_classes)).all()


def test_tfds_stored_bytes_are_decoded(tokenizer_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    def stored_rows(builder, split, **kwargs):  # as array_record data reads: bytes texts, numpy labels
        return [{"sentence": b"the cat sat", "label": np.int64(1), "idx": np.int32(0)}]

    with tfds.testing.mock_data(as_data_source_fn=stored_rows):
        bundle = glue("sst2", tokenizer_dir, data_dir=str(tmp_path), source="tfds")
    assert bundle.train[0]["sentence"] == "the cat sat"
    batch = bundle.collate([bundle.train[0]])
    assert batch["input_ids"].shape == (1, 5) and batch["labels"].tolist() == [1]


def test_tfds_missing_raises_dataset_not_found(tokenizer_dir, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetNotFound, match="glue/sst2") as info:
        glue("sst2", tokenizer_dir, data_dir=str(tmp_path), source="tfds")
    assert str(tmp_path) in str(info.value) and "array_record" in str(info.value)
