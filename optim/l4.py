r"""L4: the linearised loss-based step size of Rolínek & Martius (NeurIPS 2018).

With a direction :math:`v` (Adam's :math:`\hat m/(\sqrt{\hat v}+\epsilon)` with
:math:`\epsilon=10^{-4}` for L4Adam, or the momentum :math:`\hat g` for L4Mom) and the
bias-corrected gradient EMA :math:`\hat g` (:math:`\beta_1 = 0.9`), each step takes

.. math::
    \eta = \alpha\,\frac{L - \gamma L_{\min}}{\langle v, \hat g\rangle + \varepsilon},\qquad
    \theta \leftarrow \theta - \eta v,

where :math:`L_{\min}` starts at :math:`\gamma_0 L`, tracks :math:`\min(L_{\min}, L)` and is
relaxed by :math:`(1 + 1/\tau)` after every step. L4 assumes a non-negative loss (a
cross-entropy, say). Unlike the reference, a step with :math:`\langle v, \hat g\rangle \le 0`
or a non-finite step size is skipped and counted rather than taken, and a step size above
:data:`~optim.line_search.MAX_STEP_SIZE` is capped there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ._base import ClosureOptimizer
from ._checks import check_fused, check_moments, check_positive, check_unit
from ._evaluation import LossEvaluator, check_closure, host_floats
from .diagnostics import L4Diagnostics
from .directions import AdamDirection, FusedAdamDirection, StepStart, adam_direction, inner, rescale
from .line_search import MAX_STEP_SIZE


@dataclass(frozen=True)
class L4Rule:
    """L4's hyperparameters as one step reads them (see :class:`L4` for their meaning)."""

    direction: Literal["adam", "momentum"]
    alpha: float
    gamma: float
    gamma0: float
    tau: float
    epsilon: float
    beta1: float

    def __post_init__(self) -> None:
        if self.direction not in ("adam", "momentum"):
            raise ValueError(f"direction must be 'adam' or 'momentum', got {self.direction!r}")
        check_positive("alpha", self.alpha)
        check_unit("gamma", self.gamma)
        check_unit("gamma0", self.gamma0)
        check_positive("tau", self.tau, inf=True)  # inf: L_min is never relaxed
        check_positive("epsilon", self.epsilon, zero=True)


class L4(ClosureOptimizer):
    r"""L4Adam (``direction="adam"``) or L4Mom (``direction="momentum"``).

    Every argument but ``params`` and ``process_group`` is a hyperparameter: an entry of each
    param group, read at every step (see :class:`~optim.ClosureOptimizer`); only
    ``weight_decay`` may differ between groups. The state, entries of every group: ``min_loss``
    (:math:`L_{\min}`), ``step_size`` (the last eta), ``step`` and the counters.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        direction: ``"adam"`` or ``"momentum"``.
        alpha: the fraction of the linearised gap taken per step (``fraction``).
        gamma: ``minloss_factor``: the step aims at ``gamma * L_min``.
        gamma0: ``init_factor``: L_min starts at ``gamma0 * L``.
        tau: ``minloss_forget_time``: L_min relaxes by ``1 + 1/tau`` per step.
        betas: beta1 (also the gradient EMA of g_hat), beta2 (Adam only).
        eps: Adam's epsilon in v (1e-4 in the reference).
        epsilon: added to ``<v, g_hat>`` (1e-12).
        weight_decay: decoupled, theta <- theta (1 - wd eta).
        fused: L4Adam's moments, inner product and step through the fused kernels of
            :mod:`optim._fused` (two passes, no buffer): ``None`` (default) where the parameters'
            devices have them, ``True`` required (an error at construction otherwise), ``False``
            foreach ops. L4Mom has nothing to fuse (``True`` is refused).
        process_group: the ranks whose losses are averaged before deciding eta.
    """

    release_0_1_0_key = "l4"

    def __init__(
        self,
        params: Any,
        direction: Literal["adam", "momentum"] = "adam",
        alpha: float = 0.15,
        gamma: float = 0.9,
        gamma0: float = 0.75,
        tau: float = 1000.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        epsilon: float = 1e-12,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        defaults = dict(
            lr=0.0, direction=direction, alpha=alpha, gamma=gamma, gamma0=gamma0, tau=tau,
            betas=tuple(betas), eps=eps, epsilon=epsilon, weight_decay=weight_decay, fused=fused,
        )
        super().__init__(params, defaults, process_group)

    def _configure(self, group: dict[str, Any]) -> tuple[L4Rule, AdamDirection | FusedAdamDirection]:
        check_moments(group["betas"], group["eps"])  # beta2 too, although L4Mom does not use it
        check_fused(group["fused"])
        beta1, beta2 = group["betas"]
        rule = L4Rule(
            group["direction"], group["alpha"], group["gamma"], group["gamma0"], group["tau"],
            group["epsilon"], beta1,
        )
        if rule.direction == "adam":
            return rule, adam_direction((beta1, beta2), group["eps"], group["fused"], self._device_types())
        if group["fused"]:
            raise ValueError("fused=True: L4Mom (direction='momentum') has no fused path; pass fused=None")
        # L4Mom's v is the bias-corrected gradient EMA itself; beta2 is then unused.
        return rule, AdamDirection((beta1, 0.0), group["eps"])

    def _initial_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super()._initial_state(group), "min_loss": math.nan}

    @property
    def diagnostics(self) -> L4Diagnostics:
        """The last step size, L_min and the counters (no searches: those counters stay 0)."""
        state = self.param_groups[0]
        return L4Diagnostics(
            **self._counters(state), n_backtracks=0, n_searches=0, n_failed_searches=0,
            min_loss=state["min_loss"],
        )

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Any = None,
        *,
        loss: Tensor | float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """One L4 step with the param groups' current hyperparameters; returns the loss.

        Args:
            closure: ``closure(backwards: bool = False)`` or ``closure()`` (see
                :meth:`LineSearchOptimizer.step`); L4 calls it once.
            loss: L0 when the caller already ran the forward and backward; no closure is then
                needed (L4 makes no trials).
            grad_scaler: as in :meth:`LineSearchOptimizer.step`.
        """
        if closure is None and loss is None:
            check_closure(closure)  # raises, naming both conventions
        state = self._shared_group()
        rule, moments = self._configuration(state)
        try:
            return self._step(state, rule, moments, closure, loss, grad_scaler)
        finally:
            self._publish(state)

    def _step(
        self,
        state: dict[str, Any],
        rule: L4Rule,
        moments: AdamDirection | FusedAdamDirection,
        closure: Any,
        loss: Tensor | float | None,
        grad_scaler: torch.amp.GradScaler | None,
    ) -> Tensor:
        all_params = [p for g in self.param_groups for p in g["params"]]
        evaluate = LossEvaluator(closure, all_params, None, loss)
        loss, loss0, grad_sq, _, t = self._first_evaluation(state, evaluate, grad_scaler)
        if t is None:
            return loss
        bias1 = 1.0 - rule.beta1**t.step
        if rule.direction == "adam":
            # s * <m, P_raw m> = <m, P m_hat> (P_raw m = m / (sqrt(v) + eps_hat)), and
            # <v, g_hat> = <P m_hat, m / bias1>: the moments and the inner product in one pass.
            dot_vm, v_scale = moments.begin_step(t, StepStart(inner=("exp_avg", "momentum")), grad_sq)
            (dot,) = host_floats([self._summed_over_shards(dot_vm)], self.group_for_decisions)
            dot *= v_scale / bias1
        else:
            moments.begin_step(t, StepStart(), grad_sq)
            v = [s["exp_avg"] for s in t.states]  # v = g_hat = m / bias1
            (dot,) = host_floats([self._summed_over_shards(inner(v, v))], self.group_for_decisions)
            dot /= bias1 * bias1
            v_scale = 1.0 / bias1

        min_loss = state["min_loss"]
        min_loss = rule.gamma0 * loss0 if math.isnan(min_loss) else min(min_loss, loss0)
        eta = rule.alpha * (loss0 - rule.gamma * min_loss) / (dot + rule.epsilon)
        if dot > 0 and math.isfinite(eta):
            eta = min(eta, MAX_STEP_SIZE)  # a vanishing <v, g_hat> must not overflow the move
            decays = t.decays(eta)
            if decays is not None:
                rescale(t.params, decays)
            if rule.direction == "adam":
                moments.move(t, {"momentum": -eta})
            else:
                torch._foreach_add_(t.params, v, alpha=-eta * v_scale)
            state["step_size"] = eta
            self._set_lr(eta)
        else:
            state["n_skipped"] += 1
        state["min_loss"] = min_loss * (1.0 + 1.0 / rule.tau)
        return loss
