"""Batching of ``(input, label)`` items, shared by every image and feature dataset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset, default_collate


class InMemoryPairs(TensorDataset):
    """``(input, label)`` pairs held as two tensors.

    ``DataLoader`` hands a dataset with ``__getitems__`` all indices of a batch at once: one
    gather per tensor replaces stacking B items, which on small models costs as much as a step.
    """

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices)
        inputs, labels = self.tensors
        return {"inputs": inputs[index], "labels": labels[index]}

    def batches(self, order: list[int], batch_size: int) -> Iterator[dict[str, Tensor]]:
        """The items of ``order`` in batches of ``batch_size`` (the last may be short), as
        ``DataLoader`` with ``__getitems__`` would give them, at a fraction of its per-batch cost:
        one gather for the whole order, then every batch is a slice (a view) of it."""
        index = torch.as_tensor(order, dtype=torch.long)
        inputs, labels = (tensor.index_select(0, index) for tensor in self.tensors)
        for start in range(0, len(order), batch_size):
            yield {"inputs": inputs[start : start + batch_size], "labels": labels[start : start + batch_size]}


def collate_inputs_labels(items: list[tuple[Tensor, Any]] | dict[str, Tensor]) -> dict[str, Tensor]:
    """Stack ``(input, label)`` pairs into a classification batch.

    Returns ``{"inputs": float[B, ...], "labels": long[B]}``; labels may come as Python ints (as
    torchvision datasets give them) or as 0-d long tensors. A batch that
    :meth:`InMemoryPairs.__getitems__` already gathered passes through.
    """
    if isinstance(items, dict):
        return items
    inputs, labels = default_collate(items)
    return {"inputs": inputs, "labels": labels}
