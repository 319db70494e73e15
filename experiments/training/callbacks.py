"""Hooks into the training loop: the progress bar, and what tests and fault injections need to
watch or disturb a run (a crash at a step, a NaN loss, a signal during an evaluation) without
patching the loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .batches import MicroBatches

if TYPE_CHECKING:
    from .loop import Trainer


class Callback:
    """A hook per moment of :meth:`Trainer.fit <experiments.training.loop.Trainer.fit>`; each does
    nothing unless a subclass overrides it."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of this process (after a resume's checkpoint is loaded)."""

    def on_step_start(self, trainer: Trainer, step: MicroBatches) -> None:
        """Before a step, with its micro-batches on the device (a callback may replace their tensors)."""

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        """After a step is counted and its metrics row logged, before the evaluation and the
        checkpoint it makes due: a crash here loses the step, as a kill would."""

    def on_evaluation_start(self, trainer: Trainer) -> None:
        """Before an evaluation, the evaluation weights in place."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the final evaluation and checkpoint."""


class Callbacks(Callback):
    """Several callbacks, called in their order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(trainer)

    def on_step_start(self, trainer: Trainer, step: MicroBatches) -> None:
        for callback in self.callbacks:
            callback.on_step_start(trainer, step)

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        for callback in self.callbacks:
            callback.on_step_end(trainer, loss)

    def on_evaluation_start(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_evaluation_start(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(trainer)


class ProgressBar(Callback):
    """A tqdm bar of the steps (``trainer.progress``)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.plan.total_steps, initial=trainer.state.step, desc="train",
                        dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.bar.update(1)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.bar.close()
