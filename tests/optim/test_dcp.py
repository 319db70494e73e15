"""torch.distributed.checkpoint (DCP): the standard way to checkpoint large models.

``get_state_dict`` + ``dcp.save``, then ``dcp.load`` into a fresh model and optimizer +
``set_state_dict``, must continue bit-identically to an uninterrupted run: on a plain model in
one process, and under FSDP2 on two gloo ranks (each rank saving and loading its shards).
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

from optim import L4, SLS, SaLSA
from optim.presets import paper_optimizer

from ranks import free_port, loopback_env, run_ranks
from test_distributed import WORLD_SIZE, _data, _model

dcp = pytest.importorskip("torch.distributed.checkpoint")
state_dict_api = pytest.importorskip("torch.distributed.checkpoint.state_dict")
pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
    ),
    # dcp.save/dcp.load without a process group (the plain model) say that they assume one process.
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]

N_STEPS, SAVED_AT = 20, 10
SPAWN_TIMEOUT_S = 180.0
# Module level so that the spawned ranks find them by name. SLS searches along g: its
# per-parameter state is empty.
OPTIMIZERS = {
    "salsa": lambda params: SaLSA(params),
    "sls": lambda params: SLS(params),
    "l4": lambda params: L4(params),
    "adamsls": lambda params: paper_optimizer("adamsls", params),
}


def _train(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int) -> None:
    def closure(backwards: bool = False) -> Tensor:
        loss = F.cross_entropy(model(x), y)
        if backwards:
            loss.backward()
        return loss

    for _ in range(steps):
        opt.zero_grad()
        opt.step(closure)


def _save(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    model_state, optim_state = state_dict_api.get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)


def _load(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    model_state, optim_state = state_dict_api.get_state_dict(model, opt)  # what to load into
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=path)
    state_dict_api.set_state_dict(
        model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"]
    )


def _disturbed(model: nn.Module) -> nn.Module:
    """Another initialisation: everything must come from the checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def _diagnostics(opt) -> dict:
    return dict(opt.diagnostics)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_get_and_set_optimizer_state_dict_and_dcp_on_a_plain_model(name, tmp_path):
    x, y = _data(0)
    straight = _model()
    opt = OPTIMIZERS[name](straight.parameters())
    _train(straight, opt, x, y, N_STEPS)

    first = _model()
    opt_first = OPTIMIZERS[name](first.parameters())
    _train(first, opt_first, x, y, SAVED_AT)
    osd = state_dict_api.get_optimizer_state_dict(first, opt_first)  # 0.1.0: KeyError 'line_search'
    assert set(osd["state"]) <= {name for name, _ in first.named_parameters()}
    _save(first, opt_first, tmp_path)

    resumed = _disturbed(_model())
    opt_resumed = OPTIMIZERS[name](resumed.parameters())
    _load(resumed, opt_resumed, tmp_path)
    _train(resumed, opt_resumed, x, y, N_STEPS - SAVED_AT)

    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    assert _diagnostics(opt_resumed) == pytest.approx(_diagnostics(opt), nan_ok=True)

    # set_optimizer_state_dict alone, from the dict get_optimizer_state_dict gave
    again = _disturbed(_model())
    again.load_state_dict(first.state_dict())
    opt_again = OPTIMIZERS[name](again.parameters())
    state_dict_api.set_optimizer_state_dict(again, opt_again, osd)
    _train(again, opt_again, x, y, N_STEPS - SAVED_AT)
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), again.parameters()))


def _sharded(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    # reshard_after_forward=True on the root: trials under no_grad must not reuse gathered
    # parameters (see LineSearchOptimizer).
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def _full(model: nn.Module) -> list[Tensor]:
    return [p.full_tensor() for p in model.parameters()]  # a collective


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **loopback_env())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        x, y = _data(rank)
        results = {}
        for name, make in OPTIMIZERS.items():
            straight = _sharded(_model(), mesh)
            opt = make(straight.parameters())
            _train(straight, opt, x, y, N_STEPS)

            first = _sharded(_model(), mesh)
            opt_first = make(first.parameters())
            _train(first, opt_first, x, y, SAVED_AT)
            path = Path(out_dir) / name
            _save(first, opt_first, path)
            del first, opt_first

            resumed = _sharded(_disturbed(_model()), mesh)
            opt_resumed = make(resumed.parameters())
            _load(resumed, opt_resumed, path)
            _train(resumed, opt_resumed, x, y, N_STEPS - SAVED_AT)
            results[name] = {
                "straight": (_full(straight), _diagnostics(opt)),
                "resumed": (_full(resumed), _diagnostics(opt_resumed)),
                "moments_sharded": all(
                    type(value) is type(p)
                    for p in resumed.parameters() for value in opt_resumed.state[p].values()
                ),
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dcp")
    return run_ranks(_worker, (free_port(), str(out_dir)), WORLD_SIZE, SPAWN_TIMEOUT_S, out_dir)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fsdp2_dcp_save_and_load_into_a_fresh_model_continues_bit_identically(ranks, name):
    for rank in ranks:
        straight, straight_diagnostics = rank[name]["straight"]
        resumed, resumed_diagnostics = rank[name]["resumed"]
        assert all(torch.equal(p, q) for p, q in zip(straight, resumed))
        assert resumed_diagnostics == pytest.approx(straight_diagnostics, nan_ok=True)
        assert resumed_diagnostics["n_steps"] == N_STEPS
        assert rank[name]["moments_sharded"]
    # The premise: the run after the checkpoint moved the parameters.
    assert ranks[0][name]["straight"][1]["n_steps"] > SAVED_AT
