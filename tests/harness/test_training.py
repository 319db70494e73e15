"""The trainer (``experiments/training/``), part by part:

* the loop: steps and metrics rows for every optimizer, non-finite steps skipped and counted
  (``trainer.max_bad_steps`` of them stop the run), checkpoints when due (also timed), a pass
  over the epoch that yields no step;
* what ``build_trainer`` decides: the baselines' schedule over the planned steps, a warning for a
  scheduler on a line search (which ``main.py`` refuses: ``test_bad_inputs.py``);
* the step adapters: Schedule-Free trains at y and is evaluated and checkpointed at x;
* the batches: a rank's shard of the epoch's order, a resume's place in it, data drawn afresh
  each epoch;
* the callbacks, with which these tests watch and disturb runs (``tests/harness_utils.py``).

Gradient accumulation (``Objective``, the micro-batches' weights, DDP's all-reduce on the last
one) is ``test_training_accumulation.py``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import list_checkpoints
from experiments.config import ScheduleConfig
from experiments.data.sampling import EpochSampler
from experiments.errors import TrainingDiverged
from experiments.training import Callback, Trainer
from experiments.training.batches import StepBatches
from experiments.training.task_kinds import LanguageModelling

from harness_utils import CONF, compose_run_config, crash_then_resume, logged_rows, run_config, trainer_for

OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
TINY = ["trainer.max_steps=12", "trainer.batch_size=64", "trainer.eval_interval=6"]
N_TRAIN = 1437  # the digits training split
BATCH = 32  # trainer.batch_size of the default


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in rows(run_dir) if "loss" in row]


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(run_dir)[-1], weights_only=True)["model"]


# -- the loop --------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_tiny_run_for_each_optimizer(optimizer, tmp_path):
    summary = run_config([f"optimizer={optimizer}", *TINY], tmp_path)
    assert summary["status"] == "finished"
    assert summary["steps"] == 12
    assert math.isfinite(summary["final_loss"])
    assert 0.0 <= summary["final_val_accuracy"] <= 1.0
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["status"] == "finished" and record["label"]
    assert (tmp_path / "config.yaml").read_text().count(f"name: {optimizer}") == 1
    train_rows = [r for r in rows(tmp_path) if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    assert all(r["forwards"] >= r["step"] for r in train_rows)
    assert [r["step"] for r in rows(tmp_path) if "val_loss" in r] == [6, 12]


@pytest.mark.reliability
def test_the_loop_stops_instead_of_spinning_when_no_batch_is_left(tmp_path):
    """Whatever the position says, a pass over the epoch that yields no step ends the run."""
    trainer = trainer_for(["optimizer=sgd", "trainer.max_steps=3"], tmp_path)
    trainer.state.batch_in_epoch = trainer.plan.steps_per_epoch + 3  # a place that does not exist
    with pytest.raises(RuntimeError, match="has no batch left"):
        trainer.fit()


class Poison(Callback):
    """Makes the model's output, hence the loss and the gradient, NaN in the steps ``bad_steps``
    (1-based) and in every step from ``from_step`` on; evaluations are left alone."""

    def __init__(self, bad_steps: set[int] = frozenset(), from_step: int | None = None) -> None:
        self.bad_steps, self.from_step, self.poisoned = bad_steps, from_step, False

    def on_fit_start(self, trainer: Trainer) -> None:
        trainer.model.register_forward_hook(self._poison)

    def _poison(self, module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor | None:
        return output * math.nan if self.poisoned else None

    def on_step_start(self, trainer: Trainer, step) -> None:
        number = trainer.state.step + 1
        self.poisoned = number in self.bad_steps or (self.from_step is not None and number >= self.from_step)

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.poisoned = False


@pytest.mark.parametrize("optimizer", ["salsa", "adam", "l4_adam"])
def test_nan_in_five_percent_of_the_losses_is_skipped_and_counted(optimizer, tmp_path):
    bad = set(random.Random(0).sample(range(1, 101), 5))
    summary = run_config([f"optimizer={optimizer}", "trainer.max_steps=100"], tmp_path,
                         callbacks=[Poison(bad_steps=bad)])
    assert summary["status"] == "finished"
    assert summary["bad_steps"] == 5
    assert all(torch.isfinite(t).all() for t in final_parameters(tmp_path).values())
    groups = torch.load(list_checkpoints(tmp_path)[-1], weights_only=True)["optimizer"]["param_groups"]
    if optimizer != "adam":
        assert [group["n_skipped"] for group in groups] == [5] * len(groups)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(1 for value in losses if value == "nan") == 5


def test_a_nan_storm_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    overrides = ["trainer.max_steps=40", "trainer.checkpoint_interval=5", "trainer.max_bad_steps=7"]
    with pytest.raises(TrainingDiverged, match="7 consecutive steps"):
        run_config(overrides, tmp_path, callbacks=[Poison(from_step=11)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 17 and summary["bad_steps"] == 7
    assert summary["diverged"] is True
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_000000010.pt"
    assert all(torch.isfinite(t).all() for t in final_parameters(tmp_path).values())


@pytest.mark.newcomer
def test_timed_checkpoints_are_written_and_leave_the_trajectory_as_it_is(tmp_path):
    """trainer.checkpoint_minutes: with a limit every step passes, a checkpoint after every step;
    a run killed at step 7 resumes from step 6 and ends as the uninterrupted run without timed
    checkpoints (also for Schedule-Free, whose evaluation weights a timed checkpoint leaves alone)."""
    for optimizer in ("salsa", "schedulefree_adamw"):
        base = [f"optimizer={optimizer}", "trainer.max_steps=10", "trainer.eval_interval=4"]
        untimed = tmp_path / f"{optimizer}-untimed"
        run_config([*base, "trainer.checkpoint_minutes=0"], untimed)
        timed = tmp_path / f"{optimizer}-timed"
        resumed = crash_then_resume([*base, "trainer.checkpoint_minutes=1e-9", "trainer.keep_checkpoints=20"],
                                    timed, crash_step=7)
        assert resumed["status"] == "finished"
        steps = sorted(int(p.stem.split("_")[1]) for p in (timed / "checkpoints").glob("step_*.pt"))
        assert steps == list(range(1, 11))
        assert logged_rows(timed) == logged_rows(untimed)


@pytest.mark.newcomer
def test_the_default_trainer_checkpoints_every_ten_minutes():
    assert compose_run_config([]).trainer.checkpoint_minutes == 10


# -- what build_trainer decides: the schedule ------------------------------------------------------
def test_baseline_schedule_is_cosine_with_warmup(tmp_path):
    # The NLP table's Adam: cosine with 10 % warm-up (optimizer=adam alone is flat).
    run_config(["optimizer=adam", "+experiment/optimizers/nlp=adam", "optimizer.build.lr=1e-3",
                "trainer.max_steps=20"], tmp_path)
    lrs = [r["step_size"] for r in rows(tmp_path) if "loss" in r]
    warmup = 2  # ceil(0.1 * 20)
    # LambdaLR is stepped after each optimizer step: the lr logged at step t is factor(t).
    expected = [
        1e-3 * 0.5 * (1 + math.cos(math.pi * t / 20)) * (t / warmup if t <= warmup else 1.0)
        for t in range(1, 21)
    ]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.newcomer
def test_a_scheduler_on_a_line_search_warns_once(tmp_path):
    """The runner refuses the combination (optimizer.schedule=null); the trainer built directly warns."""
    with pytest.warns(UserWarning) as caught:
        trainer_for(["optimizer=salsa_class", "trainer.max_steps=4"], tmp_path, schedule=ScheduleConfig())
    messages = [str(w.message) for w in caught if "scheduler" in str(w.message)]
    assert messages == ["LambdaLR has no effect on SaLSA: a line search sets its own step size at every step, "
                        "and a group's lr only mirrors it; drop the scheduler"]


# -- step adapters: Schedule-Free trains at y and is evaluated and checkpointed at x ---------------
class SchedulefreePoints(Callback):
    """At every evaluation in training: the parameters before it (y), during it (x), after it (y
    again: before the next step) and the optimizer's z, by step."""

    def __init__(self) -> None:
        self.points: dict[int, dict[str, list[torch.Tensor]]] = {}

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.points[trainer.state.step] = {"before": parameters(trainer)}

    def on_evaluation_start(self, trainer: Trainer) -> None:
        optimizer = trainer.step.optimizer
        assert not optimizer.param_groups[0]["train_mode"]
        z = [optimizer.state[p]["z"].clone() for p in trainer.model.parameters()]
        self.points[trainer.state.step].update(during=parameters(trainer), z=z)

    def on_step_start(self, trainer: Trainer, step) -> None:
        self.points.get(trainer.state.step, {})["after"] = parameters(trainer)

    def evaluated(self) -> dict[int, dict[str, list[torch.Tensor]]]:
        return {step: point for step, point in self.points.items() if "during" in point}


def parameters(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_schedulefree_evaluates_the_averaged_weights_and_trains_on(tmp_path):
    pytest.importorskip("schedulefree")
    watched = SchedulefreePoints()
    run_config(["optimizer=schedulefree_adamw", "trainer.max_steps=21", "trainer.eval_interval=10"], tmp_path,
               callbacks=[watched])
    # Steps 10 and 20 in training, each followed by a step; the final evaluation (21) leaves x in place.
    assert sorted(watched.evaluated()) == [10, 20, 21]
    beta1 = 0.9
    for step in (10, 20):
        point = watched.evaluated()[step]
        for y, x, z, after in zip(point["before"], point["during"], point["z"], point["after"]):
            # y = (1 - beta1) z + beta1 x: the evaluation point x is the average that y leans off
            assert torch.allclose(x, y + (1 - 1 / beta1) * (z - y), atol=1e-6)
            assert torch.allclose(after, y, atol=1e-6)  # back at the training point
        assert any(not torch.allclose(x, y) for x, y in zip(point["during"], point["before"]))


def test_schedulefree_evaluations_do_not_change_the_trajectory(tmp_path):
    pytest.importorskip("schedulefree")
    common = ["optimizer=schedulefree_adamw", "trainer.max_steps=30", "optimizer.build.lr=0.01"]
    often = run_config([*common, "trainer.eval_interval=3"], tmp_path / "often")
    once = run_config(common, tmp_path / "once")  # 30 steps < an epoch: evaluated only at the end
    assert train_losses(tmp_path / "often") == pytest.approx(train_losses(tmp_path / "once"), rel=1e-4)
    assert often["final_val_loss"] == pytest.approx(once["final_val_loss"], rel=1e-4)


def test_schedulefree_resume_continues_the_same_trajectory(tmp_path):
    pytest.importorskip("schedulefree")
    common = ["optimizer=schedulefree_adamw", "trainer.max_steps=30", "trainer.checkpoint_interval=10",
              "trainer.eval_interval=5", "model.build.dropout=0.2"]
    straight = run_config(common, tmp_path / "straight")
    resumed = crash_then_resume(common, tmp_path / "resumed", 25)
    assert logged_rows(tmp_path / "resumed") == logged_rows(tmp_path / "straight")
    assert resumed["final_val_loss"] == straight["final_val_loss"]
    a, b = (torch.load(list_checkpoints(tmp_path / run)[-1], weights_only=True) for run in ("straight", "resumed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # Checkpoints hold the evaluation weights, with the optimizer in eval mode (the package's rule).
    assert not a["optimizer"]["param_groups"][0]["train_mode"]


# -- batches: the epoch's order, a rank's shard, a resume's place ----------------------------------
def _indices(sampler: EpochSampler) -> list[int]:
    return [index for batch in sampler for index in batch]


@pytest.mark.parametrize("size, world_size", [(N_TRAIN, 2), (10, 3), (2, 3)])
def test_epoch_sampler_shards_are_disjoint_equal_and_cover_the_epoch(size, world_size):
    full = _indices(EpochSampler(size, seed=1, epoch=2, start=0, shuffle=True))
    shards = [_indices(EpochSampler(size, 1, 2, 0, True, rank=r, world_size=world_size))
              for r in range(world_size)]
    shard_size = math.ceil(size / world_size)
    assert [len(s) for s in shards] == [shard_size] * world_size  # every rank takes the same steps
    # Interleaved, the shards are the epoch's order padded by wrap-around.
    interleaved = [shards[i % world_size][i // world_size] for i in range(shard_size * world_size)]
    assert interleaved == [full[i % size] for i in range(shard_size * world_size)]
    assert sorted(set(interleaved)) == list(range(size))


def test_epoch_sampler_resumes_within_the_shard():
    shard = _indices(EpochSampler(N_TRAIN, 0, 1, 0, True, rank=1, world_size=2))
    start = 5 * BATCH
    resumed = EpochSampler(N_TRAIN, 0, 1, start, True, rank=1, world_size=2)
    assert _indices(resumed) == shard[start:] and len(resumed) == len(shard) - start


@pytest.mark.parametrize("size, batch_size, start", [(10, 3, 0), (10, 3, 6), (9, 3, 0), (10, 20, 0)])
def test_epoch_sampler_cuts_the_order_into_batches_keeping_the_short_last_one(size, batch_size, start):
    order = _indices(EpochSampler(size, 4, 0, 0, shuffle=True))
    batches = list(EpochSampler(size, 4, 0, start, shuffle=True, batch_size=batch_size))
    expected = [order[i : i + batch_size] for i in range(start, size, batch_size)]
    assert batches == expected and len(batches) == -(-(size - start) // batch_size)


def test_the_trainer_tells_random_windows_the_epoch():
    """Data drawn afresh every epoch (RandomWindows) learns the epoch before its batches are cut."""
    import numpy as np

    from experiments.data.lm_text import language_model_bundle

    bundle = language_model_bundle("t", np.arange(500, dtype=np.uint16), np.arange(100, dtype=np.uint16),
                                   block_size=4, vocab_size=600, sampling="random_windows", seed=2)
    steps = StepBatches(bundle, LanguageModelling().targets, torch.device("cpu"), seed=0, batch_size=8,
                        shuffle=False)
    (first,) = next(steps.rest_of_epoch(epoch=3, step_in_epoch=0)).batches
    assert bundle.train.epoch == 3
    start = bundle.train.start(0)
    assert first["input_ids"][0].tolist() == list(range(start, start + 4))
