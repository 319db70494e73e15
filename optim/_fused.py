r"""The fused passes of the Adam-preconditioned searches: one interface, a kernel per device.

A searched step of SaLSA or SLS along Adam's direction, done with foreach ops, streams the
parameter-sized tensors about 19 times through memory (fused Adam: 7) and keeps a scratch
buffer. The two functions here do a step's work in as few passes as Adam's own update: each
reads every tensor once and writes each written tensor once, the direction living in registers.
Every argument list holds the local tensors (shards, under FSDP2) of one device, all of one dtype
(``FusedAdamDirection`` groups them so); the maths is in float32 (float64 for float64 tensors),
bfloat16 rounded once on store. Per element of tensor :math:`i`:

* :func:`first_pass`: :math:`m \leftarrow m + (1-\beta_1)(g - m)`,
  :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`, then with the new moments
  :math:`p \leftarrow \text{decays}_i\, p + (\alpha_g g + \alpha_m m)/(\sqrt v + \hat\epsilon)`;
  with ``dot=(a, b)`` it returns :math:`\sum a\, b / (\sqrt v + \hat\epsilon)` over all tensors
  and elements (``a``, ``b`` each ``"grad"`` or ``"exp_avg"``) as a 0-d float32 tensor on the
  device (float64 for float64 tensors), else ``None``.
* :func:`move`: :math:`p \leftarrow p + (\alpha_g g + \alpha_m m)/(\sqrt v + \hat\epsilon)`.

The bias corrections ride on :math:`\hat\epsilon = \epsilon\sqrt{bc_2}` and the alphas
(:math:`P g = \sqrt{bc_2}\, g/(\sqrt v + \hat\epsilon)`, :math:`P\hat m = \sqrt{bc_2}/bc_1\,
m/(\sqrt v + \hat\epsilon)`), as in ``AdamPreconditioner``.

The kernels: on CPU a C++ extension (``optim/_fused_cpu.py``, compiled on first use and cached
by torch for the machine), on CUDA Triton kernels (``optim/_fused_triton.py``), both with the
signatures of the two functions here. Where a device's kernel cannot be had (no compiler, a
failed build, no Triton), :func:`unavailable_reason` says why: ``fused=None`` then takes the
foreach path with a one-line notice (:func:`notice_foreach`), ``fused=True`` refuses.
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType
from typing import Literal

from torch import Tensor

Vector = Literal["grad", "exp_avg"]

# The module holding each device type's kernels (first_pass and move with this module's
# signatures), imported on first use.
_BACKENDS = {"cpu": "optim._fused_cpu", "cuda": "optim._fused_triton"}

logger = logging.getLogger(__name__)


def first_pass(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    decays: list[float],
    beta1: float,
    beta2: float,
    eps_hat: float,
    alpha_grad: float,
    alpha_avg: float,
    dot: tuple[Vector, Vector] | None,
) -> Tensor | None:
    """The moment update, decay, move and inner product of a step in one pass (module docstring)."""
    if not params:
        return None
    return _backend(params[0].device.type).first_pass(
        params, grads, exp_avgs, exp_avg_sqs, decays=decays, beta1=beta1, beta2=beta2, eps_hat=eps_hat,
        alpha_grad=alpha_grad, alpha_avg=alpha_avg, dot=dot,
    )


def move(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    eps_hat: float,
    alpha_grad: float,
    alpha_avg: float,
) -> None:
    """:math:`p \\leftarrow p + (\\alpha_g g + \\alpha_m m)/(\\sqrt v + \\hat\\epsilon)` in one pass."""
    if params:
        _backend(params[0].device.type).move(
            params, grads, exp_avgs, exp_avg_sqs, eps_hat=eps_hat, alpha_grad=alpha_grad, alpha_avg=alpha_avg
        )


def unavailable_reason(device_type: str) -> str | None:
    """``None`` when tensors of ``device_type`` have fused kernels here (importing, and on CPU
    building, them on the first call of the process), else why not, in a few words."""
    backend = _load(device_type)
    return backend if isinstance(backend, str) else None


def notice_foreach(device_type: str, reason: str) -> None:
    """Say once per process and device type, in one line, that ``fused=None`` took the foreach
    path: the run is slower than it could be, and the reason says what would fix it. Device
    types with no kernel of this package's (MPS, XPU, ...) take it silently, as they always did."""
    if device_type in _BACKENDS:
        _notice_once(device_type, reason)


@functools.cache
def _notice_once(device_type: str, reason: str) -> None:
    logger.warning(
        "optim: no fused kernel for %s tensors (%s); the line searches use foreach ops "
        "(fused=False silences this)", device_type, reason,
    )


def _backend(device_type: str) -> ModuleType:
    backend = _load(device_type)
    if isinstance(backend, str):
        raise RuntimeError(f"optim: no fused kernel for {device_type} tensors: {backend}")
    return backend


@functools.cache
def _load(device_type: str) -> ModuleType | str:
    """The kernels' module for ``device_type``, or why there is none (cached for the process)."""
    name = _BACKENDS.get(device_type)
    if name is None:
        return f"this package has fused kernels for {' and '.join(_BACKENDS)} tensors only"
    try:
        module = importlib.import_module(name)
        check = getattr(module, "ready", None)
        if check is not None:
            check()
    except Exception as error:  # no compiler, a failed build, no Triton: foreach still works
        logger.debug("optim: the fused kernels for %s tensors cannot be had", device_type, exc_info=True)
        return _summary(error)
    return module


REASON_CHARS = 200


def _summary(error: BaseException) -> str:
    """The error in a few words: its first line, shortened (the whole of it is logged at DEBUG)."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= REASON_CHARS else first[: REASON_CHARS - 3] + "..."
