"""How many steps a run takes, known before anything that depends on it (the learning-rate
schedule, the trainer) is built, and whether a checkpoint's place still means the same."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import TrainerConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class StepPlan:
    """The steps of a run, counted in optimizer steps of this process (one rank of ``ranks``)."""

    train_examples: int  # the training split, over all ranks
    ranks: int
    examples_per_step: int  # per rank: batch_size * accumulation_steps
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, cfg: TrainerConfig, train_examples: int, ranks: int = 1) -> StepPlan:
        """The plan of ``cfg`` on a training split of ``train_examples`` read by ``ranks`` processes."""
        if not train_examples:
            raise ConfigError("the training split is empty: there is nothing to train on")
        examples_per_step = cfg.batch_size * cfg.accumulation_steps
        steps_per_epoch = math.ceil(math.ceil(train_examples / ranks) / examples_per_step)
        return cls(train_examples, ranks, examples_per_step, steps_per_epoch,
                   cfg.max_steps or cfg.epochs * steps_per_epoch)

    def stream(self) -> dict[str, int]:
        """What a place in an epoch counts in (a checkpoint records it: ``TrainState.stream``)."""
        return {"train_examples": self.train_examples, "ranks": self.ranks,
                "examples_per_step": self.examples_per_step}

    def resume_problem(self, saved: dict[str, Any]) -> str | None:
        """Why the run cannot continue from the trainer state ``saved`` (a checkpoint's) along the
        same data stream, or ``None`` when it can: the stream it counted in changed, or its place
        lies past the end of an epoch as the epoch is now (a loop there would take no step)."""
        before, now = saved.get("stream") or {}, self.stream()
        # At an epoch's start the place means the same in any split of the epoch: a torchrun run
        # may be continued by one process (only the examples themselves must be the same).
        compared = now if saved["batch_in_epoch"] else {"train_examples": now["train_examples"]}
        changed = [f"{key} {before[key]} -> {now[key]}" for key in compared if key in before and before[key] != now[key]]
        if changed:
            return (f"the checkpoint of step {saved['step']} was taken in another data stream ({', '.join(changed)}): "
                    "its place in the epoch means other examples now. Resume with the same data, number of "
                    "processes and batch size, or start a new run in another directory")
        if saved["batch_in_epoch"] >= self.steps_per_epoch:
            return (f"the checkpoint of step {saved['step']} lies at step {saved['batch_in_epoch']} of epoch "
                    f"{saved['epoch']}, past the end of an epoch as it is now ({self.steps_per_epoch} steps): the "
                    "training data, the number of processes or the batch size changed. Resume as the run was "
                    "started, or start a new run in another directory")
        return None
