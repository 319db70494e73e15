"""The loss a step minimises: the task kind's loss of the model on a batch, under the run's precision,
and its gradient, accumulated over a step's micro-batches and clipped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Precision
from .batches import Batch, MicroBatches
from .task_kinds import TaskKind


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (none for fp32)."""
    if precision == Precision.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == Precision.fp16:  # no GradScaler: the fork's train_old.py had it commented out
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class Objective:
    """The loss of ``forward_model`` on a batch (``task_kind.loss`` of its logits) and its gradient in
    the parameters of ``model``."""

    model: nn.Module  # whose parameters are trained and clipped
    forward_model: nn.Module  # what is called: the model, its DDP wrapper, compiled or not
    task_kind: TaskKind
    precision: Precision
    device: torch.device
    max_grad_norm: float | None = None  # clip the gradient to this norm (the GPT-2 runs: 1.0)
    # The step's gradient is the sum of the micro-batch gradients, not their mean (the GPT-2
    # fork's train_old.py); the loss stays the mean.
    accumulation_sum: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def loss(self, batch: Batch) -> Tensor:
        with self.autocast():
            return self.task_kind.loss(self.forward_model(batch), batch["labels"])

    def closure(self, batch: Batch) -> Callable[..., Tensor]:
        """``closure(backwards=False)``: the loss on ``batch``; with ``backwards``, also its
        gradient, clipped (the SaLSA convention)."""

        def closure(backwards: bool = False) -> Tensor:
            loss = self.loss(batch)
            if backwards:
                loss.backward()
                self.clip_gradients()
            return loss

        return closure

    def backward(self, step: MicroBatches) -> Tensor:
        """The step's loss ``sum_i w_i L_i`` over its micro-batches (``w_i`` the share of the
        step's targets in micro-batch ``i``: the mean over all of them, as one batch of the same
        examples gives), with its gradient in ``.grad``: accumulated one micro-batch at a time
        (DDP all-reduces on the last one only), then clipped as a one-batch step's is."""
        no_sync = getattr(self.forward_model, "no_sync", None)  # DDP's, also through torch.compile
        parts = []
        for i, (batch, weight) in enumerate(zip(step.batches, step.weights)):
            last = i == len(step.batches) - 1
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                part = weight * self.loss(batch)
                part.backward()
            parts.append(part.detach())
        if self.accumulation_sum:  # the gradient of the summed micro-batch losses, then the clip
            torch._foreach_mul_([p.grad for p in self.model.parameters() if p.grad is not None],
                                float(len(step.batches)))
        self.clip_gradients()
        return torch.stack(parts).sum()  # summed as the trials sum: a trial at eta = 0 gives L0

    def trials(self, step: MicroBatches) -> Callable[..., Tensor]:
        """The closure a line search evaluates its trial points with (under ``no_grad``): the
        loss of :meth:`backward` over all micro-batches again."""

        def trial_loss(backwards: bool = False) -> Tensor:
            return torch.stack([w * self.loss(b) for b, w in zip(step.batches, step.weights)]).sum()

        return trial_loss

    def clip_gradients(self) -> None:
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)

    def forward_backward(self, batch: Batch) -> Callable[[], None]:
        """One forward and backward on ``batch``, the gradients dropped after: the least a step
        costs (``experiments/speed.py`` times it once training is over)."""
        closure = self.closure(batch)

        def work() -> None:
            closure(backwards=True)
            self.model.zero_grad(set_to_none=True)

        return work
