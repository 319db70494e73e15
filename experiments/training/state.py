"""Where a run is: the trainer's counters, saved in every checkpoint and restored on resume."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .task_kinds import TaskKind


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint (``dataclasses.asdict``)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    loss_ema: float = 0.0
    loss_ema_weight: float = 0.0  # 1 - beta^n, for the bias correction of the EMA
    forwards: int = 0  # for optimizers without diagnostics: one per step
    last_loss: float = math.nan
    elapsed: float = 0.0  # wall time of the steps so far, across resumes
    best_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1
    last_checkpoint_step: int = -1
    bad_steps: int = 0  # steps whose loss or gradient was not finite (skipped)
    consecutive_bad_steps: int = 0
    logged_rows: int = 0  # metrics rows logged so far: a resume tells rows lost from metrics.jsonl
    # What the position (epoch, batch_in_epoch) counts in: the training examples, the ranks and the
    # examples per step of each (StepPlan.stream). A resume mid-epoch continues the same data
    # stream only when they are equal; at an epoch's start, only the examples must be.
    stream: dict[str, int] = field(default_factory=dict)
    # Wall time of the loop's phases, across resumes (experiments/training/stopwatch.py).
    timing: dict[str, float] = field(default_factory=lambda: {"data": 0.0, "step": 0.0, "bookkeeping": 0.0, "eval": 0.0})

    def smoothed_loss(self) -> float:
        return self.loss_ema / self.loss_ema_weight if self.loss_ema_weight else math.nan

    def count_step(self, loss: float, seconds: float, smoothing: float) -> None:
        """A step was taken, in ``seconds``, with ``loss``; a finite loss enters the smoothed loss
        (an EMA with factor ``smoothing``)."""
        self.step += 1
        self.batch_in_epoch += 1
        self.forwards += 1
        self.last_loss = loss
        self.elapsed += seconds
        if math.isfinite(loss):
            self.loss_ema = smoothing * self.loss_ema + (1 - smoothing) * loss
            self.loss_ema_weight = smoothing * self.loss_ema_weight + (1 - smoothing)

    def count_finiteness(self, bad: bool) -> None:
        """Whether the step just taken had a non-finite loss or gradient (and was skipped)."""
        if not bad:
            self.consecutive_bad_steps = 0
            return
        self.bad_steps += 1
        self.consecutive_bad_steps += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    def record_evaluation(self, metrics: dict[str, float], task_kind: TaskKind) -> None:
        """The metrics of an evaluation at this step; the best of each so far, as ``task_kind`` ranks them."""
        self.last_eval = metrics
        self.last_eval_step = self.step
        for key, value in metrics.items():
            previous = self.best_eval.get(key)
            self.best_eval[key] = value if previous is None else task_kind.better(key)(previous, value)
