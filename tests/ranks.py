"""Starting a few gloo ranks on this machine for the multi-process tests, and collecting what
each wrote."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env() -> dict[str, str]:
    """gloo otherwise picks its interface by resolving the hostname, which fails in some sandboxes;
    every rank here is on the loopback device."""
    return {"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux") else {}


def run_ranks(worker: Callable[..., None], args: tuple, world_size: int, timeout_s: float, out_dir: Path) -> list:
    """Spawn ``worker(rank, *args)`` on ``world_size`` processes and return what each saved as
    ``out_dir/rank<r>.pt``. A rank's exception is re-raised; a hang (ranks issuing different
    collectives) fails the test after ``timeout_s`` instead of blocking it."""
    context = mp.start_processes(worker, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):  # re-raises a rank's error
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            for process in context.processes:
                process.join(5)
            pytest.fail(f"the {world_size} ranks did not finish within {timeout_s} s (hang?)")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
