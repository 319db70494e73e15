"""Faults: NaN storms, SIGTERM, kill -9 at random moments, corrupt checkpoints."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from experiments.errors import TrainingDiverged
from experiments.training import Callback, Trainer

from harness_utils import CONF, run_config

ROOT = CONF.parent


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


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(run_dir)[-1], weights_only=True)["model"]


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


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    for step in (5, 10):
        save_checkpoint(tmp_path, step, {"step": torch.tensor(step)}, keep=3)
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:20])  # truncated mid-write by a crash
    with pytest.warns(UserWarning, match="does not load"):
        assert load_latest_checkpoint(tmp_path)["step"].item() == 5


# -- whole processes: SIGTERM and SIGKILL ------------------------------------------------------

RUN = ["trainer.max_steps=60", "trainer.checkpoint_interval=7", "trainer.eval_interval=20",
       "trainer.progress=false", "trainer.device=cpu", "model.build.dropout=0.1"]


def launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "main.py", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def train_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return rows


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    process = launch(run_dir)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return run_dir


def kill_and_resume(run_dir: Path, kill_after_rows: int) -> None:
    process = launch(run_dir)
    deadline = time.monotonic() + 300
    while process.poll() is None and len(train_rows(run_dir)) < kill_after_rows and time.monotonic() < deadline:
        time.sleep(0.002)
    # Rows reach the file in bursts (at checkpoints and once a second): wait a further 0-7 steps
    # so that the kill lands anywhere in the checkpoint interval.
    time.sleep(random.Random(kill_after_rows).uniform(0.0, 0.02))
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    resumed = launch(run_dir, "trainer.resume=true")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()


def assert_same_run(run_dir: Path, reference: Path) -> None:
    assert comparable(train_rows(run_dir)) == comparable(train_rows(reference))
    a, b = final_parameters(run_dir), final_parameters(reference)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("kill_after_rows", random.Random(1).sample(range(0, 66), 3))
def test_kill_9_then_resume_is_bit_identical(kill_after_rows, tmp_path, uninterrupted):
    kill_and_resume(tmp_path, kill_after_rows)
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_rows", random.Random(2).sample(range(0, 66), 10))
def test_kill_9_then_resume_is_bit_identical_ten_points(kill_after_rows, tmp_path, uninterrupted):
    kill_and_resume(tmp_path, kill_after_rows)
    assert_same_run(tmp_path, uninterrupted)


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(tmp_path, uninterrupted):
    process = launch(tmp_path)
    while process.poll() is None and len(train_rows(tmp_path)) < 10:
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert "interrupted: stopped by SIGTERM" in process.stderr.read()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert list_checkpoints(tmp_path)[-1].name == f"step_{summary['steps']:09d}.pt"
    resumed = launch(tmp_path, "trainer.resume=true")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert_same_run(tmp_path, uninterrupted)
