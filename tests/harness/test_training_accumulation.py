"""Gradient accumulation (``trainer.accumulation_steps``): a step over k micro-batches of b
examples is a step over one batch of k * b examples.

On a model without BatchNorm or dropout the two runs see the same losses, gradients and trial
losses up to float32 rounding, so every optimizer must follow the same trajectory: the same loss
and step size at every step (the line searches also the same number of forwards), the same
number of steps per epoch, the schedule counted in optimizer steps.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from experiments.data import DataBundle, DataSpec
from experiments.data.collate import InMemoryPairs, collate_inputs_labels
from experiments.training.batches import StepBatches
from experiments.training.task_kinds import Classification, LanguageModelling

from harness_utils import TrainedParameters, run_config, trainer_for

N_TRAIN = 1437  # the digits training split
BASE = ["model=mlp", "dataset=digits", "trainer.epochs=1", "trainer.shuffle=true", "seed=3"]


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "loss" in row]


@pytest.mark.parametrize(
    "optimizer", ["adam", "salsa", "sls", "sgd"], ids=["adam", "salsa", "sls", "sgd-cosine"]
)
def test_batch_60_equals_batch_20_times_3(optimizer, tmp_path):
    extra = ["+experiment/optimizers/nlp=sgd"] if optimizer == "sgd" else []  # a schedule too
    one = run_config(BASE + extra + [f"optimizer={optimizer}", "trainer.batch_size=60"], tmp_path / "one")
    three = run_config(
        BASE + extra + [f"optimizer={optimizer}", "trainer.batch_size=20", "trainer.accumulation_steps=3"],
        tmp_path / "three",
    )
    expected_steps = math.ceil(N_TRAIN / 60)  # 24: the last step has 57 examples in 3 micro-batches
    assert one["steps"] == three["steps"] == expected_steps
    a, b = rows(tmp_path / "one"), rows(tmp_path / "three")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, expected_steps + 1))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-4), x["step"]
        assert y["step_size"] == pytest.approx(x["step_size"], rel=2e-4), x["step"]
        assert y["forwards"] == x["forwards"], x["step"]
    assert three["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=1e-3)


def weights_of_the_only_step(train, collate, targets, batch_size: int) -> list[float]:
    """The weights of the two micro-batches of the one step that ``train`` makes."""
    data = DataBundle("t", DataSpec("classification"), train, train, collate)
    steps = StepBatches(data, targets, torch.device("cpu"), seed=0, batch_size=batch_size, accumulation_steps=2,
                        shuffle=False)
    (step,) = list(steps.rest_of_epoch(epoch=0, step_in_epoch=0))
    return step.weights


def test_micro_batches_are_weighted_by_their_targets():
    """An uneven split (4 + 1 examples) still gives the mean over the five examples."""
    pairs = InMemoryPairs(torch.zeros(5, 2), torch.arange(5))
    assert weights_of_the_only_step(pairs, collate_inputs_labels, Classification().targets, 4) == [0.8, 0.2]
    tokens = [{"labels": torch.tensor([1, 2, -100])}, {"labels": torch.tensor([3, 4, 5])}]  # -100 does not count
    stack = lambda items: {"labels": torch.stack([item["labels"] for item in items])}  # noqa: E731
    assert weights_of_the_only_step(tokens, stack, LanguageModelling().targets, 1) == [0.4, 0.6]


class RecordingDDP(nn.Module):
    """A stand-in for DistributedDataParallel that records which forwards ran under ``no_sync``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.synced: list[bool] = []
        self._in_no_sync = False

    @contextlib.contextmanager
    def no_sync(self):
        self._in_no_sync = True
        try:
            yield
        finally:
            self._in_no_sync = False

    def forward(self, batch):
        if torch.is_grad_enabled():
            self.synced.append(not self._in_no_sync)
        return self.module(batch)


def test_ddp_all_reduces_only_on_the_last_micro_batch(tmp_path):
    trainer = trainer_for(BASE + ["optimizer=salsa", "trainer.batch_size=40", "trainer.accumulation_steps=4",
                                  "trainer.max_steps=3"], tmp_path, wrap=RecordingDDP)
    wrapper = trainer.step.objective.forward_model
    trainer.fit()
    # Three steps of four micro-batches with gradients; the trials run under no_grad.
    assert wrapper.synced == [False, False, False, True] * 3


# -- two gloo ranks: DDP with accumulation ---------------------------------------------------------
def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    from ranks import loopback_env

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **loopback_env()})
    torch.set_num_threads(1)
    trained = TrainedParameters()
    summary = run_config(BASE + ["optimizer=salsa", "model.build.dropout=0.2", "trainer.batch_size=16",
                                 "trainer.accumulation_steps=3", "trainer.max_steps=6"], Path(out_dir) / "run",
                         callbacks=[trained])
    torch.save({"summary": summary, "params": trained.params, "no_sync": trained.no_sync},
               Path(out_dir) / f"rank{rank}.pt")


def test_ddp_ranks_with_accumulation_stay_identical(tmp_path):
    torch_dist = pytest.importorskip("torch.distributed")
    if not (torch_dist.is_available() and torch_dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    from ranks import free_port, run_ranks

    r0, r1 = run_ranks(_ddp_worker, (free_port(), str(tmp_path)), 2, 180.0, tmp_path)
    assert r0["no_sync"] and r0["summary"]["status"] == "finished" and r0["summary"]["steps"] == 6
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"]), "ranks drifted apart"
    assert r0["summary"]["forwards"] == r1["summary"]["forwards"]  # the same trials on both ranks


def test_resume_with_accumulation_continues_the_same_trajectory(tmp_path):
    """Checkpoints count optimizer steps; a resume mid-epoch starts at the right micro-batch."""
    from harness_utils import crash_then_resume, logged_rows

    from experiments.checkpoint import list_checkpoints

    common = BASE + ["optimizer=salsa", "model.build.dropout=0.2", "trainer.batch_size=16",
                     "trainer.accumulation_steps=3", "trainer.max_steps=14", "trainer.checkpoint_interval=5"]
    straight = run_config(common, tmp_path / "straight")
    resumed = crash_then_resume(common, tmp_path / "resumed", 8)
    assert logged_rows(tmp_path / "resumed") == logged_rows(tmp_path / "straight")
    assert resumed["final_loss"] == straight["final_loss"] and resumed["steps"] == 14
    a = torch.load(list_checkpoints(tmp_path / "straight")[-1], weights_only=True)["model"]
    b = torch.load(list_checkpoints(tmp_path / "resumed")[-1], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
