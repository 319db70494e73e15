"""Shared fixtures: small deterministic problems with closures in the SaLSA convention."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

# The suite runs as the harness's default trainer does: one CPU thread per process, torch's and
# the OpenMP/MKL pools of the processes the tests start. Its models are tiny, and on a machine
# whose cores are busy the threads of one process wait for each other (the default suite took
# 18 minutes with torch's default on a loaded 2-core machine, 5 with one thread).
for _pool in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")
torch.set_num_threads(1)


def quadratic_closure(theta: Tensor, curvature: float = 1.0) -> Callable[..., Tensor]:
    """f(theta) = curvature/2 * ||theta||^2, whose gradient is curvature * theta."""

    def closure(backwards: bool = False) -> Tensor:
        loss = 0.5 * curvature * (theta**2).sum()
        if backwards:
            loss.backward()
        return loss

    return closure


def model_closure(model: nn.Module, x: Tensor, y: Tensor, loss_fn=nn.functional.cross_entropy):
    """Closure of ``loss_fn(model(x), y)`` in the SaLSA convention."""

    def closure(backwards: bool = False) -> Tensor:
        loss = loss_fn(model(x), y)
        if backwards:
            loss.backward()
        return loss

    return closure


def small_mlp(seed: int = 0, dropout: float = 0.0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 3)
    ).to(dtype)


def classification_batch(seed: int = 0, n: int = 64, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


@pytest.fixture(autouse=True)
def log_handlers_let_go_of_the_capture():
    """A handler that a test's imports made on pytest's captured stdout or stderr (absl's, with
    tensorflow-datasets) writes to the real stream afterwards. absl's handler closes its stream
    when Hydra's logging set-up in a later in-process ``main.py`` replaces it, and that stream is
    pytest's own capture (the whole session then fails)."""
    yield
    real = {id(sys.stdout): sys.__stdout__, id(sys.stderr): sys.__stderr__}
    for reference in list(logging._handlerList):
        handler = reference()
        stream = vars(handler).get("stream") if handler is not None else None  # not a lazy sys.stderr
        if stream is not None and id(stream) in real:
            handler.setStream(real[id(stream)])


@pytest.fixture
def batch() -> tuple[Tensor, Tensor]:
    return classification_batch()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` where no CUDA device is present, saying why
    (``tests/cuda_utils.py``; the default run deselects them anyway)."""
    from cuda_utils import skip_reason

    reason = skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local single-node SLURM cluster (``tests/slurm_cluster.py``); skips where it cannot start."""
    import slurm_cluster as local

    cluster, why_not, started_here = local.start()
    if cluster is None:
        pytest.skip(f"no local SLURM cluster: {why_not}")
    yield cluster
    if started_here:
        local.stop()
