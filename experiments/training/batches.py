"""The training data as the loop takes it: from a place in an epoch, the micro-batches of each
step, on the device, each with its share of the step's targets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data import DataBundle
from ..data.sampling import EpochSampler, epoch_batches

Batch = dict[str, Tensor]


@dataclass
class MicroBatches:
    """The micro-batches of one optimizer step and their weights (summing to 1): each one's share
    of the step's targets, so that the weighted sum of their mean losses is the mean over all."""

    batches: list[Batch]
    weights: list[float]


class StepBatches:
    """This rank's steps of ``data.train``: ``batch_size`` examples per micro-batch,
    ``accumulation_steps`` micro-batches per step (the last step of an epoch may have fewer)."""

    def __init__(self, data: DataBundle, targets: Callable[[Tensor], int], device: torch.device, *, seed: int,
                 batch_size: int, accumulation_steps: int = 1, shuffle: bool = True, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        """``targets(labels)``: how many targets a batch's mean loss averages over (the task's)."""
        self.data, self.targets, self.device, self.seed = data, targets, device, seed
        self.batch_size, self.accumulation_steps = batch_size, accumulation_steps
        self.shuffle, self.num_workers, self.rank, self.world_size = shuffle, num_workers, rank, world_size

    @property
    def pin_memory(self) -> bool:
        """Page-locked batches let the copy to a GPU overlap the work (``non_blocking``)."""
        return self.device.type == "cuda"

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def sampler(self, epoch: int, step_in_epoch: int = 0) -> EpochSampler:
        """The order of ``epoch`` from its step ``step_in_epoch`` on."""
        start = step_in_epoch * self.batch_size * self.accumulation_steps
        return EpochSampler(len(self.data.train), self.seed, epoch, start, self.shuffle, rank=self.rank,
                            world_size=self.world_size, batch_size=self.batch_size)

    def rest_of_epoch(self, epoch: int, step_in_epoch: int) -> Iterator[MicroBatches]:
        """The steps of ``epoch`` from its step ``step_in_epoch`` on."""
        batches = epoch_batches(self.data.train, self.data.collate, self.sampler(epoch, step_in_epoch),
                                self.num_workers, self.pin_memory)
        step: list[Batch] = []
        for batch in batches:
            step.append(batch)
            if len(step) == self.accumulation_steps:
                yield self._on_device(step)
                step = []
        if step:
            yield self._on_device(step)

    def _on_device(self, batches: list[Batch]) -> MicroBatches:
        """The micro-batches on the device with their weights (the targets counted on the host,
        before the copy, so without a device sync)."""
        counts = [self.targets(batch["labels"]) for batch in batches] if len(batches) > 1 else [1]
        return MicroBatches([self.to_device(b) for b in batches], [n / sum(counts) for n in counts])

    def first_batch(self) -> Batch:
        """The first ``batch_size`` training examples as one batch on the device."""
        size = min(self.batch_size, len(self.data.train))
        return self.to_device(self.data.collate([self.data.train[i] for i in range(size)]))
