"""The training loop: steps as planned, a metrics row per step, evaluations and checkpoints when
due, a stop signal honoured after the step in progress.

What a step does for each kind of optimizer is its step adapter's (``step_adapters.py``), what a
loss and a metric are is the task's (``task_kinds.py``), which examples a step reads is the batches'
(``batches.py``); the loop only orders them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import restore_training, save_checkpoint, training_payload
from ..config import TrainerConfig
from ..distributed import Process, max_over_ranks
from ..logging import Loggers
from ..errors import Interrupted, TrainingDiverged
from ..signals import StopRequest, signal_name, stop_requested
from .batches import StepBatches
from .callbacks import Callback, Callbacks
from .evaluation import Evaluator
from .plan import StepPlan
from .state import TrainState
from .step_adapters import StepAdapter
from .stopwatch import Stopwatch


class Trainer:
    """Trains ``model`` by ``step`` on ``batches`` for ``plan.total_steps`` steps, as ``cfg`` says
    (intervals, smoothing, checkpoints kept), logging to ``loggers`` and checkpointing into
    ``run_dir``; only rank 0 of ``process`` writes checkpoints."""

    def __init__(self, cfg: TrainerConfig, plan: StepPlan, model: nn.Module, step: StepAdapter,
                 batches: StepBatches, evaluate: Evaluator, loggers: Loggers, run_dir: Path, process: Process, *,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.cfg, self.plan, self.model, self.step, self.batches = cfg, plan, model, step, batches
        self.evaluate, self.loggers, self.run_dir, self.process = evaluate, loggers, run_dir, process
        self.scheduler = scheduler
        self.callbacks = Callbacks(callbacks)
        self.state = TrainState(stream=plan.stream())
        self._last_checkpoint_time = time.monotonic()  # for trainer.checkpoint_minutes
        if scheduler is not None and not step.follows_schedule:
            warnings.warn(f"{type(scheduler).__name__} has no effect on {type(step.optimizer).__name__}: a line "
                          "search sets its own step size at every step, and a group's lr only mirrors it; "
                          "drop the scheduler", UserWarning, stacklevel=2)

    def fit(self) -> dict[str, Any]:
        """Train to the planned step; returns the summary fields of the run."""
        state, plan = self.state, self.plan
        self.model.train()
        self.step.use_training_weights()  # a fresh optimizer, or one restored from an eval-mode checkpoint
        self.callbacks.on_fit_start(self)
        self.clock = Stopwatch(state.timing)  # the timing of the state fit continues (load() replaced it)
        # A stop signal means "checkpoint after this step and stop" while training, and "finish
        # the final evaluation and checkpoint" after it.
        with stop_requested() as stop:
            while state.step < plan.total_steps:
                step_before = state.step
                for micro_batches in self.batches.rest_of_epoch(state.epoch, state.batch_in_epoch):
                    self.callbacks.on_step_start(self, micro_batches)
                    waited = self.clock.lap("data")
                    loss, skipped = self.step(micro_batches)
                    if self.scheduler is not None:
                        self.scheduler.step()
                    self._count_step(loss, skipped or not math.isfinite(loss), waited + self.clock.lap("step"))
                    self.callbacks.on_step_end(self, loss)
                    self.clock.lap("bookkeeping")
                    self._evaluate_or_checkpoint_when_due()
                    self._stop_if_signalled(stop)
                    if state.step >= plan.total_steps:
                        break
                if state.step == step_before:  # a loop must make progress or stop, never spin
                    raise RuntimeError(f"epoch {state.epoch} has no batch left from step {state.batch_in_epoch} "
                                       f"of {plan.steps_per_epoch}: the position does not fit the data")
            # The trained model is the evaluation weights: those of the final evaluation and
            # checkpoint. A stop signal now lets both finish, as one during an evaluation in
            # training does: they complete the run, and stopping between them would lose the
            # training of a run that checkpoints only at the end.
            self.step.use_evaluation_weights()
            if state.last_eval_step != state.step:
                self._evaluate()
            if state.last_checkpoint_step != state.step:
                self._checkpoint()
        self.callbacks.on_fit_end(self)
        return self.summary()

    def _count_step(self, loss: float, bad: bool, seconds: float) -> None:
        """Count the step just taken and log its row. Steps with a non-finite loss or gradient are
        skipped by the step itself; only a storm of them in a row ends the run, with the last good
        checkpoint kept."""
        state, cfg = self.state, self.cfg
        state.count_step(loss, seconds, cfg.loss_smoothing)
        if state.step % cfg.log_interval == 0 or state.step == self.plan.total_steps:
            self._log({"step": state.step, "epoch": state.epoch, "loss": loss,
                       "smoothed_loss": state.smoothed_loss(), "step_size": self.step.step_size(),
                       "forwards": self._forwards(), "time": state.elapsed})
        if state.batch_in_epoch == self.plan.steps_per_epoch:
            state.next_epoch()
        state.count_finiteness(bad)
        if state.consecutive_bad_steps >= cfg.max_bad_steps:
            last_good = (f"the last good checkpoint is step {state.last_checkpoint_step}"
                         if state.last_checkpoint_step >= 0 else "no checkpoint was written before")
            raise TrainingDiverged(
                f"{state.consecutive_bad_steps} consecutive steps (up to step {state.step}) had a "
                f"non-finite loss or gradient; {last_good}. Check the data and the model's numerics "
                "(or raise trainer.max_bad_steps)"
            )

    def _evaluate_or_checkpoint_when_due(self) -> None:
        state, cfg = self.state, self.cfg
        eval_due = _due(state.step, cfg.eval_interval) if cfg.eval_interval else state.batch_in_epoch == 0
        checkpoint_due = _due(state.step, cfg.checkpoint_interval) and not state.consecutive_bad_steps
        if eval_due or checkpoint_due:
            with self.step.evaluation_weights():  # one switch for both: they see the same weights
                if eval_due:
                    self._evaluate()
                if checkpoint_due or self._timed_checkpoint_due():
                    self._checkpoint()
        elif self._timed_checkpoint_due():
            # At the training weights: switching a Schedule-Free optimizer to its evaluation
            # weights and back is not exact in floating point, and a checkpoint whose timing
            # depends on the machine must leave the trajectory as it is.
            self._checkpoint()

    def _timed_checkpoint_due(self) -> bool:
        """``trainer.checkpoint_minutes`` have passed since the last checkpoint (or the start of
        this process), and the last step was good (the last good checkpoint is kept)."""
        minutes = self.cfg.checkpoint_minutes
        elapsed = time.monotonic() - self._last_checkpoint_time
        return bool(minutes) and elapsed >= 60 * minutes and not self.state.consecutive_bad_steps

    def _stop_if_signalled(self, stop: StopRequest) -> None:
        """Checkpoint and stop when any rank received a stop signal (the larger number where ranks
        saw different ones): the ranks see a signal between different steps, and all must stop
        after the same one (rank 0 would otherwise wait for the others)."""
        signum = stop.signum
        if self.process.world_size > 1:
            signum = int(max_over_ranks(torch.tensor(signum, device=self.process.device)))
        if not signum:
            return
        with self.step.evaluation_weights():
            self._checkpoint()
        raise Interrupted(f"stopped by {signal_name(signum)} after step {self.state.step}; a checkpoint is "
                          "written: continue with trainer.resume=true", signum)

    def _evaluate(self) -> None:
        """Evaluate, keep the best of each metric and log; call it with the evaluation weights in place."""
        self.callbacks.on_evaluation_start(self)
        metrics = self.evaluate()
        self.clock.lap("eval")
        self.state.record_evaluation(metrics, self.evaluate.objective.task_kind)
        self._log({"step": self.state.step, "epoch": self.state.epoch, **metrics})

    def _checkpoint(self) -> None:
        """Save the run; call it with the evaluation weights in place, or, for a timed checkpoint,
        with the training weights: the optimizer's state records which (Schedule-Free's
        ``train_mode``), and a resume switches to training weights either way."""
        self._last_checkpoint_time = time.monotonic()
        self.state.last_checkpoint_step = self.state.step
        self.loggers.flush()  # a resume drops the rows after the checkpoint, and only those
        if self.process.is_main:  # the ranks hold the same state; every rank reads it on resume
            payload = training_payload(self.model, self.step.optimizer, self.scheduler, asdict(self.state))
            save_checkpoint(self.run_dir, self.state.step, payload, self.cfg.keep_checkpoints)
        self.clock.lap("bookkeeping")

    def _log(self, row: dict[str, Any]) -> None:
        self.state.logged_rows += 1
        self.loggers.log(row)

    def _forwards(self) -> int:
        counted = self.step.forwards()
        return self.state.forwards if counted is None else counted

    # -- the run's state ----------------------------------------------------------------------
    def load(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint's payload, which :meth:`StepPlan.resume_problem` has accepted."""
        place = restore_training(payload, self.model, self.step.optimizer, self.scheduler)
        self.state = TrainState(**{**place, "stream": self.plan.stream()})

    def forward_backward(self) -> Callable[[], None]:
        """One forward and backward on a training batch, the gradients dropped after: the least a
        step costs (``experiments/speed.py`` times it once training is over)."""
        return self.step.objective.forward_backward(self.batches.first_batch())

    def summary(self) -> dict[str, Any]:
        """The summary fields of the run so far."""
        state = self.state
        timing = dict(state.timing)
        overhead = (timing["data"] + timing["bookkeeping"]) / timing["step"] if timing["step"] else math.nan
        return {
            "steps": state.step,
            "epochs": state.epoch,
            "forwards": self._forwards(),
            "final_loss": state.last_loss,
            "final_smoothed_loss": state.smoothed_loss(),
            "final_step_size": self.step.step_size(),
            **{f"final_{k}": v for k, v in state.last_eval.items()},
            **{f"best_{k}": v for k, v in state.best_eval.items()},
            "bad_steps": state.bad_steps,
            "train_time": state.elapsed,
            "timing": timing,
            "harness_overhead": overhead,
        }


def _due(step: int, interval: int) -> bool:
    """Whether ``step`` is a multiple of ``interval`` (never for 0: no interval)."""
    return bool(interval) and step % interval == 0
