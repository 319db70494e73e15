"""The model's metrics on the validation split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from .batches import StepBatches
from .objective import Objective
from .task_kinds import Tally


class Evaluator:
    """Evaluates ``objective``'s model on ``val`` in batches of ``batch_size``, collated and moved
    to the device as the training batches are (``batches``).

    Under DDP every rank evaluates the whole validation split (no sharding, so no reduction and
    identical numbers on every rank); only rank 0's loggers write them."""

    def __init__(self, val: Dataset, objective: Objective, batches: StepBatches, batch_size: int) -> None:
        self.val, self.objective, self.batches, self.batch_size = val, objective, batches, batch_size

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        """The task kind's metrics (``val_loss`` and ``val_accuracy`` or ``val_perplexity``) over the split."""
        model, task_kind = self.objective.model, self.objective.task_kind
        model.eval()
        # A new loader each time: its iterator draws its seed from the global RNG, as it always has.
        loader = DataLoader(self.val, batch_size=self.batch_size, collate_fn=self.batches.data.collate,
                            num_workers=self.batches.num_workers, pin_memory=self.batches.pin_memory)
        tally = Tally()
        for batch in loader:
            batch = self.batches.to_device(batch)
            with self.objective.autocast():
                logits = self.objective.forward_model(batch)
            task_kind.add(tally, logits, batch["labels"])
        model.train()
        return task_kind.metrics(tally)
