"""What every closure-driven optimizer of this package shares: param-group rules, the first
evaluation with its finiteness check, decoupled weight decay and the ``lr`` mirror."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._evaluation import LossEvaluator, default_process_group, host_floats
from ._sharding import check_sharding, local
from .directions import StepTensors, inner


class ClosureOptimizer(torch.optim.Optimizer):
    """Base of SaLSA, SLS and L4.

    Scalars that must survive ``state_dict()`` (step size, EMAs, counters) live in the plain dict
    ``self.state[self.scalars_key]``; per-parameter tensors in ``self.state[p]``. Only
    ``weight_decay`` (and the read-only ``lr`` mirror of the current step size) may differ
    between param groups: one loss decides one step size for all parameters.

    Parameters sharded by FSDP2 (``fully_shard``) are worked on shard by shard: the per-parameter
    state holds this rank's shard (save and load it per rank), and inner products are summed over
    the ranks while losses are averaged, so every rank accepts the same step.
    """

    scalars_key = "scalars"
    _group_level_keys = frozenset({"params", "weight_decay", "lr"})

    def __init__(self, params: Any, defaults: dict[str, Any], process_group: dist.ProcessGroup | None) -> None:
        self.process_group = process_group
        super().__init__(params, defaults)

    @property
    def scalars(self) -> dict[str, Any]:
        return self.state[self.scalars_key]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        defaults = getattr(self, "defaults", {})
        for key, value in param_group.items():
            if key in self._group_level_keys or key not in defaults:
                continue
            if value != defaults[key]:
                raise ValueError(
                    f"{key} is a setting of the whole optimizer (one loss decides one step size "
                    f"for all parameters); set it on the optimizer, not in a param group"
                )
        weight_decay = param_group.get("weight_decay", defaults.get("weight_decay", 0.0))
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        super().add_param_group(param_group)
        self.sharded = check_sharding(
            (p for group in self.param_groups for p in group["params"]), self.process_group
        )

    def _summed_over_shards(self, local_inner: Tensor) -> Tensor:
        """An inner product over this rank's shards, scaled so that the average over ranks (the
        reduction of every decision) gives the inner product over the whole parameters: times the
        number of ranks when the parameters are FSDP2 shards, else unchanged."""
        group = self.group_for_decisions
        if self.sharded and group is not None:
            return local_inner * float(dist.get_world_size(group))
        return local_inner

    def _step_tensors(self, step: int) -> StepTensors:
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in with_grad):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        states = [self.state[p] for p in with_grad]
        if self.sharded:
            params, grads = [local(p) for p in with_grad], [local(p.grad) for p in with_grad]
            return StepTensors(params, grads, states, step)
        return StepTensors(with_grad, [p.grad for p in with_grad], states, step)

    def _first_evaluation(
        self, evaluate: LossEvaluator, grad_scaler: torch.amp.GradScaler | None
    ) -> tuple[Tensor, float, Tensor, float, StepTensors] | tuple[Tensor, None, None, None, None]:
        """L0 with its backward; returns (loss, L0, ||g||^2 as a tensor and as a float, tensors), or
        (loss, None, None, None, None)
        when L0 or the gradient is not finite (the step is then skipped and counted). A first
        evaluation the caller ran (``loss=``) counts as one forward and one backward."""
        scalars = self.scalars
        loss = evaluate.first(grad_scaler)
        scalars["n_forwards"] += 1
        scalars["n_backwards"] += 1
        if grad_scaler is not None:
            grad_scaler.unscale_(self)
        tensors = self._step_tensors(scalars["step"] + 1)
        grad_sq = inner(tensors.grads, tensors.grads)
        # The one sync of the first evaluation: L0 and ||g||^2, which is finite iff g is.
        values = [loss, self._summed_over_shards(grad_sq)]
        loss0, grad_sq_value = host_floats(values, self.group_for_decisions)
        scalars["last_loss"] = loss0
        if not (math.isfinite(loss0) and math.isfinite(grad_sq_value)):
            scalars["n_skipped"] += 1
            return loss, None, None, None, None
        scalars["step"] = tensors.step
        return loss, loss0, grad_sq, grad_sq_value, tensors

    @property
    def group_for_decisions(self) -> dist.ProcessGroup | None:
        """The process group whose ranks must agree (``None`` on a single rank)."""
        return default_process_group(self.process_group)

    def _decay_weights(self, step_size: float) -> None:
        """Decoupled weight decay, per group: theta <- theta (1 - wd * step_size)."""
        for group in self.param_groups:
            wd = group["weight_decay"]
            if wd:
                decayed = [local(p) for p in group["params"] if p.grad is not None]
                if decayed:
                    torch._foreach_mul_(decayed, 1.0 - wd * step_size)

    def _set_lr(self, step_size: float) -> None:
        """Mirror the current step size into every group's ``lr`` for LR monitors."""
        for group in self.param_groups:
            group["lr"] = step_size

    @staticmethod
    def _initial_scalars() -> dict[str, Any]:
        """The counters every subclass keeps (it adds its own scalars)."""
        return {
            "step_size": math.nan, "step": 0, "n_forwards": 0, "n_backwards": 0, "n_skipped": 0,
            "last_loss": math.nan,
        }
