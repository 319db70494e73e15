"""A Hugging Face ``Trainer`` that steps the optimizers of this package.

    from optim import SaLSA
    from optim.integrations.hf import LineSearchTrainer

    trainer = LineSearchTrainer(model=model, args=args, train_dataset=train_dataset,
                                optimizers=(SaLSA(model.parameters()), None))
    trainer.train()

Nothing else in a ``Trainer`` script changes. The Trainer runs the forward and backward of every
micro-batch of an optimizer step as usual; :class:`LineSearchTrainer` keeps those micro-batches
and the RNG state before the first one, and completes the Trainer's argument-less
``optimizer.step()`` (through a step pre-hook on the optimizer, so accelerate's wrapper stays in
between) into ``step(closure, loss=L0, rng=snapshot)``: L0 is the sum of the Trainer's
accumulation-scaled micro-batch losses, and every trial re-runs the same micro-batches, in the
same order and with the same dropout masks, through ``compute_loss`` with the same scaling.

What differs from ``transformers.Trainer``:

* the optimizer: ``optimizers=(opt, None)`` with ``opt`` one of SaLSA, SLS, L4 (any
  :class:`~optim.ClosureOptimizer`), or ``optimizer_cls_and_kwargs=(SaLSA, {...})`` (built on the
  Trainer's param groups, so ``args.weight_decay`` applies, decoupled); with neither, SaLSA with
  its defaults. ``TrainingArguments.optim`` cannot name them: transformers validates it against
  its closed ``OptimizerNames`` enum, so ``args.optim`` and ``args.learning_rate`` are unused.
* no learning-rate schedule: the step size comes from the search. A scheduler passed in
  ``optimizers`` is refused; the scheduler the Trainer needs internally is a no-op that only
  reads the step size back (``args.lr_scheduler_type`` and warm-up settings are unused).
* no gradient clipping: ``args.max_grad_norm`` is not applied, because the Armijo test compares
  the decrease of the loss with the gradient of that loss, and the step size already bounds the
  step. ``grad_norm`` is still measured and logged.
* logs: every training log carries the optimizer's ``diagnostics`` (``step_size``,
  ``n_forwards``, ``n_backtracks``, ``n_searches``, ...), and ``learning_rate`` is the step size
  of the step just taken.

The trial losses are the quantity the Trainer backpropagates. With gradient accumulation that is
the mean over the micro-batches when the loss is normalised per micro-batch or by
``num_items_in_batch``; a model that takes ``**kwargs`` but ignores ``num_items_in_batch`` (e.g.
``BertForSequenceClassification`` in transformers 5) makes the Trainer sum the micro-batch means
instead (set ``model.accepts_loss_kwargs = False`` to average them).

Not covered: DeepSpeed (its engine owns the optimizer step) and context parallelism.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ConstantLR, LRScheduler
from transformers import Trainer
from transformers.utils import logging

from .. import ClosureOptimizer, LineSearchOptimizer, RNGSnapshot, SaLSA

__all__ = ["LineSearchTrainer"]

logger = logging.get_logger(__name__)

MicroBatch = tuple[dict[str, Any], Tensor | int | None]


@dataclass
class _StepRecord:
    """What the trials of one optimizer step re-evaluate: the micro-batches the Trainer ran."""

    model: nn.Module
    rng: RNGSnapshot
    micro_batches: list[MicroBatch] = field(default_factory=list)
    loss: Tensor | float = 0.0
    complete: bool = False  # the last micro-batch of the step has run


class LineSearchTrainer(Trainer):
    """``transformers.Trainer`` for SaLSA, SLS and L4 (see the module docstring).

    Takes the arguments of ``transformers.Trainer``.

    Raises:
        ValueError: a learning-rate scheduler in ``optimizers``.
        TypeError: an optimizer (or ``optimizer_cls_and_kwargs`` class) that is not one of this
            package's closure optimizers, e.g. ``torch.optim.AdamW``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.lr_scheduler is not None:
            raise ValueError(
                f"optimizers: LineSearchTrainer got the learning-rate scheduler "
                f"{type(self.lr_scheduler).__name__}, but a line search chooses its step size "
                "itself at every step and takes no scheduler; pass optimizers=(optimizer, None)"
            )
        if self.optimizer is not None:
            _check_optimizer(self.optimizer)
        elif self.optimizer_cls_and_kwargs is not None:
            _check_optimizer_class(self.optimizer_cls_and_kwargs[0])
        else:
            self.optimizer_cls_and_kwargs = (SaLSA, {})
        self._closure_optimizer: ClosureOptimizer | None = None
        self._step_record: _StepRecord | None = None
        logger.info(
            "LineSearchTrainer: the step size comes from the optimizer; learning_rate, optim, "
            "lr_scheduler_type, warm-up and max_grad_norm of the TrainingArguments are not used"
        )

    # -- the optimizer and its (absent) schedule ----------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the step pre-hook that turns its ``step()`` into a line
        search step on the micro-batches just run."""
        optimizer = super().create_optimizer(model)
        closure_optimizer = _check_optimizer(optimizer)
        if closure_optimizer is not self._closure_optimizer:
            closure_optimizer.register_step_pre_hook(self._complete_step_arguments)
            self._closure_optimizer = closure_optimizer
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LRScheduler:
        """A scheduler that never changes ``lr``: the Trainer steps and saves one, and reads the
        learning rate from it; the optimizers write their step size into ``lr`` themselves."""
        if self.lr_scheduler is None:
            # factor 1 and no iterations: get_lr() returns each group's lr as the optimizer left it.
            self.lr_scheduler = ConstantLR(optimizer or self.optimizer, factor=1.0, total_iters=0)
            self._created_lr_scheduler = True  # as the Trainer does: rebuilt on the next train()
        return self.lr_scheduler

    def _clip_grad_norm(self, model: nn.Module) -> Tensor | float:
        # Measure only (see the module docstring): the search needs the gradient of L0 as it is.
        return self._get_grad_norm(model)

    # -- one optimizer step: record the micro-batches, then complete step() --------------------

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        """The Trainer's forward and backward of one micro-batch, recorded for the trials."""
        record = self._step_record
        if record is None or record.complete:
            # Before the first forward of the step, so trials replay its dropout masks; the later
            # micro-batches continue that RNG stream in the trials as they did here.
            record = self._step_record = _StepRecord(model, RNGSnapshot(model.parameters()))
        loss = super().training_step(model, inputs, num_items_in_batch)
        record.micro_batches.append((inputs, num_items_in_batch))
        record.loss = record.loss + loss
        record.complete = self.accelerator.sync_gradients
        return loss

    def _complete_step_arguments(
        self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        """Step pre-hook: ``step()`` from the Trainer becomes ``step(closure, loss=L0, rng=...)``.

        Calls that bring their own closure or loss, or come before the step's last micro-batch,
        pass unchanged.
        """
        record = self._step_record
        # torch passes the bound call's arguments: args[0] is the optimizer itself.
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if record is None or not record.complete or closure is not None or "loss" in kwargs:
            return None
        self._step_record = None
        step_kwargs: dict[str, Any] = {"loss": record.loss}
        if isinstance(optimizer, LineSearchOptimizer):  # L4 makes no trials and takes no rng
            step_kwargs["rng"] = record.rng
        return (optimizer, self._trial_closure(record)), step_kwargs

    def _trial_closure(self, record: _StepRecord) -> Callable[[], Tensor]:
        """The loss of the recorded step at the current parameters (called under no_grad)."""

        def closure() -> Tensor:
            losses = [self._scaled_loss(record.model, inputs, n) for inputs, n in record.micro_batches]
            return torch.stack(losses).sum()

        return closure

    def _scaled_loss(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Tensor | int | None
    ) -> Tensor:
        """One micro-batch's loss exactly as ``Trainer.training_step`` scales it before backward."""
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        if not self._loss_is_scaled_for_accumulation(num_items_in_batch):
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _loss_is_scaled_for_accumulation(self, num_items_in_batch: Tensor | int | None) -> bool:
        # The rule of Trainer.training_step.
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return self.loss_is_scaled_for_ga
        by_model = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        return by_model or self.compute_loss_func is not None

    # -- logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, with the optimizer's diagnostics added to every training log."""
        if "loss" in logs and self._closure_optimizer is not None:
            # The Trainer's "loss" (the mean since the last log) stays; diagnostics' is L0 alone.
            diagnostics = self._closure_optimizer.diagnostics
            logs = {**logs, **{k: v for k, v in diagnostics.items() if k != "loss"}}
            if "learning_rate" in logs:
                # The Trainer reads it from the scheduler, one step behind the search.
                logs["learning_rate"] = diagnostics.step_size
        super().log(logs, *args, **kwargs)


def _check_optimizer(optimizer: object) -> ClosureOptimizer:
    """The closure optimizer inside accelerate's (or another) wrapper; TypeError for others."""
    inner = optimizer
    while not isinstance(inner, ClosureOptimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, ClosureOptimizer):
        raise TypeError(
            f"optimizers: LineSearchTrainer steps the optimizers of `optim` (SaLSA, SLS, L4), got "
            f"{_name(type(inner))}; train it with transformers.Trainer instead"
        )
    return inner


def _check_optimizer_class(optimizer_cls: object) -> None:
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, ClosureOptimizer)):
        shown = _name(optimizer_cls) if isinstance(optimizer_cls, type) else repr(optimizer_cls)
        raise TypeError(
            f"optimizer_cls_and_kwargs: LineSearchTrainer builds the optimizers of `optim` "
            f"(SaLSA, SLS, L4), got {shown}; train it with transformers.Trainer instead"
        )


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
