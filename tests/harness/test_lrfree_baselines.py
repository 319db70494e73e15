"""The learning-rate-free baselines (Prodigy, D-Adapt Adam, Schedule-Free AdamW) as configs.

Each runs through its own pip package (the ``lrfree`` extra) at that package's defaults; the
Schedule-Free one also needs the trainer to evaluate and checkpoint its averaged weights.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object, instantiate

from experiments.checkpoint import list_checkpoints
from experiments.errors import ConfigError
from experiments.preflight import check_build_blocks
from experiments.training import Callback, Trainer

from harness_utils import compose_run_config, crash_then_resume, logged_rows, run_config

PACKAGES = {"prodigy": "prodigyopt", "dadapt_adam": "dadaptation", "schedulefree_adamw": "schedulefree"}
LABELS = {"prodigy": "Prodigy", "dadapt_adam": "D-Adapt Adam", "schedulefree_adamw": "Schedule-Free AdamW"}
SHORT = ["trainer.max_steps=40", "trainer.batch_size=64", "trainer.eval_interval=20"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in rows(run_dir) if "loss" in row]


@pytest.mark.parametrize("optimizer", sorted(PACKAGES))
def test_config_holds_the_packages_own_defaults(optimizer):
    pytest.importorskip(PACKAGES[optimizer])
    cfg = compose_run_config([f"optimizer={optimizer}"])
    check_build_blocks(cfg)
    assert cfg.optimizer.name == optimizer and cfg.optimizer.label == LABELS[optimizer]
    assert cfg.optimizer.schedule is None
    build = instantiate(cfg.optimizer.build, _partial_=True, _convert_="all")
    defaults = inspect.signature(get_object(cfg.optimizer.build._target_)).parameters
    for key, value in build.keywords.items():
        expected = defaults[key].default
        assert (tuple(value) if isinstance(value, list) else value) == expected, key
    optimizer_object = build(params=torch.nn.Linear(3, 2).parameters())
    assert isinstance(optimizer_object, torch.optim.Optimizer)


@pytest.mark.parametrize("optimizer", sorted(PACKAGES))
def test_short_run_lowers_the_loss(optimizer, tmp_path):
    pytest.importorskip(PACKAGES[optimizer])
    summary = run_config([f"optimizer={optimizer}", *SHORT], tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 40
    losses = train_losses(tmp_path)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.98 * first, (first, last)
    val_losses = [row["val_loss"] for row in rows(tmp_path) if "val_loss" in row]
    assert val_losses[-1] < val_losses[0]


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


def test_a_wrong_type_fails_before_building_naming_the_key():
    pytest.importorskip("schedulefree")
    cfg = compose_run_config(["optimizer=schedulefree_adamw", "optimizer.build.warmup_steps=1.5"])
    with pytest.raises(ConfigError, match=r"optimizer\.build\.warmup_steps must be int"):
        check_build_blocks(cfg)
