"""Two-process gloo runs on CPU: DDP with different data per rank must keep the ranks in lockstep.

DDP averages the gradients, but a line search (or L4) also decides from *losses*, which differ
per rank when the data do. The optimizers average those losses over the process group, so every
rank must accept the same step size and end with bit-identical parameters. The negative control
gives each rank a single-rank group: each then decides from its own loss and the ranks drift.

All scenarios run in one spawn (starting two interpreters with torch is the expensive part); the
tests below read the files the ranks wrote.
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
from torch.nn.parallel import DistributedDataParallel

from optim import L4, SLS, SaLSA

from ranks import free_port, loopback_env, run_ranks

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WORLD_SIZE = 2
N_STEPS = 20
N_PER_RANK = 64
INPUT_SCALES = (3.0, 30.0)
N_EARLY = 3  # steps compared with a single-process run on all the data
SPAWN_TIMEOUT_S = 120.0  # a hang (e.g. ranks issuing different collectives) fails, never blocks

# name -> optimizer factory (params, process_group) -> optimizer. Module level so it pickles
# with the worker (the worker looks the factories up by name).
OPTIMIZERS = {
    "salsa": lambda params, pg: SaLSA(params, process_group=pg),
    "salsa_sgd": lambda params, pg: SaLSA(params, direction="sgd", process_group=pg),
    "sls": lambda params, pg: SLS(params, process_group=pg),
    "sls_adam": lambda params, pg: SLS(params, direction="adam", process_group=pg),
    "l4": lambda params, pg: L4(params, process_group=pg),
}
LINE_SEARCHES = ("salsa", "salsa_sgd", "sls", "sls_adam")
# The negative control: SLS where each rank's process_group is a group of itself alone.
OWN_GROUP = "sls_own_group"


def _model() -> nn.Module:
    torch.manual_seed(0)  # the same init on every rank
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))


def _data(rank: int, n: int = N_PER_RANK) -> tuple[Tensor, Tensor]:
    """A different batch per rank, labelled by the same scale-free rule (one model fits both).

    The ranks' inputs also differ in scale, so their losses (and what a search would accept on
    each alone) differ clearly, and the larger scale makes a step size of 1 overshoot so the
    searches must backtrack: equal step sizes on both ranks would otherwise prove nothing."""
    g = torch.Generator().manual_seed(1000 + rank)
    x = INPUT_SCALES[rank] * torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > x[:, 2]).long()
    return x, y


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _train(rank: int, name: str, process_group: dist.ProcessGroup | None) -> dict:
    factory = OPTIMIZERS["sls" if name == OWN_GROUP else name]
    model = _model()
    ddp = DistributedDataParallel(model)
    x, y = _data(rank)

    def closure(backwards: bool = False) -> Tensor:
        # The backward evaluation goes through DDP (gradient all-reduce); trial evaluations run
        # under no_grad through DDP as well, which only does a forward.
        loss = F.cross_entropy(ddp(x), y)
        if backwards:
            loss.backward()
        return loss

    init = _flat(model)
    with torch.no_grad():
        init_loss = F.cross_entropy(model(x), y).item()
    opt = factory(model.parameters(), process_group)
    step_sizes, losses = [], []
    for i in range(N_STEPS):
        opt.zero_grad()
        losses.append(opt.step(closure).item())
        step_sizes.append(opt.diagnostics["step_size"])
        if i + 1 == N_EARLY:
            early = _flat(model)
    with torch.no_grad():
        final_loss = F.cross_entropy(model(x), y).item()
    return {
        "init": init,
        "params": _flat(model),
        "early_params": early,
        "step_sizes": step_sizes,
        "losses": losses,
        "init_loss": init_loss,
        "final_loss": final_loss,
        "diagnostics": dict(opt.diagnostics),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.update(loopback_env())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        # new_group is collective: every rank creates every group, in the same order.
        own_groups = [dist.new_group([r]) for r in range(WORLD_SIZE)]
        results = {name: _train(rank, name, None) for name in OPTIMIZERS}
        results[OWN_GROUP] = _train(rank, OWN_GROUP, own_groups[rank])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    return run_ranks(_worker, (free_port(), str(out_dir)), WORLD_SIZE, SPAWN_TIMEOUT_S, out_dir)


def test_ranks_saw_different_data() -> None:
    # The premise of every test here: the per-rank losses differ.
    (x0, y0), (x1, y1) = _data(0), _data(1)
    assert not torch.equal(x0, x1)
    assert F.cross_entropy(_model()(x0), y0).item() != F.cross_entropy(_model()(x1), y1).item()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_ranks_stay_bit_identical(ranks: list[dict], name: str) -> None:
    r0, r1 = ranks[0][name], ranks[1][name]
    assert torch.equal(r0["init"], r1["init"])
    assert torch.equal(r0["params"], r1["params"]), "ranks drifted apart"
    assert r0["step_sizes"] == r1["step_sizes"]
    assert len(r0["step_sizes"]) == N_STEPS
    # Same data on no rank: the losses each rank computed differ, yet they agreed on every step.
    assert r0["losses"] != r1["losses"]
    for key in ("n_forwards", "n_backwards", "n_skipped"):
        assert r0["diagnostics"][key] == r1["diagnostics"][key]
    assert r0["diagnostics"]["n_skipped"] == 0
    assert r0["diagnostics"]["n_backwards"] == N_STEPS


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_progresses(ranks: list[dict], name: str) -> None:
    for r in ranks:
        res = r[name]
        assert torch.isfinite(res["params"]).all()
        assert not torch.equal(res["params"], res["init"])
        # Each rank's own loss went down clearly (one labelling rule fits both ranks' data).
        assert res["final_loss"] < 0.9 * res["init_loss"], (res["init_loss"], res["final_loss"])


@pytest.mark.parametrize("name", LINE_SEARCHES)
def test_searches_made_decisions(ranks: list[dict], name: str) -> None:
    # Equal step sizes are only evidence if the searches had something to decide: they
    # backtracked, so the accepted eta depended on the (averaged) trial losses.
    diag = ranks[0][name]["diagnostics"]
    assert diag["n_searches"] > 0
    assert diag["n_backtracks"] > 0
    assert diag["n_forwards"] > N_STEPS


def test_l4_step_size_follows_the_loss(ranks: list[dict]) -> None:
    # L4's eta is proportional to the (averaged) loss gap, so it changes from step to step.
    assert len(set(ranks[0]["l4"]["step_sizes"])) > 1


def test_single_rank_groups_decide_from_own_loss(ranks: list[dict]) -> None:
    """Negative control: with process_group a one-rank group per rank, each rank runs its search
    on its own loss; with different data the accepted step sizes differ and the ranks drift,
    although DDP still averages the gradients."""
    r0, r1 = ranks[0][OWN_GROUP], ranks[1][OWN_GROUP]
    assert torch.equal(r0["init"], r1["init"])
    assert any(a != b for a, b in zip(r0["step_sizes"], r1["step_sizes"]))
    assert not torch.equal(r0["params"], r1["params"])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_early_steps_match_single_process_on_all_data(ranks: list[dict], name: str) -> None:
    """An independent reference for what the ranks agreed on: with equal per-rank batch sizes,
    the DDP gradient and the rank-averaged loss are those of the concatenated batch (mean
    loss), so the first steps must be those of a single-process run on all the data.

    Only the first N_EARLY steps: the two computations round differently, and these training
    runs amplify rounding differences by about 10x per step, so later steps part by more than
    any sensible tolerance (and can flip a search decision)."""
    x = torch.cat([_data(r)[0] for r in range(WORLD_SIZE)])
    y = torch.cat([_data(r)[1] for r in range(WORLD_SIZE)])
    model = _model()
    opt = OPTIMIZERS[name](model.parameters(), None)

    def closure(backwards: bool = False) -> Tensor:
        loss = F.cross_entropy(model(x), y)
        if backwards:
            loss.backward()
        return loss

    step_sizes, losses = [], []
    for _ in range(N_EARLY):
        opt.zero_grad()
        losses.append(opt.step(closure).item())
        step_sizes.append(opt.diagnostics["step_size"])
    dist_mean_losses = [sum(r[name]["losses"][i] for r in ranks) / WORLD_SIZE for i in range(N_EARLY)]
    assert losses == pytest.approx(dist_mean_losses, rel=1e-5)
    assert step_sizes == pytest.approx(ranks[0][name]["step_sizes"][:N_EARLY], rel=1e-4)
    torch.testing.assert_close(_flat(model), ranks[0][name]["early_params"], rtol=0, atol=1e-4)
