"""Triton's interpreter in a process of its own, for the tests of ``optim/_fused_triton.py`` on a
machine without a GPU.

Under ``TRITON_INTERPRET=1`` a ``@triton.jit`` function runs in Python with numpy, on CPU tensors.
Triton reads the variable when each such function is decorated, its own library's (``tl.sum``,
``tl.zeros``) at ``import triton``: a process that has imported Triton without it cannot
interpret. So :class:`Interpreter` runs the kernels in one child process that sets the variable
before anything imports Triton, and the test session's own Triton is left as it was.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch


def call_counting_launches(name: str, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, Any, list]:
    """``optim._fused_triton.<name>(*args, **kwargs)``: the arguments after the call (it writes
    into them), its result and the grid of each launch of the kernel."""
    from optim import _fused_triton
    from optim._fused_triton_kernel import fused_step

    grids = []
    run = fused_step.run

    def counted(*run_args, grid, **run_kwargs):
        grids.append(grid)
        return run(*run_args, grid=grid, **run_kwargs)

    fused_step.run = counted  # launching is fused_step[grid](...), which calls fused_step.run
    try:
        result = getattr(_fused_triton, name)(*args, **kwargs)
    finally:
        del fused_step.run
    return args, result, grids


class Interpreter:
    """A child process that runs :func:`call_counting_launches` under Triton's interpreter."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_interpret
        )

    def run(self, name: str, args: tuple, **kwargs: Any) -> tuple[tuple, Any, list]:
        """:func:`call_counting_launches` in the child; the tensors go there and back through
        ``torch.save`` (views keep their offsets and strides, so alignment and layout too)."""
        result = self._pool.submit(_call_saved, _saved((name, args, kwargs))).result()
        return torch.load(io.BytesIO(result))

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown()


def _interpret() -> None:
    if "triton" in sys.modules:
        raise RuntimeError("triton was imported before TRITON_INTERPRET could be set")
    os.environ["TRITON_INTERPRET"] = "1"


def _call_saved(request: bytes) -> bytes:
    name, args, kwargs = torch.load(io.BytesIO(request))
    return _saved(call_counting_launches(name, args, kwargs))


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
