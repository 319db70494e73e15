"""Two gloo processes on CPU: FSDP2 (``fully_shard``) must follow the unsharded model step for step.

Each rank holds one shard of every parameter and trains on its own batch. The optimizers must sum
the inner products of the search over the shards and average the losses over the ranks; then the
sharded run is the unsharded model trained on the union of the ranks' batches, to float
tolerance, with the same accepted step size at every step.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from ranks import free_port, loopback_env, run_ranks
from test_distributed import OPTIMIZERS, WORLD_SIZE, _data, _model

fsdp = pytest.importorskip("torch.distributed.fsdp")
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

N_STEPS = 20
SPAWN_TIMEOUT_S = 180.0


def _run(model: nn.Module, name: str, losses_of_batches) -> tuple[list[float], list[float]]:
    """``N_STEPS`` steps; returns the accepted step sizes and the (rank-averaged) L0s."""
    opt = OPTIMIZERS[name](model.parameters(), None)

    def closure(backwards: bool = False) -> Tensor:
        loss = losses_of_batches()
        if backwards:
            loss.backward()
        return loss

    step_sizes, losses = [], []
    for _ in range(N_STEPS):
        opt.zero_grad()
        opt.step(closure)
        step_sizes.append(opt.diagnostics["step_size"])
        losses.append(opt.diagnostics["loss"])
    return step_sizes, losses


def _sharded_run(rank: int, name: str, mesh) -> dict:
    model = _model()
    # reshard_after_forward=True on the root: FSDP2 otherwise keeps the root's parameters gathered
    # after a forward under no_grad, and the next trial would see the previous trial's parameters.
    fsdp.fully_shard(model, mesh=mesh, reshard_after_forward=True)
    x, y = _data(rank)
    step_sizes, losses = _run(model, name, lambda: F.cross_entropy(model(x), y))
    full = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])  # collective
    opt_state_shapes = []  # filled by a fresh optimizer step below: moments must stay sharded
    opt = OPTIMIZERS[name](model.parameters(), None)
    opt.zero_grad()
    opt.step(lambda backwards=False: _loss_and_maybe_backward(model, x, y, backwards))
    for p in model.parameters():
        for value in opt.state[p].values():
            if isinstance(value, Tensor) and value.dim() > 0:
                # A DTensor like the parameter (the distributed checkpoint saves it per shard).
                opt_state_shapes.append((tuple(value.to_local().shape), tuple(p.to_local().shape),
                                         type(value) is type(p)))
    return {"step_sizes": step_sizes, "losses": losses, "params": full, "state_shapes": opt_state_shapes}


def _loss_and_maybe_backward(model: nn.Module, x: Tensor, y: Tensor, backwards: bool) -> Tensor:
    loss = F.cross_entropy(model(x), y)
    if backwards:
        loss.backward()
    return loss


def _mixed_layout_error(mesh) -> str:
    model = _model()
    fsdp.fully_shard(model[0], mesh=mesh)  # only the first layer: the rest stays unsharded
    try:
        OPTIMIZERS["salsa"](model.parameters(), None)
    except ValueError as error:
        return str(error)
    return ""


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **loopback_env())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        results = {name: _sharded_run(rank, name, mesh) for name in OPTIMIZERS}
        results["mixed_error"] = _mixed_layout_error(mesh)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("fsdp")
    return run_ranks(_worker, (free_port(), str(out_dir)), WORLD_SIZE, SPAWN_TIMEOUT_S, out_dir)


def _unsharded_run(name: str) -> dict:
    """One process, the whole model, the loss of the union of the ranks' (equal-sized) batches."""
    model = _model()
    batches = [_data(rank) for rank in range(WORLD_SIZE)]
    union = lambda: sum(F.cross_entropy(model(x), y) for x, y in batches) / WORLD_SIZE  # noqa: E731
    step_sizes, losses = _run(model, name, union)
    return {"step_sizes": step_sizes, "losses": losses,
            "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()])}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_sharded_training_follows_the_unsharded_model_on_the_union_of_batches(ranks, name):
    expected = _unsharded_run(name)
    for rank in ranks:
        got = rank[name]
        assert got["step_sizes"] == pytest.approx(expected["step_sizes"], rel=1e-6)
        assert got["losses"] == pytest.approx(expected["losses"], rel=1e-5)
        assert torch.allclose(got["params"], expected["params"], rtol=1e-4, atol=1e-5)
    # The premise: the searches decided something (step sizes changed along the way).
    assert len(set(expected["step_sizes"])) > 1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_state_stays_sharded(ranks, name):
    shapes = ranks[0][name]["state_shapes"]
    if name in ("salsa_sgd", "sls"):
        assert shapes == []  # the plain gradient direction keeps no per-parameter tensors
    else:
        assert shapes and all(state == shard and like_param for state, shard, like_param in shapes)
        # Rank 0 holds the first 16 of the 32 rows of the first layer's weight (32 x 8).
        assert shapes[0][1] == (16, 8)


def test_mixing_sharded_and_unsharded_parameters_is_an_error_naming_the_fix(ranks):
    for rank in ranks:
        assert "FSDP2-sharded" in rank["mixed_error"] and "fully_shard" in rank["mixed_error"]
