r"""The fused Adam-direction step on CUDA devices, in Triton: one pass over memory per call.

For lists of one device's tensors of one dtype (float32, bfloat16 or float64), element by element
and tensor by tensor (decay :math:`\lambda_i` for tensor :math:`i`):

:func:`first_pass`

.. math::

    m &\leftarrow m + (1-\beta_1)(g - m) \qquad (\text{torch.lerp}(m, g, 1-\beta_1)) \\
    v &\leftarrow \beta_2 v + (1-\beta_2)\, g^2 \\
    p &\leftarrow \lambda_i\, p + \frac{\alpha_g\, g + \alpha_m\, m}{\sqrt v + \hat\epsilon}

and, when asked, :math:`\sum a\, b / (\sqrt v + \hat\epsilon)` over all tensors and elements for
:math:`a, b \in \{g, m\}` (new :math:`m` and :math:`v`);

:func:`move`

.. math::

    p \leftarrow p + \frac{\alpha_g\, g + \alpha_m\, m}{\sqrt v + \hat\epsilon}.

Each element of :math:`p, g, m, v` is read once and each of :math:`p, m, v` written once, the
seven memory accesses of torch's fused Adam; the inner product adds none (it is summed in
registers). Arithmetic is in float32 (float64 for float64 tensors) with torch's rounding (square
root and division to nearest) and one rounding on each store; the inner product is taken with the
new :math:`m` and :math:`\sqrt v + \hat\epsilon` before they are rounded to the tensors' dtype.

One kernel launch per call covers all tensors (``_fused_triton_kernel.py``): a table of the
tensors' addresses, sizes and decays, built on the host and copied to the device without waiting
(pinned memory), tells each program which tensor its block belongs to. Nothing here waits for the
device: the inner product comes back as a 0-d tensor on it, per-block partial sums added by
``torch.sum`` (no atomics, so the same inputs give the same bits). Triton is imported at the first
call, not with this module.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import struct
from typing import Literal, get_args

import torch
from torch import Tensor

Operand = Literal["grad", "exp_avg"]

# Elements per program (a power of two) and the warps that share them: 8 per thread, two 16-byte
# loads of float32. Compiled for sm_90, 64 registers a thread (float32 and bfloat16; 122 for
# float64) and no spills, so four programs fit an SM; 16 per thread took 198 registers (one program
# per SM), and fewer per thread make more programs, each paying the table's look-up first.
BLOCK = 2048
NUM_WARPS = 8
LIST_NAMES = ("params", "grads", "exp_avgs", "exp_avg_sqs")


def available(device: torch.device, dtype: torch.dtype) -> str | None:
    """``None`` when :func:`first_pass` and :func:`move` run on tensors of ``device`` and
    ``dtype``, else the reason in one line (for a caller that then takes another path)."""
    if device.type != "cuda":
        return f"the Triton kernels run on CUDA devices, not on {device.type}"
    try:
        from ._fused_triton_kernel import DTYPES
    except ImportError as error:  # torch without Triton (a CPU build; CUDA on Windows)
        return f"Triton cannot be imported ({error})"
    if dtype not in DTYPES:
        return f"the Triton kernels take {', '.join(map(str, DTYPES))}, not {dtype}"
    if torch.version.hip is None and torch.cuda.get_device_capability(device) < (7, 0):
        return f"{torch.cuda.get_device_name(device)} is older than Triton supports (CUDA capability 7.0)"
    return None



def ready() -> None:
    """Raise ``RuntimeError`` with :func:`available`'s reason when the current CUDA device cannot
    run the kernels (``optim._fused`` asks once per process, then takes the foreach path)."""
    reason = available(torch.device("cuda", torch.cuda.current_device()), torch.float32)
    if reason is not None:
        raise RuntimeError(reason)

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
    dot: tuple[Operand, Operand] | None,
) -> Tensor | None:
    r"""Update the moments, decay and move the parameters (see the module's docstring), in place.

    ``dot=(a, b)`` with ``a, b`` in ``("grad", "exp_avg")`` returns
    :math:`\sum a\, b / (\sqrt v + \hat\epsilon)` over all tensors and elements as a 0-d float32
    tensor on their device (float64 for float64 tensors), without waiting for it (0 on the CPU
    for empty lists); ``dot=None`` returns ``None``. Raises ``ValueError`` for tensors the kernel
    cannot take (see :func:`_check`).
    """
    if len(decays) != len(params):
        raise ValueError(f"decays: {len(decays)} values for {len(params)} params")
    if dot is not None and (len(dot) != 2 or any(x not in get_args(Operand) for x in dot)):
        raise ValueError(f"dot: {dot!r}; expected None or a pair of {get_args(Operand)}")
    return _launch(
        [params, grads, exp_avgs, exp_avg_sqs],
        decays,
        (1.0 - beta1, beta2, 1.0 - beta2, eps_hat, alpha_grad, alpha_avg),
        first_pass=True,
        dot=tuple(sorted(dot)) if dot is not None else None,  # a b = b a: one kernel for both
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
    r""":math:`p \leftarrow p + (\alpha_g g + \alpha_m m) / (\sqrt v + \hat\epsilon)`, in place
    (reads :math:`p, g, m, v`, writes :math:`p`). Raises ``ValueError`` as :func:`first_pass`."""
    _launch(
        [params, grads, exp_avgs, exp_avg_sqs],
        [1.0] * len(params),
        (0.0, 1.0, 0.0, eps_hat, alpha_grad, alpha_avg),  # a move reads no decay nor betas
        first_pass=False,
        dot=None,
    )


def _launch(
    lists: list[list[Tensor]],
    decays: list[float],
    scalars: tuple[float, ...],
    *,
    first_pass: bool,
    dot: tuple[Operand, ...] | None,
) -> Tensor | None:
    device, dtype = _check(lists)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    # The kernel's table (_fused_triton_kernel.ROW): a row per tensor with elements (an empty one
    # has no block, and the kernel's search needs strictly increasing starts), then where each
    # one's blocks start. Built a list at a time: this runs for every tensor of every step.
    kept = [i for i, p in enumerate(lists[0]) if p.numel() > 0]
    addresses = [[tensors[i].data_ptr() for i in kept] for tensors in lists]
    numels = [lists[0][i].numel() for i in kept]
    decay_bits = _float64_bits([decays[i] for i in kept])
    rows = [x for row in zip(*addresses, numels, decay_bits) for x in row]
    starts = list(itertools.accumulate((-(-n // BLOCK) for n in numels), initial=0))
    # Every address is a multiple of 16 when their bitwise or is.
    aligned = functools.reduce(operator.or_, itertools.chain(*addresses), 0) % 16 == 0
    n_blocks = starts[-1]
    if n_blocks == 0:
        return torch.zeros((), dtype=compute, device=device) if dot is not None else None

    from ._fused_triton_kernel import DTYPES, fused_step

    if dtype not in DTYPES:
        raise ValueError(f"params are {dtype}; the kernel takes {', '.join(map(str, DTYPES))}")
    on_cuda = device.type == "cuda"
    # Pinned, the copy is queued on the stream and the host goes on: no synchronisation.
    table = torch.tensor(rows + starts, dtype=torch.int64, pin_memory=on_cuda)
    partials = torch.empty(n_blocks, dtype=compute, device=device) if dot is not None else None
    # Triton launches on the current device; the tensors may be on another one.
    with torch.cuda.device(device) if on_cuda else contextlib.nullcontext():
        fused_step[(n_blocks,)](
            table.to(device, non_blocking=True),
            len(starts) - 1,
            partials,
            *scalars,
            DTYPE=DTYPES[dtype],
            COMPUTE=DTYPES[compute],
            FIRST_PASS=first_pass,
            DOT_LEFT=dot[0] if dot is not None else "",
            DOT_RIGHT=dot[1] if dot is not None else "",
            BLOCK=BLOCK,
            ALIGNED=aligned,
            num_warps=NUM_WARPS,
        )
    return partials.sum() if partials is not None else None


def _check(lists: list[list[Tensor]]) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of the tensors, after checking what the kernel relies on: lists of
    one length; at each index four tensors of one shape and one layout; all on one device with
    one dtype; each dense (its elements one block of memory, in any dimension order: contiguous
    or channels-last, not a strided view). ``ValueError`` names the first one that is not."""
    lengths = {len(tensors) for tensors in lists}
    if len(lengths) != 1:
        counts = ", ".join(f"{len(t)} {name}" for name, t in zip(LIST_NAMES, lists))
        raise ValueError(f"lists of different lengths: {counts}")
    if not lists[0]:
        return torch.device("cpu"), torch.float32
    device, dtype = lists[0][0].device, lists[0][0].dtype
    for i, (p, g, m, v) in enumerate(zip(*lists)):
        # One expression for the common case, as it runs for every tensor of every step (0.5 us a
        # tensor on a 2-core machine; checking each tensor in a loop took twice as long).
        if (
            p.dtype == g.dtype == m.dtype == v.dtype == dtype
            and p.device == g.device == m.device == v.device == device
            and p.shape == g.shape == m.shape == v.shape
            and p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()
        ):
            continue
        _check_one_layout(i, (p, g, m, v), device, dtype)
    return device, dtype


def _check_one_layout(
    i: int, tensors: tuple[Tensor, ...], device: torch.device, dtype: torch.dtype
) -> None:
    """``ValueError`` unless the tensors at index ``i`` are on ``device``, of ``dtype``, of one
    shape and strides, and dense."""
    p = tensors[0]
    for name, t in zip(LIST_NAMES, tensors):
        if t.dtype != dtype or t.device != device:
            raise ValueError(
                f"{name}[{i}] is {t.dtype} on {t.device}; params[0] is {dtype} on {device}: "
                "the kernel takes the tensors of one device and one dtype"
            )
        if t.shape != p.shape or t.stride() != p.stride():
            raise ValueError(
                f"{name}[{i}] has shape {tuple(t.shape)} and strides {t.stride()}, params[{i}] "
                f"{tuple(p.shape)} and {p.stride()}: the kernel pairs their elements in memory"
            )
    if not _dense(p):
        raise ValueError(
            f"params[{i}] has shape {tuple(p.shape)} and strides {p.stride()}, which leave gaps or "
            "overlap; the kernel takes dense tensors (contiguous or channels-last)"
        )


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory exactly once, in some order of its
    dimensions: sorted by stride, each stride is the number of elements of the dimensions before."""
    expected = 1
    for stride, size in sorted((st, s) for st, s in zip(t.stride(), t.shape) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _float64_bits(xs: list[float]) -> list[int]:
    """The int64s with the bits of the float64s ``xs`` (the kernel's table holds int64)."""
    return list(struct.unpack(f"<{len(xs)}q", struct.pack(f"<{len(xs)}d", *xs)))
