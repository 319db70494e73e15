r"""The one Armijo backtracking core that SaLSA and SLS are configurations of.

One step, for a direction with vectors :math:`d_\text{search}` and :math:`d_\text{step}`::

    L0 <- closure(backwards=True);  g <- grad L(theta0);  update the direction's moments
    eta <- initial step size (growth or reset rule, capped at eta_max and MAX_STEP_SIZE)
    if a search is due (always, or by the speed-up rule):
        G <- <g, d_search>  (or its square root)     Gbar <- beta Gbar + (1 - beta) G
        for trial in 1..max_trials:
            theta <- theta0 - eta d_search;  L1 <- closure(backwards=False)   # no grad, same RNG
            accept if  beta Dbar + (1 - beta) (L0 - L1) >= c eta Gbar         # beta = 0: Armijo
            (on acceptance Dbar <- beta Dbar + (1 - beta) (L0 - L1)); else eta <- backtrack eta
        theta <- theta0 - eta d_step
    else:
        theta <- theta0 - eta d_momentum

Decoupled weight decay (theta <- theta (1 - wd eta_prev)) comes before the first move. eta, whether
a search is due and the decay are all known before <g, d> is, so the step hands them to the
direction with the moment update (:class:`~optim.directions.StepStart`): a fused direction makes the
decay, the first trial move (or the whole step, when no search is due) and the inner product in
that one pass over memory, and the later moves (backtracks, the step along the momentum, the rare
undoing) each in one more.

:class:`SearchRule` holds every knob in which SaLSA, SLS, the released ``salsa-optimizer`` and
the paper's as-run variants differ, built by each class from its param groups' hyperparameters;
:class:`LineSearchOptimizer` runs the loop. The search's state (step size, EMAs, speed-up
counters, counters) lives as plain Python numbers in the param groups and the Adam moments in
``self.state[p]``, so ``state_dict()`` and ``torch.distributed.checkpoint`` restore a search
exactly (see :class:`~optim.ClosureOptimizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._base import ClosureOptimizer
from ._checks import check_fused, check_int, check_moments, check_positive, check_unit
from ._evaluation import LossEvaluator, RNGSnapshot, check_closure, host_floats
from .diagnostics import SearchDiagnostics
from .directions import (
    AdamDirection, Along, FusedAdamDirection, Moves, SGDDirection, StepStart, StepTensors, adam_direction,
    rescale,
)

SkippedGrowth = Literal["none", "unstored", "stored"]

# The largest step size of every mode, above ``eta_max``. Where the loss stops changing (a zero
# gradient, a loss of exactly zero) no search runs, and the modes that grow eta on such steps
# (released SaLSA, the as-run presets, SLS) multiply it by ``growth`` every step: at 1.1 it
# leaves float32 after ~930 steps and moving the parameters by it raises. 1e10 is far above any
# step size an Armijo search accepts on a model (the references start at 1 or 0.1) and far below
# float32's maximum (3.4e38), so capping it changes no run that a search decides.
MAX_STEP_SIZE = 1e10


@dataclass(frozen=True)
class SearchRule:
    """What distinguishes one Armijo line search from another.

    Attributes:
        c: sufficient-decrease constant, in (0, 1).
        backtrack: factor applied to eta after a failed trial, in (0, 1).
        max_trials: trials per search before giving up.
        smoothing: beta of the smoothed (SaLSA) test; 0 gives the plain Armijo test.
        growth: eta starts each search at ``growth * eta_prev`` (1 keeps it).
        reset_to: if set, eta starts each search here instead (SLS ``reset_option=2``).
        eta_max: cap on the initial step size of a search (never above :data:`MAX_STEP_SIZE`).
        speed_up: search only when the speed-up rule says so (SaLSA's rule, see
            :meth:`LineSearchOptimizer._search_due`).
        forced_searches: with ``speed_up``, the first steps that always search.
        search_along: the vector trials move along (``"gradient"`` = P g, ``"momentum"`` = P m_hat).
        step_along: where an accepted search leaves theta: ``"search"`` (the accepted trial
            point) or ``"momentum"`` (theta0 - eta P m_hat, the authors' as-run ``adamsls``).
        grad_term_root: use sqrt(<g, d>) (the as-run ``sgdsls``: ||g|| instead of ||g||^2).
        accept_ties: an exact tie L0 == L1 passes the test.
        guard: what blocks a search. ``"loss_and_term"`` (SaLSA, the authors' ``AdamSLS``): L0 below
            ``min_loss`` or the test's gradient term below ``min_grad_term``; the step is then
            taken without a search (see ``skipped_growth``). ``"grad_norm"`` (the SLS reference):
            ||g|| below ``min_grad_norm``; no step is taken and the grown eta is stored.
        min_loss, min_grad_term, min_grad_norm: the thresholds of ``guard``.
        failed_step: after ``max_trials`` rejections, move theta0 by this fixed step along the
            search direction (the SLS reference: 1e-6) while storing the backtracked eta; None
            moves with the backtracked eta itself.
        skipped_growth: on steps that run no search (the speed-up rule skips it or a guard
            blocks it), eta is ``"none"``: not grown, ``"unstored"``: grown for this step only
            (released SaLSA on skipped steps), ``"stored"``: grown and kept (the as-run
            ``adamsls``, SLS). With ``"none"`` a model whose loss has reached zero is not
            pushed by a step size that grows without bound.
    """

    c: float
    backtrack: float
    max_trials: int
    smoothing: float = 0.0
    growth: float = 1.0
    reset_to: float | None = None
    eta_max: float = math.inf
    speed_up: bool = False
    forced_searches: int = 10
    search_along: Along = "gradient"
    step_along: Literal["search", "momentum"] = "search"
    grad_term_root: bool = False
    accept_ties: bool = False
    guard: Literal["loss_and_term", "grad_norm"] = "loss_and_term"
    min_loss: float = 1e-8
    min_grad_term: float = 1e-8
    min_grad_norm: float = 1e-8
    failed_step: float | None = None
    skipped_growth: SkippedGrowth = "none"

    def __post_init__(self) -> None:
        check_unit("c", self.c)
        check_unit("backtrack", self.backtrack)
        check_unit("smoothing (beta of the smoothed test)", self.smoothing, closed_low=True)
        check_int("max_trials", self.max_trials, 1)
        check_int("forced_searches", self.forced_searches, 0)
        check_positive("growth", self.growth)
        if self.reset_to is not None:
            check_positive("reset step size", self.reset_to)
        check_positive("eta_max", self.eta_max, inf=True)  # inf (the default): no cap
        for name in ("min_loss", "min_grad_term", "min_grad_norm"):
            check_positive(name, getattr(self, name), zero=True)
        if self.search_along not in ("gradient", "momentum"):
            raise ValueError(f"search_along must be 'gradient' or 'momentum', got {self.search_along!r}")
        if self.step_along not in ("search", "momentum"):
            raise ValueError(f"step_along must be 'search' or 'momentum', got {self.step_along!r}")
        if self.guard not in ("loss_and_term", "grad_norm"):
            raise ValueError(f"guard must be 'loss_and_term' or 'grad_norm', got {self.guard!r}")
        if self.failed_step is not None:
            check_positive("failed_step (or None)", self.failed_step, zero=True)
        if self.skipped_growth not in ("none", "unstored", "stored"):
            raise ValueError(
                f"skipped_growth must be 'none', 'unstored' or 'stored', got {self.skipped_growth!r}"
            )

    # -- the hooks in which the released salsa-optimizer differs (see ReleasedRule) --------------
    trials_restart_from_start = False  # trials move relative to the previous one

    def initial_step_size(self, previous: float) -> float:
        """eta at the start of a search (also the grown eta of a step without one)."""
        eta = self.reset_to if self.reset_to is not None else previous * self.growth
        return min(eta, self.eta_max, MAX_STEP_SIZE)

    def guard_blocks(self, loss0: float, grad_term: float, grad_norm: float) -> bool:
        """True when the search must not run (no decrease to ask for)."""
        if self.guard == "grad_norm":
            return not grad_norm >= self.min_grad_norm
        return loss0 < self.min_loss or grad_term < self.min_grad_term

    def unsearched_step_sizes(self, previous: float, grown: float, guarded: bool) -> tuple[float, float]:
        """On a step without a search (skipped by the speed-up rule, or ``guarded``): the eta to
        move with and the eta to store, from the stored ``previous`` and the ``grown`` initial
        one (see ``skipped_growth``; the ``"grad_norm"`` guard moves by 0 and stores ``grown``)."""
        if guarded and self.guard == "grad_norm":
            return 0.0, grown
        if self.skipped_growth == "none":
            return previous, previous
        return grown, grown if self.skipped_growth == "stored" else previous

    def smooth_grad_term(self, avg: float, grad_term: float) -> float:
        return self.smoothing * avg + (1.0 - self.smoothing) * grad_term if self.smoothing else grad_term

    def test(self, search: dict, loss0: float, loss1: float, eta: float, grad_term: float) -> bool:
        """The sufficient-decrease test; updates the decrease EMA on acceptance."""
        if not math.isfinite(loss1):
            return False
        decrease = loss0 - loss1
        smoothed = self.smoothing * search["avg_decrease"] + (1.0 - self.smoothing) * decrease
        accepted = smoothed >= self.c * eta * grad_term or (self.accept_ties and decrease == 0.0)
        if accepted:
            search["avg_decrease"] = smoothed
        return accepted

    def failed_search(self, eta: float) -> tuple[float | None, float, int]:
        """After ``max_trials`` rejections (eta already backtracked that often): the step to move
        theta0 by (None: stay at the last trial), the eta to store, and the backtracks to count."""
        return (eta if self.failed_step is None else self.failed_step), eta, self.max_trials


@dataclass(frozen=True)
class ReleasedRule(SearchRule):
    """The bookkeeping of ``salsa-optimizer`` 0.1.0, quirks included (``SaLSA(as_released=True)``).

    It differs from :class:`SearchRule` in: trials restart from a copy of theta0; the guard skips
    only an exactly-zero L0; a raw tie ``L0 - L1 == 0`` is accepted without touching the decrease
    EMA; decisions are taken on float32 tensors; a failed search leaves theta at the last trial
    but stores ``eta * backtrack**max_trials`` and counts ``max_trials - 1`` backtracks.
    """

    trials_restart_from_start = True

    def guard_blocks(self, loss0: float, grad_term: float, grad_norm: float) -> bool:
        return loss0 == 0.0 or not _f32(grad_term) >= self.min_grad_term

    def unsearched_step_sizes(self, previous: float, grown: float, guarded: bool) -> tuple[float, float]:
        # Skipped steps move with the grown eta unstored; the guard path stores it.
        return (grown, grown) if guarded else super().unsearched_step_sizes(previous, grown, guarded)

    def smooth_grad_term(self, avg: float, grad_term: float) -> float:
        return (_f32(avg) * self.smoothing + _f32(grad_term) * (1 - self.smoothing)).item()

    def test(self, search: dict, loss0: float, loss1: float, eta: float, grad_term: float) -> bool:
        raw = _f32(loss0) - _f32(loss1)
        if raw.item() == 0.0:
            return True
        smoothed = _f32(search["avg_decrease"]) * self.smoothing + raw * (1 - self.smoothing)
        accepted = bool(smoothed >= eta * self.c * _f32(grad_term))
        if accepted:
            search["avg_decrease"] = smoothed.item()
        return accepted

    def failed_search(self, eta: float) -> tuple[float | None, float, int]:
        return None, eta, self.max_trials - 1


def _f32(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float32)


def make_direction(
    direction: str, betas: tuple[float, float], eps: float, fused: bool | None, device_types: set[str]
) -> AdamDirection | FusedAdamDirection | SGDDirection:
    """The direction object for ``direction`` = ``"adam"`` or ``"sgd"``; Adam's computed as
    ``fused`` asks on parameters of ``device_types`` (see :func:`~optim.directions.adam_direction`).
    Along ``g`` there is nothing to fuse: ``fused=True`` is refused there."""
    check_moments(betas, eps)  # also along the gradient, where they are unused
    check_fused(fused)
    if direction == "sgd":
        if fused:
            raise ValueError("fused=True: the SGD direction has no fused path (nothing to fuse); pass fused=None")
        return SGDDirection()
    if direction == "adam":
        return adam_direction(tuple(betas), eps, fused, device_types)
    raise ValueError(f"direction must be 'adam' or 'sgd', got {direction!r}")


class _Position:
    """Where theta stands relative to theta0 (decayed) along the direction vectors of this step.

    The step's first pass (``begin_step``) made the decay and the first move when the direction
    ``carries_first_moves``; otherwise the first :meth:`go_to` makes the decay, as the step's
    first move.
    """

    def __init__(self, direction: Any, tensors: StepTensors, restart_from_start: bool, start: StepStart) -> None:
        self.direction = direction
        self.tensors = tensors
        self.decays = start.decays
        # Whether theta holds the decay, and its offsets along each vector.
        self.decayed: bool = direction.carries_first_moves
        self.offsets: Moves = dict(start.moves) if direction.carries_first_moves else {}
        # The released optimizer restarts every trial from a copy of theta0; the default moves
        # relative to the previous trial and needs no copy.
        self.restart_from_start = restart_from_start
        self.start: list[Tensor] | None = None

    def go_to(self, alpha: float, along: Along) -> None:
        """theta <- theta0 + alpha * d_along (theta0 decayed): one move, along both vectors when
        it leaves one for the other."""
        self._decay()
        if self.restart_from_start:
            if self.start is None:  # theta is still theta0
                self.start = [p.detach().clone() for p in self.tensors.params]
            torch._foreach_copy_(self.tensors.params, self.start)
            self.direction.move(self.tensors, {along: alpha})
        else:
            moves: Moves = {
                other: -offset for other, offset in self.offsets.items() if other != along and offset != 0.0
            }
            delta = alpha - self.offsets.get(along, 0.0)
            if delta != 0.0:
                moves[along] = delta
            if moves:
                self.direction.move(self.tensors, moves)
        self.offsets = {along: alpha}

    def back_to_start(self) -> None:
        """theta <- theta0, undecayed (a step skipped after its first pass moved theta)."""
        back: Moves = {along: -offset for along, offset in self.offsets.items() if offset != 0.0}
        if back:
            self.direction.move(self.tensors, back)
        if self.decayed and self.decays is not None:
            rescale(self.tensors.params, self.decays, divide=True)
        self.decayed, self.offsets = False, {}

    def _decay(self) -> None:
        if not self.decayed:
            if self.decays is not None:
                rescale(self.tensors.params, self.decays)
            self.decayed = True


class LineSearchOptimizer(ClosureOptimizer):
    """A ``torch.optim.Optimizer`` running the Armijo core with a :class:`SearchRule`.

    Subclasses (:class:`~optim.SaLSA`, :class:`~optim.SLS`) only turn their hyperparameters (the
    param groups' entries) into the rule and the direction (:meth:`_configure`). Use::

        def closure(backwards: bool = False) -> Tensor:
            loss = loss_fn(model(x), y)
            if backwards:
                loss.backward()
            return loss

        opt.zero_grad()
        loss = opt.step(closure)

    The search's state, entries of every param group: ``step_size`` (eta, where the next search
    starts from), ``avg_grad_term`` and ``avg_decrease`` (the smoothed test's EMAs),
    ``avg_step_size_fast``/``avg_step_size_slow``, ``steps_since_search`` and
    ``search_interval`` (the speed-up rule), ``step`` and the counters of :attr:`diagnostics`.

    Args (shared by the subclasses):
        init_step_size: eta before the first search (the initial ``step_size``).
        weight_decay: decoupled, per param group: theta <- theta (1 - wd eta_prev) after the
            first evaluation, before the search.
        fused: along Adam's direction, as in ``torch.optim``: ``None`` (default) the fastest path
            on the parameters' devices, ``True`` the fused kernels of :mod:`optim._fused` (one
            pass over memory per move, no scratch buffer; an error at construction where they
            cannot be had), ``False`` foreach ops. The same for all groups; nothing to fuse along
            ``g`` (``True`` is refused there).
        freeze_bn_stats_in_trials: a module whose BatchNorm running statistics trial forwards
            must not change (``None``: trials update them, as the references do).
        process_group: under ``torch.distributed`` with more than one rank, the deciding losses
            are averaged over this group (default: the world) so all ranks accept the same eta.
            With FSDP2 (``fully_shard``) parameters, the inner products are summed over it as
            well; shard the root with ``reshard_after_forward=True`` so that a trial forward under
            ``no_grad`` does not leave stale gathered parameters for the next one.
    """

    release_0_1_0_key = "line_search"

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        freeze_bn_stats_in_trials: nn.Module | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        check_positive("init_step_size", defaults["init_step_size"])
        if defaults["init_step_size"] > MAX_STEP_SIZE:  # a step that keeps eta would move by it
            raise ValueError(f"init_step_size must be at most {MAX_STEP_SIZE:g}, got {defaults['init_step_size']!r}")
        if freeze_bn_stats_in_trials is not None and not isinstance(freeze_bn_stats_in_trials, nn.Module):
            raise TypeError(
                "freeze_bn_stats_in_trials: pass the nn.Module whose BatchNorm layers to hold "
                f"(or None), got {type(freeze_bn_stats_in_trials).__name__}"
            )
        self.bn_module = freeze_bn_stats_in_trials
        super().__init__(params, {"lr": defaults["init_step_size"], **defaults}, process_group)

    def _initial_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._initial_state(group),
            "step_size": float(group["init_step_size"]),
            "avg_grad_term": 0.0,
            "avg_decrease": 0.0,
            "avg_step_size_fast": 1e-8,
            "avg_step_size_slow": 1e-8,
            "steps_since_search": 100,
            "search_interval": 1.0,
            "n_backtracks": 0,
            "n_searches": 0,
            "n_failed_searches": 0,
        }

    @property
    def diagnostics(self) -> SearchDiagnostics:
        """Step size, evaluation counters and the state of the test (see :class:`SearchDiagnostics`)."""
        search = self.param_groups[0]
        return SearchDiagnostics(
            **self._counters(search),
            n_backtracks=search["n_backtracks"],
            n_searches=search["n_searches"],
            n_failed_searches=search["n_failed_searches"],
            search_interval=search["search_interval"],
            grad_term=search["avg_grad_term"],
            avg_decrease=search["avg_decrease"],
        )

    @staticmethod
    def _search_due(search: dict, rule: SearchRule) -> bool:
        """SaLSA's speed-up rule: r = fast/slow EMA of accepted eta (inverted if < 1); search
        when the steps since the last search reach min(10, 1 / (r - 1 + 1e-8))."""
        ratio = search["avg_step_size_fast"] / search["avg_step_size_slow"]
        if ratio < 1:
            ratio = 1 / ratio
        search["search_interval"] = min(10.0, 1.0 / (ratio - 1.0 + 1e-8))
        search["steps_since_search"] += 1
        return (
            not rule.speed_up
            or search["step"] <= rule.forced_searches
            or search["steps_since_search"] >= search["search_interval"]
        )

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Any = None,
        *,
        loss: Tensor | float | None = None,
        rng: RNGSnapshot | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """One line-search step with the param groups' current hyperparameters; returns the loss
        L0 of the first evaluation.

        Args:
            closure: ``closure(backwards: bool = False) -> Tensor``, or ``closure() -> Tensor``
                that never calls ``backward`` (the SLS reference's convention; the optimizer
                then zeroes the gradients and runs the backward itself). See the class docstring.
            loss: L0 when the caller already ran the first evaluation (forward and backward,
                possibly accumulated over micro-batches: the gradients are in ``.grad``); the
                closure is then called only for trials and must return the same quantity.
            rng: with ``loss``, the :class:`~optim.RNGSnapshot` taken just before that forward,
                so trials replay its dropout masks (default: the RNG state at this call).
            grad_scaler: for fp16, the ``GradScaler`` that scaled the backpropagated loss (the
                closure returns the unscaled loss). The gradients are unscaled here, a step with
                non-finite gradients is skipped and counted; ``scaler.update()`` is the caller's.
        """
        if closure is None:
            check_closure(closure)  # raises: the trials need the closure
        search = self._shared_group()
        rule, direction = self._configuration(search)
        try:
            return self._step(search, rule, direction, closure, loss, rng, grad_scaler)
        finally:
            self._publish(search)

    def _step(
        self,
        search: dict[str, Any],
        rule: SearchRule,
        direction: AdamDirection | FusedAdamDirection | SGDDirection,
        closure: Any,
        loss: Tensor | float | None,
        rng: RNGSnapshot | None,
        grad_scaler: torch.amp.GradScaler | None,
    ) -> Tensor:
        """The step on ``search``, the shared group whose state it updates in place."""
        all_params = [p for g in self.param_groups for p in g["params"]]
        evaluate = LossEvaluator(closure, all_params, self.bn_module, loss, rng)
        loss, loss0, grad_sq, grad_sq_value, t = self._first_evaluation(search, evaluate, grad_scaler)
        if t is None:
            return loss  # non-finite L0 or gradient: parameters and moments untouched
        eta = rule.initial_step_size(search["step_size"])
        searching = self._search_due(search, rule)
        # Everything the first pass over the tensors needs is known before <g, d> is: the decay
        # (with the stored eta) and where theta goes first, the first trial point or the step.
        decays = t.decays(search["step_size"])
        if searching:
            search["steps_since_search"] = 0
            start = StepStart(decays, {rule.search_along: -eta}, ("grad", rule.search_along))
        else:
            moved, search["step_size"] = rule.unsearched_step_sizes(search["step_size"], eta, guarded=False)
            start = StepStart(decays, {"momentum": -moved})
        position = _Position(direction, t, rule.trials_restart_from_start, start)
        term = direction.begin_step(t, start, grad_sq)
        if searching:
            self._search(search, rule, evaluate, position, term, grad_sq, grad_sq_value, loss0, eta)
        else:
            position.go_to(-moved, "momentum")  # already there if the first pass moved theta
        self._set_lr(search["step_size"])
        return loss

    def _search(
        self,
        search: dict[str, Any],
        rule: SearchRule,
        evaluate: LossEvaluator,
        position: _Position,
        term: tuple[Tensor, float],
        grad_sq: Tensor,
        grad_sq_value: float,
        loss0: float,
        eta: float,
    ) -> None:
        """A step that searches: the test's gradient term from the first pass's inner product
        ``term``, then the guard and the trials; leaves theta at the step and eta stored."""
        group = self.group_for_decisions
        local_term, factor = term
        if local_term is grad_sq:  # ||g||^2 (the SGD direction): read with L0 already
            grad_term = grad_sq_value * factor
        else:
            (grad_term,) = host_floats([self._summed_over_shards(local_term)], group)
            grad_term *= factor
        if rule.grad_term_root:
            grad_term = math.sqrt(max(grad_term, 0.0))
        test_term = rule.smooth_grad_term(search["avg_grad_term"], grad_term)
        if not math.isfinite(test_term):
            # A finite gradient can still overflow <g, P g> (|g| > ~1e15 in float32): skip
            # rather than poison the EMA. Parameters go back to theta0 (where a fused first pass
            # moved them); the moments have seen g already.
            position.back_to_start()
            search["n_skipped"] += 1
            return
        search["avg_grad_term"] = test_term

        if rule.guard_blocks(loss0, test_term, math.sqrt(grad_sq_value)):
            moved, eta = rule.unsearched_step_sizes(search["step_size"], eta, guarded=True)
            position.go_to(-moved, "momentum")
            if rule.trials_restart_from_start:
                evaluate.trial()  # the release evaluates once here, uncounted
        else:
            try:
                eta = self._backtrack(search, rule, evaluate, position, loss0, eta, test_term, group)
            except BaseException:
                # A closure that raises in a trial (e.g. one calling backward under no_grad)
                # must not leave theta at the trial point: back to where the search started.
                position.go_to(0.0, rule.search_along)
                raise
        search["step_size"] = eta
        search["avg_step_size_slow"] = search["avg_step_size_slow"] * 0.99 + eta * (1 - 0.99)
        search["avg_step_size_fast"] = search["avg_step_size_fast"] * 0.9 + eta * (1 - 0.9)

    @staticmethod
    def _backtrack(
        search: dict,
        rule: SearchRule,
        evaluate: LossEvaluator,
        position: _Position,
        loss0: float,
        eta: float,
        grad_term: float,
        group: dist.ProcessGroup | None,
    ) -> float:
        """The trials; leaves theta at the step taken and returns the eta to store."""
        search["n_searches"] += 1
        for trial in range(rule.max_trials):
            position.go_to(-eta, rule.search_along)
            (loss1,) = host_floats([evaluate.trial()], group)
            search["n_forwards"] += 1
            if rule.test(search, loss0, loss1, eta, grad_term):
                search["n_backtracks"] += trial
                if rule.step_along == "momentum":
                    position.go_to(-eta, "momentum")
                return eta
            eta *= rule.backtrack
        search["n_failed_searches"] += 1
        moved, eta, backtracks = rule.failed_search(eta)
        search["n_backtracks"] += backtracks
        if moved is not None:
            # A fixed failure step goes along the search direction, as the SLS reference's does.
            along_search = rule.step_along == "search" or rule.failed_step is not None
            position.go_to(-moved, rule.search_along if along_search else "momentum")
        return eta
