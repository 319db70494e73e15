"""Lightning: train a ``LightningModule`` with SaLSA, SLS or L4 through manual optimization.

Subclass :class:`LineSearchModule`, implement ``compute_loss(batch)`` and return one optimizer
(and no scheduler) from ``configure_optimizers``::

    from optim import SaLSA
    from optim.integrations.lightning import LineSearchModule

    class Classifier(LineSearchModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 3)

        def compute_loss(self, batch):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return SaLSA(self.parameters())

    lightning.pytorch.Trainer(max_steps=100).fit(Classifier(), train_dataloader)

Or keep your own ``training_step`` (with ``self.automatic_optimization = False``) and call
:func:`line_search_step` in it: ``loss = line_search_step(self, lambda: loss_of(batch))``.

Why manual optimization: Lightning's automatic loop hands the optimizer a closure that runs the
backward itself on every call, which a line search cannot call again under ``torch.no_grad()``
for its trials. Here the first forward and its backward run in ``training_step`` (the backward
through ``manual_backward``, so strategies and precision plugins apply), and
``optimizer.step(closure, loss=L0, rng=...)`` goes through the ``LightningOptimizer`` (step
counting, profiling, the strategy's ``optimizer_step``) with a closure that the trials call.

As for ``torch.optim.LBFGS``, Lightning runs ``on_before_optimizer_step`` after each closure
call, so once per trial here (never for L4, which makes no trials). Gradient clipping and
``accumulate_grad_batches`` are not available in manual optimization; ``"bf16-mixed"`` works,
``"16-mixed"`` does not (its ``GradScaler`` steps the optimizer without the closure).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule
from torch import Tensor

from .. import ClosureOptimizer, LineSearchOptimizer, RNGSnapshot

__all__ = ["LineSearchModule", "line_search_step"]


def line_search_step(module: LightningModule, compute_loss: Callable[[], Tensor]) -> Tensor:
    """One step of ``module``'s optimizer on the loss ``compute_loss()``; returns L0, detached.

    ``compute_loss`` evaluates the loss of the current batch: once with gradients (then
    ``module.manual_backward``), and again, under ``torch.no_grad()`` with the first forward's
    dropout masks, for every trial the search makes. The optimizer's ``diagnostics`` are logged
    with ``module.log`` (``step_size`` also on the progress bar).

    Raises:
        ValueError / TypeError: before any parameter moves, when ``module`` uses automatic
            optimization, has more than one optimizer, one that is not SaLSA, SLS or L4, a
            learning-rate scheduler, or a ``GradScaler`` (``precision="16-mixed"``).
    """
    optimizer = module.optimizers()
    closure_optimizer = _check_setup(module, optimizer)
    rng = RNGSnapshot(module.parameters())  # before the forward: trials replay its dropout masks
    optimizer.zero_grad()
    loss = compute_loss()
    module.manual_backward(loss)
    step_kwargs: dict[str, Any] = {"loss": loss.detach()}
    if isinstance(closure_optimizer, LineSearchOptimizer):  # L4 makes no trials and takes no rng
        step_kwargs["rng"] = rng
    optimizer.step(closure=compute_loss, **step_kwargs)
    _log_diagnostics(module, closure_optimizer)
    return loss.detach()


class LineSearchModule(LightningModule):
    """A ``LightningModule`` whose training step is :func:`line_search_step` on
    :meth:`compute_loss`; it logs ``train_loss`` and the optimizer's diagnostics.

    Subclasses implement :meth:`compute_loss` and ``configure_optimizers`` (one SaLSA, SLS or L4,
    no scheduler).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def compute_loss(self, batch: Any) -> Tensor:
        """The loss of ``batch`` (a scalar tensor); called for the first evaluation and the trials."""
        raise NotImplementedError(f"{type(self).__name__}: implement compute_loss(batch) -> Tensor")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = line_search_step(self, lambda: self.compute_loss(batch))
        self.log("train_loss", loss, prog_bar=True)
        return loss


def _check_setup(module: LightningModule, optimizer: Any) -> ClosureOptimizer:
    """The closure optimizer behind ``module.optimizers()``, after checking the set-up."""
    if module.automatic_optimization:
        raise ValueError(
            f"{type(module).__name__}: line_search_step needs manual optimization; set "
            "self.automatic_optimization = False (LineSearchModule does)"
        )
    if isinstance(optimizer, list):
        raise TypeError(
            f"configure_optimizers: line_search_step steps one optimizer, got {len(optimizer)}"
        )
    inner = getattr(optimizer, "optimizer", optimizer)  # inside the LightningOptimizer
    if not isinstance(inner, ClosureOptimizer):
        raise TypeError(
            f"configure_optimizers: line_search_step steps the optimizers of `optim` (SaLSA, SLS, "
            f"L4), got {type(inner).__module__}.{type(inner).__qualname__}"
        )
    schedulers = module.lr_schedulers()
    if schedulers is not None:
        names = [type(s).__name__ for s in (schedulers if isinstance(schedulers, list) else [schedulers])]
        raise ValueError(
            f"configure_optimizers: got the learning-rate scheduler(s) {names}, but a line search "
            "chooses its step size itself at every step; return the optimizer alone"
        )
    if getattr(module.trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            "precision: a GradScaler (precision='16-mixed') steps the optimizer without the "
            "closure its trials need; use precision='bf16-mixed' or '32-true'"
        )
    return inner


def _log_diagnostics(module: LightningModule, optimizer: ClosureOptimizer) -> None:
    diagnostics = optimizer.diagnostics
    module.log("step_size", float(diagnostics.step_size), prog_bar=True)
    # "loss" is L0, which the caller logs under its own name.
    rest = {k: float(v) for k, v in diagnostics.items() if k not in ("step_size", "loss")}
    module.log_dict(rest)
