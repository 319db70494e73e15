"""How a line search evaluates the loss: the closure convention, frozen randomness, frozen
BatchNorm statistics and rank-consistent values.

Everything here is about *calling the closure*; the search itself lives in ``line_search.py``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

Closure = Callable[..., Tensor]
Convention = Literal["backwards", "plain"]

_CONVENTIONS = (
    "closure(backwards: bool = False) -> Tensor, calling loss.backward() only when backwards is "
    "true (SaLSA's convention), or closure() -> Tensor that never calls backward (the SLS "
    "reference's: the optimizer calls loss.backward() on the first evaluation)"
)


def check_closure(closure: Closure | None) -> Convention:
    """Which convention ``closure`` follows, told apart by its signature.

    * ``"backwards"`` — ``closure(backwards: bool = False)`` (or any ``**kwargs``): called once
      with ``backwards=True`` (the closure calls ``loss.backward()``) and then, under
      ``torch.no_grad()``, with ``backwards=False`` for every trial point.
    * ``"plain"`` — ``closure()`` with no required parameter: the optimizer zeroes the gradients,
      calls it with gradients enabled and calls ``loss.backward()`` itself, then calls it under
      ``torch.no_grad()`` for the trials (as the SLS reference does).

    Raises ``TypeError`` for anything else, naming both conventions.
    """
    if closure is None:
        raise TypeError(
            f"closure: a line search must re-evaluate the loss; call opt.step(closure) with {_CONVENTIONS}"
        )
    if not callable(closure):
        raise TypeError(f"closure: expected a callable, got {type(closure).__name__}")
    # The common cases, a function or an object with a Python __call__, without the cost of
    # inspect.signature on every step.
    code, bound = getattr(closure, "__code__", None), inspect.ismethod(closure)
    if code is None and not isinstance(closure, (types.BuiltinFunctionType, functools.partial)):
        code, bound = getattr(type(closure).__call__, "__code__", None), True
    if code is not None and not isinstance(closure, functools.partial):
        convention = _convention_of_code(code, bound)
        if convention is not None:
            return convention
    try:
        parameters = inspect.signature(closure).parameters
    except (TypeError, ValueError):  # builtins and some C callables expose no signature
        return "backwards"
    if "backwards" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return "backwards"
    required = [
        name for name, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if not required:
        return "plain"
    raise TypeError(f"closure: it takes required parameters {required}; expected {_CONVENTIONS}")


@functools.lru_cache(maxsize=256)
def _convention_of_code(code: types.CodeType, bound: bool) -> Convention | None:
    """The convention of a plain function with this code object (``None``: ask ``inspect``)."""
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    if "backwards" in names or code.co_flags & inspect.CO_VARKEYWORDS:
        return "backwards"
    if code.co_argcount + code.co_kwonlyargcount == int(bound):
        return "plain"
    return None  # parameters with defaults or an unexpected signature: inspect decides


def rng_devices(params: Iterable[Tensor]) -> tuple[str | None, list[int]]:
    """The accelerator type and device indices whose RNG the parameters' forward may draw from."""
    device_type: str | None = None
    indices: set[int] = set()
    for p in params:
        if p.device.type == "cpu" or p.device.type == "meta":
            continue
        device_type = p.device.type
        indices.add(p.device.index if p.device.index is not None else 0)
    return device_type, sorted(indices)


class RNGSnapshot:
    """The RNG state before the first evaluation, replayed for every trial.

    The optimizer takes one when it runs the first evaluation itself; a caller that ran it (see
    ``step(closure, loss=...)``) takes one just before its forward, ``RNGSnapshot(params)``, and
    passes it as ``rng=`` so the trials see the same dropout masks as that forward.

    ``replay()`` sets the captured state, runs the trial, and restores the state that was current
    before it, so the random stream after the step is the one the first evaluation left behind:
    the number of trials never shifts later dropout masks or data order.
    """

    def __init__(self, params: Iterable[Tensor]) -> None:
        self.device_type, self.device_indices = rng_devices(params)
        self.cpu_state = torch.get_rng_state()
        self.device_states: list[Tensor] = []
        if self.device_type is not None:
            module = getattr(torch, self.device_type)
            self.device_states = [module.get_rng_state(i) for i in self.device_indices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        # What torch.random.fork_rng does, for the devices known here, without its per-call
        # device discovery: this runs on every trial.
        module = getattr(torch, self.device_type) if self.device_type is not None else None
        cpu_before = torch.get_rng_state()
        device_before = [module.get_rng_state(i) for i in self.device_indices] if module else []
        torch.set_rng_state(self.cpu_state)
        for index, state in zip(self.device_indices, self.device_states):
            module.set_rng_state(state, index)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_before)
            for index, state in zip(self.device_indices, device_before):
                module.set_rng_state(state, index)


def frozen_batchnorm_stats(module: nn.Module | None) -> contextlib.AbstractContextManager[None]:
    """Hold the running statistics of every BatchNorm layer of ``module`` during trials.

    A layer in train mode keeps normalising with the batch statistics (so a trial sees the same
    function as the first evaluation) but, with ``track_running_stats`` switched off for the
    duration, neither ``running_mean``/``running_var`` nor ``num_batches_tracked`` change.
    """
    return contextlib.nullcontext() if module is None else _frozen_batchnorm_stats(module)


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    held = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in held:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in held:
            m.track_running_stats = True


def default_process_group(process_group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """The group whose ranks must agree, or ``None`` when there is only one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def rank_mean(values: Tensor, process_group: dist.ProcessGroup | None) -> Tensor:
    """Average ``values`` over the ranks of ``process_group`` (identity on a single rank).

    Every rank then takes its decisions from the same numbers and accepts the same step size.
    """
    if process_group is None:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=process_group)
    return values / dist.get_world_size(process_group)


def decision_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (bf16/fp16 losses are widened)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def host_floats(values: list[Tensor], process_group: dist.ProcessGroup | None) -> list[float]:
    """The rank-averaged one-element ``values`` as Python floats: the one host sync of an
    evaluation. On a single rank with CPU tensors there is nothing to synchronise: each value
    is read directly, which costs fewer small ops than stacking them first."""
    if process_group is None and all(v.is_cpu for v in values):
        return [v.item() for v in values]
    dtype = decision_dtype(*values)
    # On the accelerator when any value is there: a loss given as a float is a CPU tensor, and
    # NCCL reduces device tensors only.
    device = next((v.device for v in values if not v.is_cpu), values[0].device)
    stacked = torch.stack([v.detach().reshape(()).to(device=device, dtype=dtype) for v in values])
    return rank_mean(stacked, process_group).tolist()


class LossEvaluator:
    """Calls a closure the way a line search needs: first with gradients, then frozen trials.

    ``loss``: the first evaluation was run by the caller (gradients already in ``.grad``); only
    the trials call the closure, replaying ``rng`` (default: the RNG state of now).
    """

    def __init__(
        self,
        closure: Closure | None,
        params: list[Tensor],
        bn_module: nn.Module | None,
        loss: Tensor | float | None = None,
        rng: RNGSnapshot | None = None,
    ) -> None:
        self.closure = closure
        self.convention: Convention | None = None if closure is None else check_closure(closure)
        self.params = params
        self.bn_module = bn_module
        self.given_loss = loss
        self.rng = rng if rng is not None else RNGSnapshot(params)

    def first(self, grad_scaler: torch.amp.GradScaler | None = None) -> Tensor:
        """L0 with its backward pass (gradients land in ``.grad``), or the caller's L0.
        ``grad_scaler`` scales the loss before the backward the optimizer runs itself."""
        if self.given_loss is not None:
            if not any(p.grad is not None for p in self.params):
                raise ValueError(
                    "loss: step(closure, loss=L0) continues from gradients already computed, but "
                    "no parameter has a .grad; run the backward of L0 (of every micro-batch) first"
                )
            if isinstance(self.given_loss, Tensor):
                return _as_loss(self.given_loss)
            return torch.tensor(float(self.given_loss), dtype=torch.float64)
        with torch.enable_grad():
            if self.convention == "backwards":
                return _as_loss(self.closure(backwards=True))
            for p in self.params:  # as the SLS reference does: the step owns the gradients
                p.grad = None
            loss = self.closure()
            if any(p.grad is not None for p in self.params):
                raise RuntimeError(
                    "closure: it called loss.backward() itself although it takes no parameters; "
                    f"expected {_CONVENTIONS}"
                )
            loss = _as_loss(loss, detach=False)
            (loss if grad_scaler is None else grad_scaler.scale(loss)).backward()
            return loss.detach()

    def trial(self) -> Tensor:
        """The loss at the current parameters, with the first evaluation's randomness."""
        if self.closure is None:
            raise TypeError(f"closure: this step needs trial evaluations; pass {_CONVENTIONS}")
        with torch.no_grad(), self.rng.replay(), frozen_batchnorm_stats(self.bn_module):
            try:
                loss = self.closure(backwards=False) if self.convention == "backwards" else self.closure()
            except RuntimeError as error:
                if "does not require grad" not in str(error):
                    raise
                raise RuntimeError(
                    "closure: it called loss.backward() during a trial evaluation, which runs "
                    f"under torch.no_grad(); expected {_CONVENTIONS}"
                ) from error
        return _as_loss(loss)


def _as_loss(loss: object, detach: bool = True) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(
            f"closure: must return the loss as a one-element tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    if loss.dim():
        loss = loss.reshape(())
    return loss.detach() if detach and loss.requires_grad else loss
