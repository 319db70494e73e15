"""The learning-rate-free baselines (Prodigy, D-Adapt Adam, Schedule-Free AdamW) as configs.

Each runs through its own pip package (the ``lrfree`` extra) at that package's defaults. (The
Schedule-Free one also needs the trainer to evaluate and checkpoint its averaged weights:
``test_training.py``.)
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object, instantiate

from experiments.errors import ConfigError
from experiments.preflight import check_build_blocks

from harness_utils import compose_run_config, run_config

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


def test_a_wrong_type_fails_before_building_naming_the_key():
    pytest.importorskip("schedulefree")
    cfg = compose_run_config(["optimizer=schedulefree_adamw", "optimizer.build.warmup_steps=1.5"])
    with pytest.raises(ConfigError, match=r"optimizer\.build\.warmup_steps must be int"):
        check_build_blocks(cfg)
