"""GLUE tasks of the paper's NLP table (SST-2, MRPC, QNLI, MNLI), from Hugging Face or tfds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch.utils.data import Dataset, Subset

from experiments.data import DataBundle, DatasetNotFound, DataSpec
from experiments.data.hub import load_saved_or_hub
from experiments.data.tokenization import TextClassificationCollate, load_tokenizer

Source = Literal["hf", "tfds"]
Order = Literal["stored", "tfds"]
GLUE_HUB_PATH = "nyu-mll/glue"  # the configurations are the task names


@dataclass(frozen=True)
class GlueTask:
    """What differs between the GLUE tasks: the text fields, the classes, the validation split."""

    text_fields: tuple[str, ...]  # one sentence, or a pair
    num_classes: int
    val_split: str = "validation"


GLUE_TASKS = {
    "sst2": GlueTask(("sentence",), 2),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2),
    "qnli": GlueTask(("question", "sentence"), 2),
    "mnli": GlueTask(("premise", "hypothesis"), 3, val_split="validation_matched"),
}


def glue(
    task: str,
    tokenizer: str,
    data_dir: str | None = None,
    source: Source = "hf",
    max_length: int = 256,
    max_train_examples: int | None = None,
    bytes_literal: bool = False,
    order: Order = "stored",
) -> DataBundle:
    """A GLUE task as rows in stored order (the paper did not shuffle), tokenized per batch.

    Args:
        task: ``"sst2"``, ``"mrpc"``, ``"qnli"`` or ``"mnli"`` (validated on ``validation_matched``).
        tokenizer: the model's tokenizer, as :func:`~experiments.data.tokenization.load_tokenizer`
            names it.
        data_dir: where saved copies live: ``<data_dir>/glue/<task>`` (``save_to_disk``) for
            ``source="hf"``, the tfds data directory for ``source="tfds"``.
        source: ``"hf"`` (Hugging Face ``nyu-mll/glue``) or ``"tfds"`` (tensorflow-datasets
            ``glue/<task>``, the paper's source; read with ``as_data_source``, so array_record only).
        max_length: tokens per sequence after truncation.
        max_train_examples: keep only the first this many training rows.
        bytes_literal: as-run option; True tokenizes ``"b'...'"``, the printed UTF-8 bytes, as the
            paper's pipeline did. False (the default) tokenizes the text itself.
        order: the row order of every split. ``"stored"``: as the source stores it (the hub copy
            by ``idx``). ``"tfds"``: tensorflow-datasets' order, in which the paper read the data
            (see :func:`tfds_order`); the hub copy is permuted into it, no TensorFlow needed. A
            ``source="tfds"`` copy is in that order already.

    Returns:
        A bundle whose batches are ``{"input_ids", "attention_mask"[, "token_type_ids"]: long[B, T],
        "labels": long[B]}``, padded to the longest sequence of the batch, ``T <= max_length``.
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    if source not in _READERS:
        raise ValueError(f"unknown GLUE source {source!r}; expected one of {sorted(_READERS)}")
    if order not in ("stored", "tfds"):
        raise ValueError(f"unknown GLUE order {order!r}; expected 'stored' or 'tfds'")
    glue_task = GLUE_TASKS[task]
    tok = load_tokenizer(tokenizer)
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer {tokenizer!r} has no pad token, and GLUE batches are padded")
    splits = ("train", glue_task.val_split)
    train, val = _READERS[source](task, data_dir, splits)
    if order == "tfds" and source == "hf":
        train, val = (rows.select(tfds_order(rows["idx"], split)) for rows, split in zip((train, val), splits))
    if max_train_examples is not None:
        train = Subset(train, range(min(max_train_examples, len(train))))
    return DataBundle(
        name=task,
        spec=DataSpec(
            task_kind="classification",
            num_classes=glue_task.num_classes,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
        ),
        train=train,
        val=val,
        collate=TextClassificationCollate(tok, glue_task.text_fields, max_length, bytes_literal),
    )


def tfds_order(keys: Sequence[int | str], split: str) -> list[int]:
    """The positions of the examples with ``keys`` in the order tensorflow-datasets stores
    ``split`` in: ascending 128-bit MD5 of the split name (the salt) followed by the key as UTF-8
    text (tfds ``core/hashing.py`` and ``core/shuffle.py``: prepared files are sorted by that
    hash). tfds' GLUE builder keys every example by its ``idx``, the column the hub copy keeps.
    """
    salted = hashlib.md5(split.encode("utf-8"))

    def digest(key: int | str) -> bytes:
        md5 = salted.copy()
        md5.update(str(key).replace("\\", "/").encode("utf-8"))
        return md5.digest()  # big-endian bytes order as tfds' int(hexdigest, 16) does

    return sorted(range(len(keys)), key=lambda i: digest(keys[i]))


def _hf_splits(task: str, data_dir: str | None, splits: Sequence[str]) -> list[Dataset]:
    """The named splits of Hugging Face's ``nyu-mll/glue`` configuration ``task``."""
    dataset = load_saved_or_hub(GLUE_HUB_PATH, task, data_dir, f"glue/{task}")
    return [dataset[split] for split in splits]


def _tfds_splits(task: str, data_dir: str | None, splits: Sequence[str]) -> list[Dataset]:
    """The named splits of tensorflow-datasets' ``glue/<task>``, with texts as ``str``."""
    try:
        import tensorflow_datasets as tfds  # optional: only this source needs it
    except ImportError as err:
        raise ImportError(
            "source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets array_record h5py"
        ) from err
    builder = tfds.builder(f"glue/{task}", data_dir=data_dir)
    try:
        # as_data_source never downloads; data that is absent reads as TFRecord, which it refuses.
        sources = [builder.as_data_source(split=split) for split in splits]
    except NotImplementedError as err:
        raise DatasetNotFound(
            f"glue/{task} (tfds)",
            str(builder.data_dir),
            "Prepare it in the array_record format on a machine with network: "
            f"tfds build glue/{task} --file_format=array_record --data_dir={data_dir or '<data_dir>'} "
            "(copies prepared as TFRecord, tfds' default, can only be read through TensorFlow).",
        ) from err
    return [_TextRows(source) for source in sources]


class _TextRows(Dataset):
    """Rows of a tfds data source with ``bytes`` texts decoded, so they match Hugging Face rows."""

    def __init__(self, source: Sequence[dict[str, Any]]) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.source[index]
        return {
            key: value.decode("utf-8") if isinstance(value, bytes) else value for key, value in row.items()
        }


_READERS: dict[str, Callable[[str, str | None, Sequence[str]], list[Dataset]]] = {
    "hf": _hf_splits,
    "tfds": _tfds_splits,
}
