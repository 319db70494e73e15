"""What the CUDA tests (marker ``cuda``: ``tests/optim/test_cuda_optim.py``,
``tests/harness/test_cuda_harness.py``, and the compiled kernel's cases in
``tests/optim/test_fused_triton.py``) share: the device they run on, why they are skipped, and a
counter of host synchronisations.

Select them with ``python -m pytest -m cuda`` (the default run deselects them). Without a CUDA
device they are skipped with the reason :func:`skip_reason` gives (``tests/conftest.py``).

``CUDA_TESTS_ON_CPU=1`` is a dry run for machines without a GPU: the tests run on the CPU so that
their own logic (configs, fixtures, expected trajectories and counters) is exercised; the ones
whose subject only exists on a GPU (the sync debug mode, the CUDA caching allocator, NCCL) skip
themselves through :func:`require_real_cuda`. A dry run that passes says nothing about CUDA.
"""

from __future__ import annotations

import contextlib
import os
import unittest.mock
import warnings
from collections.abc import Iterator

import pytest
import torch

DRY_RUN_VARIABLE = "CUDA_TESTS_ON_CPU"
# The text of the warning torch.cuda.set_sync_debug_mode("warn") raises for every synchronising
# CUDA call it instruments (c10/cuda/CUDAFunctions.cpp, warn_or_error_on_sync).
SYNC_WARNING = "called a synchronizing CUDA operation"


def dry_run() -> bool:
    return os.environ.get(DRY_RUN_VARIABLE) == "1" and not torch.cuda.is_available()


def skip_reason() -> str | None:
    """Why ``cuda`` tests cannot run here (``None``: they can)."""
    if torch.cuda.is_available() or dry_run():
        return None
    build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__}, {build}); "
        "run them on a GPU machine with python -m pytest -m cuda or scripts/gpu_check.sh"
    )


def device() -> torch.device:
    """``cuda`` (the current device), or ``cpu`` in a dry run."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def require_real_cuda(what: str) -> None:
    """Skip the calling test in a dry run: ``what`` exists only on a CUDA device."""
    if not torch.cuda.is_available():
        pytest.skip(f"dry run on CPU: {what} needs a CUDA device")


def require_bf16() -> None:
    """Skip the calling test on a GPU without bfloat16 (before Ampere autocast cannot use it)."""
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} does not support bfloat16")


class SyncCounter:
    """Counts the host synchronisations of the CUDA calls in its body.

    ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising call that torch
    instruments (a device-to-host copy such as ``.item()`` or ``.tolist()``, a blocking
    host-to-device copy, ``torch.cuda.synchronize()``, stream synchronisation) raise one
    ``UserWarning``; they are recorded, never filtered out or deduplicated, and counted. torch
    documents that not every synchronising operation is instrumented (``torch.distributed`` is
    not), so :meth:`calibrate` first checks that a known single sync is seen exactly once.

    In a dry run on the CPU there is nothing to synchronise; the counter then counts the calls of
    ``host_floats``, the optimizers' one way of reading device values (one sync each on CUDA), so
    that a test's expected count is checked against the code's structure at least.
    """

    HOST_READERS = ("optim._base", "optim.line_search", "optim.l4")

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        if not torch.cuda.is_available():
            with self._counting_host_reads():
                yield
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.count += sum(SYNC_WARNING in str(w.message) for w in caught)

    @contextlib.contextmanager
    def _counting_host_reads(self) -> Iterator[None]:
        import importlib

        from optim._evaluation import host_floats

        def counted(*args, **kwargs):
            self.count += 1
            return host_floats(*args, **kwargs)

        with contextlib.ExitStack() as stack:
            for name in self.HOST_READERS:
                module = importlib.import_module(name)
                if getattr(module, "host_floats", None) is host_floats:
                    stack.enter_context(unittest.mock.patch.object(module, "host_floats", counted))
            yield

    @staticmethod
    def count_in(fn) -> int:
        counter = SyncCounter()
        with counter.counting():
            fn()
        return counter.count

    @staticmethod
    def calibrate() -> None:
        """A device tensor read once is one sync; launching kernels is none (CUDA only)."""
        if not torch.cuda.is_available():
            return
        x = torch.ones(4, device="cuda")
        assert SyncCounter.count_in(lambda: (x * 2).sum()) == 0, "kernel launches counted as syncs"
        assert SyncCounter.count_in(lambda: x.sum().item()) == 1, ".item() is not counted once"
        assert SyncCounter.count_in(lambda: torch.stack([x[0], x[1]]).tolist()) == 1
