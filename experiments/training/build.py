"""A run's trainer from its parts, built in the order they depend on each other: the step plan
first, then the learning-rate schedule over the planned steps, the task kind of the data, the loss and
the step adapter of the optimizer's kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import ScheduleConfig, TrainerConfig
from ..data import DataBundle
from ..distributed import Process
from ..logging import Loggers
from .batches import StepBatches
from .callbacks import Callback, ProgressBar
from .evaluation import Evaluator
from .loop import Trainer
from .objective import Objective
from .plan import StepPlan
from .schedule import learning_rate_schedule
from .step_adapters import step_adapter_for
from .task_kinds import task_kind_for


def build_trainer(cfg: TrainerConfig, data: DataBundle, model: nn.Module, optimizer: torch.optim.Optimizer,
                  loggers: Loggers, run_dir: Path, process: Process, *, seed: int,
                  schedule: ScheduleConfig | None = None, forward_model: nn.Module | None = None,
                  callbacks: Sequence[Callback] = ()) -> Trainer:
    """The trainer of ``model`` and ``optimizer`` on ``data`` as ``cfg`` says, in this ``process``
    (its rank's shard of the training data, its device); ``seed`` orders the epochs.

    ``forward_model`` (default: ``model``) is what the loss and the evaluation call, e.g. the
    model's DistributedDataParallel wrapper; ``model`` is what is trained and saved. ``schedule``:
    the learning rate's (``optimizer.schedule``); ``callbacks`` run after the progress bar's."""
    plan = StepPlan.of(cfg, len(data.train), process.world_size)
    scheduler = learning_rate_schedule(optimizer, schedule, plan.total_steps)
    task_kind = task_kind_for(data.spec)
    forward_model = model if forward_model is None else forward_model
    objective = Objective(model, torch.compile(forward_model) if cfg.compile else forward_model, task_kind,
                          cfg.precision, process.device, cfg.max_grad_norm, cfg.accumulation_sum)
    batches = StepBatches(data, task_kind.targets, process.device, seed=seed, batch_size=cfg.batch_size,
                          accumulation_steps=cfg.accumulation_steps, shuffle=cfg.shuffle,
                          num_workers=cfg.num_workers, rank=process.rank, world_size=process.world_size)
    evaluate = Evaluator(data.val, objective, batches, cfg.eval_batch_size or cfg.batch_size)
    progress = [ProgressBar()] if cfg.progress else []
    return Trainer(cfg, plan, model, step_adapter_for(optimizer, objective), batches, evaluate, loggers, run_dir,
                   process, scheduler=scheduler, callbacks=[*progress, *callbacks])
