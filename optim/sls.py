r"""SLS: the plain stochastic Armijo line search of Vaswani et al. (NeurIPS 2019).

Accept the first trial with :math:`L_0 - L_1 \ge c\,\eta\,\langle g, d\rangle`, where
:math:`\langle g, d\rangle = \|g\|^2` (SGD direction) or :math:`\sum g^2 P` (Adam-preconditioned),
backtracking :math:`\eta \leftarrow \beta_b \eta`. Each step starts from
:math:`\eta_{t-1}\gamma^{1/n}` (``reset_option=1``), :math:`\eta_{t-1}` (0) or the initial step
size (2), optionally capped at ``eta_max``.

At its defaults the class is the reference's ``Sls`` (Armijo, ``IssamLaradji/sls``) rule for rule:
the search runs only when :math:`\|g\| \ge 10^{-8}` (otherwise no step is taken and the grown
:math:`\eta` is stored), the Armijo :math:`\eta` is not capped (the reference caps only its
Goldstein variant), and a search whose 100 trials all fail moves :math:`\theta_0` by the fixed
:math:`10^{-6} g` while storing the shrunk :math:`\eta`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch.distributed as dist
from torch import nn

from ._checks import check_positive
from .directions import AdamDirection, FusedAdamDirection, SGDDirection
from .line_search import LineSearchOptimizer, SearchRule, make_direction


class SLS(LineSearchOptimizer):
    r"""Stochastic line search (``IssamLaradji/sls`` defaults), SGD or Adam-preconditioned.

    Every argument but ``params``, ``freeze_bn_stats_in_trials`` and ``process_group`` is a
    hyperparameter: an entry of each param group, read at every step (see
    :class:`~optim.ClosureOptimizer`); only ``weight_decay`` may differ between groups.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        direction: ``"sgd"`` (d = g) or ``"adam"`` (d = P g with Adam's moments).
        c: sufficient-decrease constant in (0, 1).
        init_step_size: eta before the first step.
        backtrack: factor per failed trial, in (0, 1).
        reset_option: 0 keep eta, 1 grow by gamma**(1/n_batches_per_epoch), 2 reset each step.
        gamma, n_batches_per_epoch: the growth of ``reset_option=1``.
        eta_max: cap on the initial step size of each search (default: none, as the reference's
            Armijo search).
        max_trials: trials per step.
        failed_step: after ``max_trials`` failures theta0 moves by ``failed_step * d`` (the
            reference: 1e-6) and the backtracked eta is stored; None moves with that eta.
        guard: ``"grad_norm"`` (the reference): no search and no step while ||g|| < 1e-8;
            ``"loss_and_term"`` (the authors' ``AdamSLS``): no search while L0 < 1e-8 or the
            gradient term < 1e-8, the step then taken along the momentum with the grown eta.
        betas, eps: Adam moments for ``direction="adam"``.
        weight_decay: decoupled, theta <- theta (1 - wd eta_prev).
        grad_term: ``"squared"`` or ``"norm"`` (||g||, the authors' as-run ``olsgdsls``).
        step_along: ``"search"`` or ``"momentum"`` (step along P m_hat, as-run ``oladamsls``).
        speed_up: search only when SaLSA's speed-up rule asks (the as-run NLP runs).
        fused: ``None``, ``True`` or ``False``: whether the Adam direction runs through the fused
            kernels (see :class:`~optim.line_search.LineSearchOptimizer`; nothing to fuse along g).
        freeze_bn_stats_in_trials, process_group: see :class:`LineSearchOptimizer`.
    """

    def __init__(
        self,
        params: Any,
        direction: Literal["sgd", "adam"] = "sgd",
        c: float = 0.1,
        init_step_size: float = 1.0,
        backtrack: float = 0.9,
        reset_option: int = 1,
        gamma: float = 2.0,
        n_batches_per_epoch: int = 500,
        eta_max: float = math.inf,
        max_trials: int = 100,
        failed_step: float | None = 1e-6,
        guard: Literal["grad_norm", "loss_and_term"] = "grad_norm",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_term: Literal["squared", "norm"] = "squared",
        step_along: Literal["search", "momentum"] = "search",
        speed_up: bool = False,
        fused: bool | None = None,
        freeze_bn_stats_in_trials: nn.Module | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        defaults = dict(
            direction=direction, c=c, init_step_size=init_step_size, backtrack=backtrack,
            reset_option=reset_option, gamma=gamma, n_batches_per_epoch=n_batches_per_epoch,
            eta_max=eta_max, max_trials=max_trials, failed_step=failed_step, guard=guard,
            betas=tuple(betas), eps=eps, weight_decay=weight_decay, grad_term=grad_term,
            step_along=step_along, speed_up=speed_up, fused=fused,
        )
        super().__init__(params, defaults, freeze_bn_stats_in_trials, process_group)

    def _configure(
        self, group: dict[str, Any]
    ) -> tuple[SearchRule, AdamDirection | FusedAdamDirection | SGDDirection]:
        reset_option, gamma, n_batches = group["reset_option"], group["gamma"], group["n_batches_per_epoch"]
        if isinstance(reset_option, bool) or reset_option not in (0, 1, 2):
            raise ValueError(f"reset_option must be 0, 1 or 2, got {reset_option!r}")
        check_positive("gamma", gamma)
        check_positive("n_batches_per_epoch", n_batches)
        if group["grad_term"] not in ("squared", "norm"):
            raise ValueError(f"grad_term must be 'squared' or 'norm', got {group['grad_term']!r}")
        rule = SearchRule(
            c=group["c"],
            backtrack=group["backtrack"],
            max_trials=group["max_trials"],
            growth=gamma ** (1.0 / n_batches) if reset_option == 1 else 1.0,
            reset_to=group["init_step_size"] if reset_option == 2 else None,
            eta_max=group["eta_max"],
            speed_up=group["speed_up"],
            step_along=group["step_along"],
            grad_term_root=group["grad_term"] == "norm",
            skipped_growth="stored",
            guard=group["guard"],
            failed_step=group["failed_step"],
        )
        return rule, make_direction(
            group["direction"], tuple(group["betas"]), group["eps"], group["fused"], self._device_types()
        )
