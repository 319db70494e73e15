"""The learning-rate schedule of the baselines, over the steps a run plans."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import ScheduleConfig


def cosine_warmup(warmup_fraction: float, final_factor: float, total_steps: int,
                  warmup_steps: int | None = None, cosine_after_warmup: bool = False) -> Callable[[int], float]:
    """The baselines' schedule as a LambdaLR factor: linear warm-up from 0 over
    W = ceil(warmup_fraction * T) steps (or ``warmup_steps``) times a cosine from 1 to
    ``final_factor``, over T (the paper's NLP runs) or over the T - W steps after the warm-up
    (``cosine_after_warmup``: nanoGPT's ``get_lr``)."""
    warmup = math.ceil(warmup_fraction * total_steps) if warmup_steps is None else warmup_steps
    start = warmup if cosine_after_warmup else 0

    def factor(step: int) -> float:
        if step < start:  # nanoGPT's warm-up: lr * t / W, no cosine yet
            return step / warmup
        progress = min(step - start, total_steps - start) / max(total_steps - start, 1)
        cosine = final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        return cosine * (step / warmup if step <= warmup and warmup else 1.0)

    return factor


def learning_rate_schedule(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig | None,
                           total_steps: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """``optimizer.schedule`` over ``total_steps`` steps, stepped after every step (``None``: a
    constant learning rate)."""
    if schedule is None:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_warmup(schedule.warmup_fraction, schedule.final_factor, total_steps,
                                 schedule.warmup_steps, schedule.cosine_after_warmup)
    )
