r"""SaLSA: the stabilised (smoothed) Armijo line search of Kenneweg et al. (IJCNN 2024).

The test smooths the decrease and the gradient term with exponential moving averages:

.. math::
    \bar G \leftarrow \beta \bar G + (1-\beta)\langle g, d\rangle \quad\text{(once per search)},
    \qquad
    \beta \bar D + (1-\beta)(L_0 - L_1) \ge c\, \eta\, \bar G,

then :math:`\bar D \leftarrow \beta \bar D + (1-\beta)(L_0 - L_1)` on acceptance. With the
speed-up rule a search runs only every few steps, when the accepted step size is changing.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.distributed as dist
from torch import nn

from ._checks import check_fused, check_int, check_moments
from .directions import AdamDirection, FusedAdamDirection, ReleasedAdamDirection, SGDDirection
from .line_search import LineSearchOptimizer, ReleasedRule, SearchRule, SkippedGrowth, make_direction


class SaLSA(LineSearchOptimizer):
    r"""Stable Armijo Line Search Adaptation.

    The defaults follow the authors' released ``SaLSA`` class (c 0.5, smoothing 0.9, growth 1.1,
    backtrack 0.8, 100 trials, speed-up on, trials along :math:`P g`) with its bias-correction
    off-by-one fixed. ``as_released=True`` reproduces ``salsa-optimizer`` 0.1.0 step for step,
    quirks included (see :class:`~optim.line_search.ReleasedRule`). The paper's as-run
    ``adamsls``/``sgdsls`` are configurations of this class: see :mod:`optim.presets`.

    Every argument but ``params``, ``freeze_bn_stats_in_trials`` and ``process_group`` is a
    hyperparameter: an entry of each param group, read at every step (see
    :class:`~optim.ClosureOptimizer`); only ``weight_decay`` may differ between groups.

    Args:
        params: parameters or param groups (``weight_decay`` may differ per group).
        direction: ``"adam"`` (search along :math:`P g`, :math:`P = 1/(\sqrt{\hat v}+\epsilon)`)
            or ``"sgd"`` (along :math:`g`, no moments).
        c: sufficient-decrease constant in (0, 1).
        init_step_size: eta before the first search.
        betas: (Adam beta1, Adam beta2, smoothing beta of the test).
        speed_up: search only when the speed-up rule asks; other steps move along
            :math:`P \hat m` with the last accepted eta.
        use_mv: search along :math:`P \hat m` with gradient term :math:`\langle g, P\hat m\rangle`.
        weight_decay: decoupled, theta <- theta (1 - wd eta_prev).
        eps: Adam's epsilon.
        backtrack, max_trials, growth: eta <- backtrack eta per failed trial; at most
            ``max_trials``; each search starts from ``growth * eta_prev``.
        grad_term: ``"squared"`` (<g, d>, e.g. ||g||^2) or ``"norm"`` (its square root, the
            as-run ``sgdsls``).
        step_along: ``"search"`` keeps the accepted trial point; ``"momentum"`` steps along
            :math:`P\hat m` with the accepted eta (as-run ``adamsls``).
        accept_ties: an exact tie L0 == L1 passes the test.
        skipped_growth: eta on steps without a search: skipped by the speed-up rule or
            blocked by the guard (see :class:`SearchRule`).
        forced_searches: the first steps that always search.
        as_released: follow ``salsa-optimizer`` 0.1.0 exactly (Adam direction only; foreach ops
            only, its bit-exact replay being of their arithmetic: ``fused=True`` is refused).
        fused: ``None``, ``True`` or ``False``: whether Adam's direction runs through the fused
            kernels (see :class:`~optim.line_search.LineSearchOptimizer`).
        freeze_bn_stats_in_trials, process_group: see :class:`LineSearchOptimizer`.
    """

    def __init__(
        self,
        params: Any,
        direction: Literal["adam", "sgd"] = "adam",
        c: float = 0.5,
        init_step_size: float = 1.0,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        speed_up: bool = True,
        use_mv: bool = False,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        backtrack: float = 0.8,
        max_trials: int = 100,
        growth: float = 1.1,
        grad_term: Literal["squared", "norm"] = "squared",
        step_along: Literal["search", "momentum"] = "search",
        accept_ties: bool = True,
        skipped_growth: SkippedGrowth = "none",
        forced_searches: int = 10,
        as_released: bool = False,
        fused: bool | None = None,
        freeze_bn_stats_in_trials: nn.Module | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        defaults = dict(
            direction=direction, c=c, init_step_size=init_step_size, betas=tuple(betas),
            speed_up=speed_up, use_mv=use_mv, weight_decay=weight_decay, eps=eps, backtrack=backtrack,
            max_trials=max_trials, growth=growth, grad_term=grad_term, step_along=step_along,
            accept_ties=accept_ties, skipped_growth=skipped_growth, forced_searches=forced_searches,
            as_released=as_released, fused=fused,
        )
        super().__init__(params, defaults, freeze_bn_stats_in_trials, process_group)

    def _configure(
        self, group: dict[str, Any]
    ) -> tuple[SearchRule, AdamDirection | FusedAdamDirection | SGDDirection]:
        betas = tuple(group["betas"])
        if len(betas) != 3:
            raise ValueError(f"betas must be (beta1, beta2, smoothing), got {betas}")
        check_moments(betas[:2], group["eps"])  # every mode, along the gradient too
        check_int("forced_searches", group["forced_searches"], 0)  # also where as_released ignores it
        if group["grad_term"] not in ("squared", "norm"):
            raise ValueError(f"grad_term must be 'squared' or 'norm', got {group['grad_term']!r}")
        rule_args = dict(
            c=group["c"],
            backtrack=group["backtrack"],
            max_trials=group["max_trials"],
            smoothing=betas[2],
            growth=group["growth"],
            speed_up=group["speed_up"],
            search_along="momentum" if group["use_mv"] else "gradient",
            grad_term_root=group["grad_term"] == "norm",
        )
        if group["as_released"]:
            if group["direction"] != "adam":
                raise ValueError(
                    "as_released=True reproduces the released Adam SaLSA: direction must be 'adam'"
                )
            check_fused(group["fused"])
            if group["fused"]:
                raise ValueError(
                    "as_released=True replays salsa-optimizer 0.1.0's foreach arithmetic bit for bit: "
                    "it has no fused path; pass fused=None or fused=False"
                )
            # 0.1.0 counts the step before testing `step < 10`: searches are forced on steps 1-9;
            # it has no step_along, accept_ties, skipped_growth or forced_searches of its own.
            rule: SearchRule = ReleasedRule(**rule_args, forced_searches=9, skipped_growth="unstored")
            return rule, ReleasedAdamDirection(betas[:2], group["eps"])
        rule = SearchRule(
            **rule_args,
            step_along=group["step_along"],
            accept_ties=group["accept_ties"],
            skipped_growth=group["skipped_growth"],
            forced_searches=group["forced_searches"],
        )
        return rule, make_direction(
            group["direction"], betas[:2], group["eps"], group["fused"], self._device_types()
        )
