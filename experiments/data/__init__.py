"""Datasets for the harness, one module per family, all behind one contract.

A dataset builder (the ``_target_`` of a ``conf/dataset/*.yaml``) returns a :class:`DataBundle`:
map-style train and validation datasets whose items a ``collate`` function turns into a *batch*,
a ``dict[str, Tensor]``:

* image / feature classification: ``{"inputs": float[B, ...], "labels": long[B]}``
* text classification: ``{"input_ids": long[B, T], "attention_mask": long[B, T], "labels": long[B]}``
  (plus ``token_type_ids`` when the tokenizer makes them); padded to the longest in the batch
* language modelling: ``{"input_ids": long[B, T], "labels": long[B, T]}`` (labels shifted by one)

and a :class:`DataSpec` that tells the model builder what it must fit (classes, vocabulary, input
shape). A dataset that is missing raises :class:`DatasetNotFound` with the dataset, the place
searched and how to obtain it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor
from torch.utils.data import Dataset

TaskKindName = Literal["classification", "language_modeling"]


@dataclass(frozen=True)
class DataSpec:
    """What a model must fit: the task, its output size and its input."""

    task_kind: TaskKindName
    num_classes: int | None = None  # classification
    vocab_size: int | None = None  # text inputs and language modelling
    input_shape: tuple[int, ...] | None = None  # per example, for "inputs" batches
    pad_token_id: int | None = None


@dataclass
class DataBundle:
    """Train and validation data with the function that batches them."""

    name: str
    spec: DataSpec
    train: Dataset
    val: Dataset
    collate: Callable[[list[Any]], dict[str, Tensor]]


class DatasetNotFound(FileNotFoundError):
    """A dataset is not where it was looked for, and cannot be downloaded here."""

    def __init__(self, dataset: str, searched: str, how_to_get: str) -> None:
        super().__init__(f"dataset {dataset!r} not found in {searched}. {how_to_get}")
        self.dataset = dataset
        self.searched = searched
