"""What each kind of task computes from the model's logits: the training loss, how many targets a
batch's mean loss averages over, the validation metrics, and which way each metric is better.

A model's ``forward(batch)`` gives logits; the loss is the mean cross-entropy against
``batch["labels"]``, over examples (classification) or tokens (language modelling). A new kind of
task is a :class:`TaskKind` subclass registered in :data:`TASK_KINDS` under its
:data:`experiments.data.TaskKindName` name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..data import DataSpec

IGNORED_LABEL = -100  # nn.functional.cross_entropy's ignore_index: a token that does not count


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over examples (classification) or tokens (language modelling)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


@dataclass
class Tally:
    """What an evaluation sums over the validation batches."""

    loss: float = 0.0  # each batch's mean loss times its targets
    targets: int = 0
    correct: int = 0  # classification: targets whose largest logit is the label


class TaskKind(ABC):
    """The loss, target count and metrics of one kind of task."""

    # The validation metrics whose larger value is better (all others: the smaller).
    larger_is_better: ClassVar[frozenset[str]] = frozenset()

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The mean loss of a batch (what a step minimises)."""
        return cross_entropy(logits, labels)

    @abstractmethod
    def targets(self, labels: Tensor) -> int:
        """How many targets the mean loss of a batch with ``labels`` averages over."""

    def add(self, tally: Tally, logits: Tensor, labels: Tensor) -> None:
        """Add one validation batch to ``tally``."""
        n = self.targets(labels)
        tally.loss += self.loss(logits, labels).item() * n
        tally.targets += n

    @abstractmethod
    def metrics(self, tally: Tally) -> dict[str, float]:
        """The validation metrics of a finished ``tally``."""

    def better(self, key: str) -> Callable[[float, float], float]:
        """Of two values of metric ``key``, the better one (``max`` or ``min``)."""
        return max if key in self.larger_is_better else min


class Classification(TaskKind):
    """One label per example: the loss and accuracy over examples."""

    larger_is_better = frozenset({"val_accuracy"})

    def targets(self, labels: Tensor) -> int:
        return labels.numel()

    def add(self, tally: Tally, logits: Tensor, labels: Tensor) -> None:
        super().add(tally, logits, labels)
        tally.correct += int((logits.argmax(dim=-1) == labels).sum())

    def metrics(self, tally: Tally) -> dict[str, float]:
        targets = max(tally.targets, 1)
        return {"val_loss": tally.loss / targets, "val_accuracy": tally.correct / targets}


class LanguageModelling(TaskKind):
    """The next token at every position: the loss and perplexity over tokens (ignored ones excluded)."""

    def targets(self, labels: Tensor) -> int:
        return int((labels != IGNORED_LABEL).sum())

    def metrics(self, tally: Tally) -> dict[str, float]:
        loss = tally.loss / max(tally.targets, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}  # exp overflows past ~709


TASK_KINDS: Mapping[str, TaskKind] = {"classification": Classification(), "language_modeling": LanguageModelling()}


def task_kind_for(spec: DataSpec) -> TaskKind:
    """The task kind of a dataset, as its :class:`~experiments.data.DataSpec` names it."""
    return TASK_KINDS[spec.task_kind]
