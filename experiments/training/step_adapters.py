"""How each kind of optimizer takes a step on a step's micro-batches, chosen once per run
(:func:`step_adapter_for`): the loop makes the same call for all of them.

* a line search (:class:`optim.ClosureOptimizer`) gets a closure and evaluates it as often as it
  needs; over several micro-batches it gets their loss, the RNG state of the first forward and a
  closure over all of them for its trials (``step(closure, loss=, rng=)``);
* a PyTorch optimizer gets the forward and backward run for it, and a step whose loss or gradient
  is not finite never reaches it (it has no skip of its own);
* Schedule-Free trains at one point and is evaluated and checkpointed at another: the loop
  switches it with ``train()``/``eval()``;
* Prodigy and D-Adaptation step by ``d * lr``, their ``lr`` being a multiplier.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from optim import ClosureOptimizer, RNGSnapshot

from ..distributed import mean_over_ranks
from .batches import MicroBatches
from .objective import Objective


class StepAdapter(ABC):
    """Takes ``optimizer``'s steps on the loss of ``objective``."""

    # Whether a learning-rate schedule acts on the optimizer's steps.
    follows_schedule: bool = True

    def __init__(self, optimizer: torch.optim.Optimizer, objective: Objective) -> None:
        self.optimizer = optimizer
        self.objective = objective

    def __call__(self, step: MicroBatches) -> tuple[float, bool]:
        """One optimizer step on ``step``'s micro-batches; returns the step's loss (the mean over
        ranks) and whether the step was skipped because the loss or the gradient was not finite."""
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(step)

    @abstractmethod
    def _step(self, step: MicroBatches) -> tuple[float, bool]: ...

    def step_size(self) -> float:
        """The step size of the last step (of the next one, before any)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def forwards(self) -> int | None:
        """The forwards the optimizer counted so far; ``None``: one per step (the loop counts them)."""
        return None

    def use_training_weights(self) -> None:
        """Put the point that training steps from in the parameters (this optimizer trains and is
        evaluated at the same one)."""

    def use_evaluation_weights(self) -> None:
        """Put the point to evaluate and checkpoint in the parameters."""

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """The evaluation weights in place for the body, the training point again after it."""
        self.use_evaluation_weights()
        try:
            yield
        finally:
            self.use_training_weights()


class LineSearchStep(StepAdapter):
    """SaLSA, SLS, L4: the step size is the search's, the step's loss and skip its diagnostics'."""

    follows_schedule = False  # the search sets its own step size; a group's lr only mirrors it
    optimizer: ClosureOptimizer

    def _step(self, step: MicroBatches) -> tuple[float, bool]:
        skipped_before = self.optimizer.diagnostics.n_skipped
        if len(step.batches) == 1:
            self.optimizer.step(self.objective.closure(step.batches[0]))
        else:
            rng = RNGSnapshot(self.objective.model.parameters())  # before the first forward: trials replay it
            loss = self.objective.backward(step)
            self.optimizer.step(self.objective.trials(step), loss=loss, rng=rng)
        diagnostics = self.optimizer.diagnostics
        return float(diagnostics.loss), diagnostics.n_skipped > skipped_before  # L0, averaged over ranks

    def step_size(self) -> float:
        return float(self.optimizer.diagnostics.step_size)

    def forwards(self) -> int:
        return int(self.optimizer.diagnostics.n_forwards)


class GuardedStep(StepAdapter):
    """A PyTorch optimizer's step from the gradient of the step's loss, taken only when the loss
    and the gradient are finite: otherwise they would land in the parameters and the moments."""

    def _step(self, step: MicroBatches) -> tuple[float, bool]:
        loss = mean_over_ranks(self.objective.backward(step).detach())  # the same loss on every rank
        grads = [p.grad for p in self.objective.model.parameters() if p.grad is not None]
        grad_norm = torch.stack(torch._foreach_norm(grads)).norm() if grads else torch.zeros(())
        finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        return loss.item(), not finite


class ScheduleFreeStep(GuardedStep):
    """Schedule-Free: the parameters are an interpolation y while training and the averaged
    weights x for evaluation, and the optimizer must be in eval mode when checkpointed (its
    README). A checkpoint therefore holds x with the optimizer in eval mode, and a resume switches
    back to train mode: the same ``x -> y`` conversion as after the checkpoint of the
    uninterrupted run, so both continue from the same parameters."""

    def use_training_weights(self) -> None:
        self.optimizer.train()

    def use_evaluation_weights(self) -> None:
        self.optimizer.eval()


class AdaptedStep(GuardedStep):
    """Prodigy, D-Adaptation: the step size is ``d * lr``, ``d`` adapted in the param groups."""

    def step_size(self) -> float:
        group = self.optimizer.param_groups[0]
        return float(group["lr"] * group["d"])


def step_adapter_for(optimizer: torch.optim.Optimizer, objective: Objective) -> StepAdapter:
    """The adapter of ``optimizer``'s kind."""
    if isinstance(optimizer, ClosureOptimizer):
        return LineSearchStep(optimizer, objective)
    if callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None)):
        return ScheduleFreeStep(optimizer, objective)  # torch's optimizers have neither method
    if "d" in optimizer.param_groups[0]:
        return AdaptedStep(optimizer, objective)
    return GuardedStep(optimizer, objective)
