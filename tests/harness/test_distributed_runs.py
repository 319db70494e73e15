"""Data-parallel runs of the harness: two CPU ranks over gloo.

One real ``torchrun`` launch of ``main.py`` checks what a user sees (one run record, half the
steps per epoch, a checkpoint a single process resumes from). A second launch spawns the ranks
with torch.multiprocessing and calls the runner in each, so that the test can look inside every
rank: the final parameters must be bit-identical across ranks, the ranks must have trained on
different data, and the logged loss must be the rank average.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from experiments import distributed
from experiments.checkpoint import list_checkpoints
from experiments.training import Callback, Trainer

from harness_utils import CONF, FAST, TrainedParameters, run_config
from ranks import free_port, loopback_env, run_ranks

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

ROOT = CONF.parent
WORLD_SIZE = 2
N_TRAIN = 1437  # the digits training split
BATCH = 32  # trainer.batch_size of the default
STEPS_PER_EPOCH = math.ceil(math.ceil(N_TRAIN / WORLD_SIZE) / BATCH)  # 23, not 45
N_STEPS = 20
TIMEOUT_S = 180.0  # a hang (ranks issuing different collectives) fails, never blocks
# The spawned runs: name -> overrides. SaLSA decides from losses (averaged by the optimizer);
# Adam's loss is averaged by the trainer for the record.
SCENARIOS = {
    "salsa": ["optimizer=salsa", "model.build.dropout=0.2"],
    "adam": ["optimizer=adam"],
}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- no processes -------------------------------------------------------------------------------
def test_single_process_setup_creates_no_group():
    process = distributed.setup(torch.device("cpu"), environ={})
    assert (process.rank, process.world_size, process.is_main) == (0, 1, True)
    assert not dist.is_initialized()
    distributed.barrier()  # no-ops
    distributed.teardown()


# -- torchrun main.py -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("torchrun") / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD_SIZE}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "main.py", "trainer.epochs=1", *FAST, f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **loopback_env()}
    # Its own session, so that a hang is ended with all the ranks torchrun started.
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s (hang?)")
    assert process.returncode == 0, stderr
    return run_dir, stdout


def test_torchrun_writes_one_record_with_half_the_steps_per_epoch(torchrun_run):
    run_dir, stdout = torchrun_run
    assert [line for line in stdout.splitlines() if line.startswith("record:")] == [f"record: {run_dir}"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == WORLD_SIZE
    # Each rank takes every other example: one epoch is ceil(1437 / 2 / 32) = 23 steps, not 45.
    assert summary["steps"] == STEPS_PER_EPOCH and summary["epochs"] == 1
    rows = _rows(run_dir)
    # One row per step, not one per rank.
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS_PER_EPOCH + 1))
    assert [(r["step"], r["epoch"]) for r in rows if "val_loss" in r] == [(STEPS_PER_EPOCH, 1)]
    assert all(math.isfinite(r["loss"]) and r["step_size"] > 0 for r in rows if "loss" in r)
    (checkpoint,) = list_checkpoints(run_dir)
    assert checkpoint.name == f"step_{STEPS_PER_EPOCH:09d}.pt"


def test_a_single_process_resumes_a_torchrun_checkpoint(torchrun_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(torchrun_run[0], run_dir)
    model = torch.load(list_checkpoints(run_dir)[-1], weights_only=True)["model"]
    assert not any(key.startswith("module.") for key in model)  # the unwrapped module's state
    summary = run_config([f"trainer.max_steps={STEPS_PER_EPOCH + 3}", "trainer.resume=true"], run_dir)
    assert summary["status"] == "finished" and summary["world_size"] == 1
    assert [r["step"] for r in _rows(run_dir) if "loss" in r] == list(range(1, STEPS_PER_EPOCH + 4))


# -- spawned ranks, looked into -------------------------------------------------------------
class LocalLosses(Callback):
    """This rank's own loss of each step before the ranks average it: the cross-entropy of the
    first forward with gradients (the step's first evaluation), and the first epoch's indices of
    this rank."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.first_epoch = trainer.batches.sampler(epoch=0).indices()
        trainer.model.register_forward_hook(self._record)

    def on_step_start(self, trainer: Trainer, step) -> None:
        (batch,) = step.batches
        self.labels, self.recorded = batch["labels"], False

    def _record(self, module: torch.nn.Module, args: object, logits: torch.Tensor) -> None:
        if torch.is_grad_enabled() and module.training and not self.recorded:
            self.losses.append(torch.nn.functional.cross_entropy(logits.float(), self.labels).item())
            self.recorded = True


def _rank_worker(rank: int, ports: dict[str, int], out_dir: str) -> None:
    """One rank: the environment torchrun would set, then the runner as main.py calls it, with
    callbacks that record the first epoch's indices, this rank's own loss before averaging, and
    the parameters after training."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE),
                       "MASTER_ADDR": "127.0.0.1", **loopback_env()})
    torch.set_num_threads(1)
    results = {}
    for name, overrides in SCENARIOS.items():
        os.environ["MASTER_PORT"] = str(ports[name])
        local, trained = LocalLosses(), TrainedParameters()
        summary = run_config([f"trainer.max_steps={N_STEPS}", *overrides], Path(out_dir) / name,
                             callbacks=[local, trained])
        results[name] = {"summary": summary, "first_epoch": local.first_epoch, "local_losses": local.losses,
                         "params": trained.params}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out_dir = tmp_path_factory.mktemp("ranks")
    ports = {name: free_port() for name in SCENARIOS}
    return out_dir, run_ranks(_rank_worker, (ports, str(out_dir)), WORLD_SIZE, TIMEOUT_S, out_dir)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ranks_train_different_data_to_bit_identical_parameters(ranks, name):
    out_dir, (r0, r1) = ranks[0], (ranks[1][0][name], ranks[1][1][name])
    # 1437 examples: 719 each, the last one of rank 1 is the wrap-around pad (rank 0's first).
    assert len(r0["first_epoch"]) == len(r1["first_epoch"]) == math.ceil(N_TRAIN / WORLD_SIZE)
    assert set(r0["first_epoch"]) & set(r1["first_epoch"]) == {r0["first_epoch"][0]}
    assert set(r0["first_epoch"]) | set(r1["first_epoch"]) == set(range(N_TRAIN))
    assert r0["local_losses"] != r1["local_losses"]
    assert r0["params"].keys() == r1["params"].keys()
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"]), "ranks drifted apart"
    # Rank 0's checkpoint holds exactly these parameters; the other rank wrote no record.
    saved = torch.load(list_checkpoints(out_dir / name)[-1], weights_only=True)["model"]
    assert all(torch.equal(saved[k], r0["params"][k]) for k in saved)
    assert r0["summary"]["final_loss"] == r1["summary"]["final_loss"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_record_logs_the_rank_averaged_loss(ranks, name):
    out_dir, (r0, r1) = ranks[0], (ranks[1][0][name], ranks[1][1][name])
    rows = [r for r in _rows(out_dir / name) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, N_STEPS + 1))
    mean = [(a + b) / 2 for a, b in zip(r0["local_losses"], r1["local_losses"])]
    assert [r["loss"] for r in rows] == pytest.approx(mean, rel=1e-6)
    assert json.loads((out_dir / name / "summary.json").read_text())["status"] == "finished"


def test_line_search_step_sizes_are_sane(ranks):
    out_dir = ranks[0]
    step_sizes = [r["step_size"] for r in _rows(out_dir / "salsa") if "loss" in r]
    assert all(math.isfinite(s) and 0 < s < 10 for s in step_sizes)
    assert len(set(step_sizes)) > 1  # the search chose, step by step (both ranks alike, above)
    summaries = [rank["salsa"]["summary"] for rank in ranks[1]]
    assert summaries[0]["final_step_size"] == summaries[1]["final_step_size"]
    assert summaries[0]["forwards"] == summaries[1]["forwards"] > N_STEPS  # the same trials
