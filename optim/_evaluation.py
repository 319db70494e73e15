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

import torch
import torch.distributed as dist
from torch import Tensor, nn

Closure = Callable[..., Tensor]


def check_closure(closure: Closure | None) -> Closure:
    """Return ``closure`` if it follows the SaLSA convention ``closure(backwards: bool = False)``.

    The optimizer calls it once with ``backwards=True`` (the closure computes the loss and calls
    ``loss.backward()``) and then, under ``torch.no_grad()``, with ``backwards=False`` for every
    trial point. Raises ``TypeError`` naming the missing parameter otherwise.
    """
    if closure is None:
        raise TypeError(
            "closure: a line search must re-evaluate the loss; call opt.step(closure) with "
            "closure(backwards: bool = False) -> Tensor"
        )
    if not callable(closure):
        raise TypeError(f"closure: expected a callable, got {type(closure).__name__}")
    code = getattr(closure, "__code__", None)
    if code is not None and _code_takes_backwards(code):
        return closure  # the common case, without inspect.signature's cost on every step
    try:
        parameters = inspect.signature(closure).parameters
    except (TypeError, ValueError):  # builtins and some C callables expose no signature
        return closure
    takes_backwards = "backwards" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
    if not takes_backwards:
        raise TypeError(
            "closure: it must accept the keyword parameter 'backwards' "
            "(closure(backwards: bool = False) -> Tensor, calling loss.backward() only when "
            "backwards is true)"
        )
    return closure


@functools.lru_cache(maxsize=256)
def _code_takes_backwards(code: types.CodeType) -> bool:
    """Whether a function with this code object accepts ``backwards`` (or any keyword)."""
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return "backwards" in names or bool(code.co_flags & inspect.CO_VARKEYWORDS)


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


class FrozenRNG:
    """Captures the RNG state before the first evaluation and replays it for every trial.

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
        with torch.random.fork_rng(
            devices=self.device_indices, device_type=self.device_type or "cuda"
        ):
            torch.set_rng_state(self.cpu_state)
            if self.device_type is not None:
                module = getattr(torch, self.device_type)
                for index, state in zip(self.device_indices, self.device_states):
                    module.set_rng_state(state, index)
            yield


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module | None) -> Iterator[None]:
    """Hold the running statistics of every BatchNorm layer of ``module`` during trials.

    A layer in train mode keeps normalising with the batch statistics (so a trial sees the same
    function as the first evaluation) but, with ``track_running_stats`` switched off for the
    duration, neither ``running_mean``/``running_var`` nor ``num_batches_tracked`` change.
    """
    if module is None:
        yield
        return
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


def host_floats(values: Tensor, process_group: dist.ProcessGroup | None) -> list[float]:
    """The rank-averaged values as Python floats: the one host sync of an evaluation."""
    values = values.detach().reshape(-1).to(decision_dtype(values))
    return rank_mean(values, process_group).tolist()


class LossEvaluator:
    """Calls a closure the way a line search needs: first with gradients, then frozen trials."""

    def __init__(
        self,
        closure: Closure,
        params: list[Tensor],
        bn_module: nn.Module | None,
    ) -> None:
        self.closure = closure
        self.bn_module = bn_module
        self.rng = FrozenRNG(params)

    def first(self) -> Tensor:
        """L0 with its backward pass (gradients land in ``.grad``)."""
        with torch.enable_grad():
            loss = self.closure(backwards=True)
        return _as_loss(loss)

    def trial(self) -> Tensor:
        """The loss at the current parameters, with the first evaluation's randomness."""
        with torch.no_grad(), self.rng.replay(), frozen_batchnorm_stats(self.bn_module):
            loss = self.closure(backwards=False)
        return _as_loss(loss)


def _as_loss(loss: object) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(
            f"closure: must return the loss as a one-element tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    return loss.detach().reshape(())
