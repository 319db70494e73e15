r"""Search directions shared by the line searches: plain gradient and Adam-preconditioned.

A direction owns the per-parameter state it needs (Adam's moments), turns the gradient into the
vectors a search moves along, and moves all parameters at once: with ``torch._foreach_*`` ops
(:class:`SGDDirection`, :class:`AdamDirection`) or with the fused kernels of
:mod:`optim._fused` (:class:`FusedAdamDirection`, one pass over memory per move and no buffer).
Two vectors can be asked for:

* ``"gradient"`` — :math:`P g` (the preconditioned gradient; :math:`g` for SGD),
* ``"momentum"`` — :math:`P \hat m` (Adam's own update direction; :math:`g` for SGD, which keeps
  no moments, as in the authors' ``sgdsls``),

with :math:`P = 1/(\sqrt{\hat v} + \epsilon)`, :math:`\hat m = m/(1-\beta_1^t)`,
:math:`\hat v = v/(1-\beta_2^t)`. A move is :math:`\theta \leftarrow \theta + \sum \alpha\, d`
over one or both vectors (:data:`Moves`).

A step starts with :meth:`begin_step`, given a :class:`StepStart`: the moments take in the
gradient, and the inner product the search needs is returned. The step also says there where
its first move goes (the weight decay, then the first trial point, or the step of a skipped
search): a direction that ``carries_first_moves`` makes that move in the same pass, the others
leave it to the caller (the line search's ``_Position``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from . import _fused

Along = Literal["gradient", "momentum"]
# theta <- theta + sum over the entries of alpha * d_along, applied in the mapping's order.
Moves = dict[Along, float]
Vector = Literal["grad", "exp_avg"]  # g or m, as the fused kernels name them


def inner(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    r""":math:`\sum_i \langle x_i, y_i\rangle` over a list of tensors, as a 0-d tensor (no sync).

    Per-tensor ``dot`` allocates nothing; a foreach product would allocate a parameter-sized list.
    """
    if not xs:
        return torch.zeros(())
    return _sum(_dots(xs, ys))


def _dots(xs: Iterable[Tensor], ys: Iterable[Tensor]) -> list[Tensor]:
    return [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]


def _sum(dots: list[Tensor]) -> Tensor:
    if len(dots) == 1:
        return dots[0]
    dtype = dots[0].dtype
    return torch.stack([d if d.dtype == dtype else d.to(dtype) for d in dots]).sum()


# On CPU a foreach op is a loop over its tensors: a chain of k foreach ops over all parameters
# streams every tensor k times between memory and the cache. Run over groups of tensors that fit
# in the cache, the chain streams each group in once and works on it there (measured on the
# benchmark's MLP tensors: SaLSA's update arithmetic 4.6 -> 4.2 ms and 5.9 -> 5.1 ms in two runs).
# On accelerators one launch per op over all tensors is what counts: one group.
CPU_GROUP_BYTES = 4 * 2**20


def cache_groups(tensors: list[Tensor]) -> list[slice]:
    """Consecutive slices of ``tensors``: all of them on an accelerator; on CPU, groups of at
    most :data:`CPU_GROUP_BYTES` (a larger tensor is a group of its own)."""
    if not tensors or tensors[0].device.type != "cpu":
        return [slice(0, len(tensors))]
    groups, start, size = [], 0, 0
    for i, x in enumerate(tensors):
        nbytes = x.numel() * x.element_size()
        if i > start and size + nbytes > CPU_GROUP_BYTES:
            groups.append(slice(start, i))
            start, size = i, 0
        size += nbytes
    groups.append(slice(start, len(tensors)))
    return groups


def init_moments(param: Tensor, state: dict) -> None:
    """Adam's moments of ``param``, zeros, in its ``state`` (unless there already): a ``DTensor``
    for an FSDP2 parameter, so that the distributed checkpoint saves each rank's shard."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


@dataclass
class StepTensors:
    """The tensors of one optimizer step: parameters with a gradient, and their state dicts."""

    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict]  # with the moments (see init_moments) of the local tensors
    step: int  # 1-based count of steps taken with this state
    weight_decays: list[float] = field(default_factory=list)  # of each tensor's param group

    def decays(self, step_size: float) -> list[float] | None:
        r"""Decoupled weight decay's factors :math:`1 - wd\,\eta`, one per tensor (``None`` when no
        group decays)."""
        if not any(self.weight_decays):
            return None
        return [1.0 - wd * step_size for wd in self.weight_decays]


@dataclass(frozen=True)
class StepStart:
    r"""What a step asks of its first pass over the tensors, besides updating the moments.

    Attributes:
        decays: per tensor, :math:`\theta \leftarrow` ``decays[i]`` :math:`\theta` first (``None``: none).
        moves: then the move to the step's first point (the first trial, or the whole step when
            no search runs), relative to the decayed :math:`\theta_0`.
        inner: ``(x, along)`` asks for :math:`\langle x, d_\text{along}\rangle`, ``x`` being
            ``"grad"`` (g) or ``"exp_avg"`` (m), both after the update; ``None``: none.
    """

    decays: list[float] | None = None
    moves: Moves = field(default_factory=dict)
    inner: tuple[Vector, Along] | None = None


def rescale(tensors: list[Tensor], factors: list[float], divide: bool = False) -> None:
    """``tensors[i] *= factors[i]`` (or ``/=``), one foreach op per run of equal factors; factors
    of 1 are skipped. Decoupled weight decay, and its undoing on a step that is skipped after
    all."""
    op = torch._foreach_div_ if divide else torch._foreach_mul_
    start = 0
    for end in range(1, len(tensors) + 1):
        if end == len(tensors) or factors[end] != factors[start]:
            if factors[start] != 1.0:
                op(tensors[start:end], factors[start])
            start = end


class SGDDirection:
    """:math:`d = g` for both vectors; no state, no buffer (the gradients are moved along)."""

    name = "sgd"
    keeps_moments = False
    carries_first_moves = False

    def begin_step(self, t: StepTensors, start: StepStart, grad_sq: Tensor) -> tuple[Tensor, float] | None:
        r"""Nothing to update (the gradient is the direction); :math:`\langle g, d\rangle = \|g\|^2`
        (already computed by the caller), factor 1."""
        return None if start.inner is None else (grad_sq, 1.0)

    def move(self, t: StepTensors, moves: Moves) -> None:
        for alpha in moves.values():
            torch._foreach_add_(t.params, t.grads, alpha=alpha)


class AdamPreconditioner:
    r"""Adam's preconditioner with bias-corrected moments: the maths both ways of computing it
    share (:class:`AdamDirection` with foreach ops and a buffer, :class:`FusedAdamDirection` with
    fused kernels and none).

    Per step: :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
    :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`, and
    :math:`P x = s\, x / (\sqrt v + \hat\epsilon)` with :math:`\hat\epsilon = \epsilon \sqrt{bc_2}`
    and the scale :math:`s` of :meth:`_scale`.
    ``bias_correction_offset=1`` reproduces the released SaLSA's off-by-one (it corrects with
    :math:`t+1` where :math:`t` already counts the current step).
    """

    name = "adam"
    keeps_moments = True

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction_offset: int = 0,
    ) -> None:
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.bias_correction_offset = bias_correction_offset

    def _corrections(self, step: int) -> tuple[float, float]:
        t = max(1, step + self.bias_correction_offset)
        return 1.0 - self.beta1**t, 1.0 - self.beta2**t

    def _scale(self, t: StepTensors, along: Along) -> float:
        r"""The factor :math:`s` with :math:`P x = s\, x / (\sqrt v + \epsilon \sqrt{bc_2})`:
        :math:`\sqrt{bc_2}` for :math:`x = g`, :math:`\sqrt{bc_2}/bc_1` for :math:`x = m`
        (then :math:`P \hat m`). It rides on the ``alpha`` of a move or on an inner product
        instead of costing a pass over memory."""
        bc1, bc2 = self._corrections(t.step)
        return math.sqrt(bc2) / (1.0 if along == "gradient" else bc1)

    def _eps_hat(self, t: StepTensors) -> float:
        r""":math:`\hat\epsilon = \epsilon \sqrt{bc_2}`, the denominator's epsilon for the raw :math:`v`."""
        return self.eps * math.sqrt(self._corrections(t.step)[1])


class AdamDirection(AdamPreconditioner):
    r"""Adam's direction with ``torch._foreach_*`` ops (the reference for :class:`FusedAdamDirection`).

    One reusable parameter-sized buffer holds either a direction (up to a scalar factor), so that
    moving between trial points is a single foreach add, or the preconditioner's denominator,
    which a move along a vector not built divides by on the fly. The caller makes the first
    move of a step (``carries_first_moves`` is false).
    """

    carries_first_moves = False

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction_offset: int = 0,
    ) -> None:
        super().__init__(betas, eps, bias_correction_offset)
        self._buffer: list[Tensor] = []
        self._groups: list[slice] = []  # of the buffer, see cache_groups
        # What the buffer holds: a direction (up to its scale), the preconditioner's denominator
        # or nothing valid for this step.
        self._buffer_holds: Along | Literal["denominator"] | None = None

    def begin_step(self, t: StepTensors, start: StepStart, grad_sq: Tensor) -> tuple[Tensor, float] | None:
        """Update the moments with this step's gradient (group by group, see :func:`cache_groups`);
        return ``start.inner`` as ``(inner product, s)``, the product taken group by group as the
        direction is built in the buffer (up to its scale ``s``, see :meth:`_scale`). ``start``'s
        decay and moves are left to the caller."""
        self._update_moments(t)
        if start.inner is None:
            return None
        x, along = start.inner
        dots = self._build(t, along, t.grads if x == "grad" else [s["exp_avg"] for s in t.states])
        return (_sum(dots) if dots else torch.zeros(())), self._scale(t, along)

    def _update_moments(self, t: StepTensors) -> None:
        if len(self._buffer) != len(t.params) or any(
            b.shape != p.shape or b.device != p.device or b.dtype != p.dtype
            for b, p in zip(self._buffer, t.params)
        ):
            self._buffer = [torch.empty_like(p) for p in t.params]
            self._groups = cache_groups(self._buffer)
        exp_avgs = [s["exp_avg"] for s in t.states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in t.states]
        for group in self._groups:
            grads = t.grads[group]
            torch._foreach_lerp_(exp_avgs[group], grads, 1.0 - self.beta1)
            torch._foreach_mul_(exp_avg_sqs[group], self.beta2)
            torch._foreach_addcmul_(exp_avg_sqs[group], grads, grads, value=1.0 - self.beta2)
        self._buffer_holds = None

    def _numerators(self, t: StepTensors, along: Along) -> list[Tensor]:
        return t.grads if along == "gradient" else [s["exp_avg"] for s in t.states]

    def _fill_denominator(self, t: StepTensors, group: slice) -> None:
        r"""The buffer's ``group`` filled with :math:`\sqrt v + \epsilon \sqrt{bc_2}` (two passes)."""
        buffer = self._buffer[group]
        # foreach ops have no out= form: sqrt is per tensor, so nothing is allocated.
        for b, state in zip(buffer, t.states[group]):
            torch.sqrt(state["exp_avg_sq"], out=b)
        torch._foreach_add_(buffer, self._eps_hat(t))

    def _denominator_groups(self, t: StepTensors) -> Iterator[slice]:
        """The buffer's groups, each filled with the denominator just before it is yielded (unless
        the buffer holds it already), so that the work done on the group finds it in cache."""
        fill = self._buffer_holds != "denominator"
        for group in self._groups:
            if fill:
                self._fill_denominator(t, group)
            yield group

    def _build(self, t: StepTensors, along: Along, dot_with: list[Tensor]) -> list[Tensor]:
        """Fill the buffer with the direction along ``along`` up to its scale (three passes, one
        if it holds the denominator); return its per-tensor inner products with ``dot_with``,
        taken group by group while the group is in cache."""
        numerators = self._numerators(t, along)
        dots: list[Tensor] = []
        for group in self._denominator_groups(t):
            buffer = self._buffer[group]
            for b, x in zip(buffer, numerators[group]):
                torch.div(x, b, out=b)
            dots += _dots(dot_with[group], buffer)
        self._buffer_holds = along
        return dots

    def move(self, t: StepTensors, moves: Moves) -> None:
        r""":math:`\theta \leftarrow \theta + \alpha\, P x` for each entry of ``moves`` in turn."""
        for along, alpha in moves.items():
            self._move(t, alpha, along)

    def _move(self, t: StepTensors, alpha: float, along: Along) -> None:
        """Along a vector already built this is one add; otherwise the division happens inside
        the move (``addcdiv``), one pass fewer than building the vector first, which is what a
        step the speed-up rule skips costs."""
        scale = self._scale(t, along)
        if self._buffer_holds == along:
            torch._foreach_add_(t.params, self._buffer, alpha=alpha * scale)
            return
        numerators, value = self._numerators(t, along), alpha * scale
        for group in self._denominator_groups(t):
            torch._foreach_addcdiv_(t.params[group], numerators[group], self._buffer[group], value=value)
        self._buffer_holds = "denominator"


class ReleasedAdamDirection(AdamDirection):
    """``salsa-optimizer`` 0.1.0's arithmetic, operation for operation, for a bit-exact replay.

    Moments are updated as ``(1-b)*x + b*state`` and the preconditioner is
    ``1 / (sqrt(v / (1 - beta2**(t+1))) + eps)`` (the release's off-by-one), exactly as written
    there, because a different (equivalent) order of float operations rounds differently.
    """

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(betas, eps, bias_correction_offset=1)
        self._precond: list[Tensor] | None = None

    def begin_step(self, t: StepTensors, start: StepStart, grad_sq: Tensor) -> tuple[Tensor, float] | None:
        r"""The release's moment update and gradient term :math:`\langle g, d\rangle` (a search
        asks for no other inner product)."""
        for g, state in zip(t.grads, t.states):
            state["exp_avg_sq"].copy_((1 - self.beta2) * (g**2) + self.beta2 * state["exp_avg_sq"])
            state["exp_avg"].copy_((1 - self.beta1) * g + self.beta1 * state["exp_avg"])
        self._buffer_holds = None
        self._precond = None
        if start.inner is None:
            return None
        return self._grad_term(t, start.inner[1]), 1.0

    def _scaled(self, x: Tensor, beta: float, step: int) -> Tensor:
        return x / (1 - beta ** max(1, step + self.bias_correction_offset))

    def _preconditioner(self, t: StepTensors) -> list[Tensor]:
        if self._precond is None:
            self._precond = [
                1.0 / (torch.sqrt(self._scaled(s["exp_avg_sq"], self.beta2, t.step)) + self.eps)
                for s in t.states
            ]
        return self._precond

    def direction(self, t: StepTensors, along: Along) -> tuple[list[Tensor], float]:
        if self._buffer_holds != along:
            pv = self._preconditioner(t)
            if along == "gradient":
                self._buffer = [p * g for p, g in zip(pv, t.grads)]
            else:
                self._buffer = [
                    p * self._scaled(s["exp_avg"], self.beta1, t.step) for p, s in zip(pv, t.states)
                ]
            self._buffer_holds = along
        return self._buffer, 1.0

    def _move(self, t: StepTensors, alpha: float, along: Along) -> None:
        torch._foreach_add_(t.params, self.direction(t, along)[0], alpha=alpha)

    def _grad_term(self, t: StepTensors, along: Along) -> Tensor:
        pv = self._preconditioner(t)
        total: Tensor | int = 0
        for g, p, s in zip(t.grads, pv, t.states):
            if along == "gradient":
                total = total + ((g**2) * p).sum()
            else:
                d = self._scaled(s["exp_avg"], self.beta1, t.step) * p
                total = total + torch.inner(g.flatten(), d.flatten()).sum()
        return total if isinstance(total, Tensor) else torch.zeros(())


class FusedAdamDirection(AdamPreconditioner):
    r"""Adam's direction through the fused kernels of :mod:`optim._fused`: no buffer.

    :meth:`begin_step` is one pass over each tensor: the moment update, the decay, the step's
    first move and the inner product together (``carries_first_moves``). A later move is one
    pass too, recomputing :math:`P g` and :math:`P \hat m` from :math:`g`, :math:`m` and
    :math:`v` as it goes; moves along both vectors at once (back from a trial point to Adam's
    step) are a single pass. The state is the moments alone.
    """

    carries_first_moves = True

    def begin_step(self, t: StepTensors, start: StepStart, grad_sq: Tensor) -> tuple[Tensor, float] | None:
        """Moments, decay, ``start.moves`` and ``start.inner`` (as ``(inner product, s)``) in one pass."""
        decays = start.decays if start.decays is not None else [1.0] * len(t.params)
        alpha_grad, alpha_avg = self._alphas(t, start.moves)
        dot = None if start.inner is None else (start.inner[0], _VECTOR_OF[start.inner[1]])
        dots = [
            _fused.first_pass(
                *_lists(t, part), decays=[decays[i] for i in part], beta1=self.beta1, beta2=self.beta2,
                eps_hat=self._eps_hat(t), alpha_grad=alpha_grad, alpha_avg=alpha_avg, dot=dot,
            )
            for part in _same_device_and_dtype(t.params)
        ]
        if start.inner is None:
            return None
        return _total(dots), self._scale(t, start.inner[1])

    def move(self, t: StepTensors, moves: Moves) -> None:
        r""":math:`\theta \leftarrow \theta + \sum \alpha\, P x` over ``moves``, in one pass."""
        alpha_grad, alpha_avg = self._alphas(t, moves)
        if alpha_grad == 0.0 and alpha_avg == 0.0:
            return
        for part in _same_device_and_dtype(t.params):
            _fused.move(*_lists(t, part), eps_hat=self._eps_hat(t), alpha_grad=alpha_grad, alpha_avg=alpha_avg)

    def _alphas(self, t: StepTensors, moves: Moves) -> tuple[float, float]:
        r"""The kernels' ``alpha_grad`` and ``alpha_avg`` of ``moves``: the scales of :math:`P g`
        and :math:`P \hat m` ride on them."""
        return (
            moves.get("gradient", 0.0) * self._scale(t, "gradient"),
            moves.get("momentum", 0.0) * self._scale(t, "momentum"),
        )


_VECTOR_OF: dict[Along, Vector] = {"gradient": "grad", "momentum": "exp_avg"}


def _same_device_and_dtype(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` by (device, dtype), as the kernels take them; usually one list."""
    parts: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, x in enumerate(tensors):
        parts.setdefault((x.device, x.dtype), []).append(i)
    return list(parts.values())


def _lists(t: StepTensors, part: list[int]) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Parameters, gradients and moments of the tensors ``part``."""
    states = [t.states[i] for i in part]
    return (
        [t.params[i] for i in part], [t.grads[i] for i in part],
        [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
    )


def _total(dots: list[Tensor | None]) -> Tensor:
    """The inner products of the parts summed (in the widest of their dtypes); 0 without parts."""
    found = [d for d in dots if d is not None]
    if not found:
        return torch.zeros(())
    if len(found) == 1:
        return found[0]
    dtype = torch.float64 if any(d.dtype == torch.float64 for d in found) else found[0].dtype
    return torch.stack([d.to(found[0].device, dtype) for d in found]).sum()


def adam_direction(
    betas: tuple[float, float], eps: float, fused: bool | None, device_types: set[str]
) -> AdamDirection | FusedAdamDirection:
    """Adam's direction computed as ``fused`` asks, on parameters of ``device_types``.

    ``fused=False``: the foreach ops. ``True``: the fused kernels, or ``RuntimeError`` saying why
    a device has none. ``None``: the fused kernels where every device has one, else the foreach
    ops (with a one-line notice, once per process, when a CPU or CUDA kernel could not be had).
    """
    if fused is False:
        return AdamDirection(betas, eps)
    reasons = {kind: _fused.unavailable_reason(kind) for kind in sorted(device_types)}
    missing = {kind: reason for kind, reason in reasons.items() if reason is not None}
    if not missing:
        return FusedAdamDirection(betas, eps)
    if fused:
        raise RuntimeError(
            "fused=True: " + "; ".join(f"no fused kernel for {kind} tensors: {r}" for kind, r in missing.items())
            + ". Pass fused=None (the fastest path available) or fused=False (foreach ops)"
        )
    for kind, reason in missing.items():
        _fused.notice_foreach(kind, reason)
    return AdamDirection(betas, eps)
