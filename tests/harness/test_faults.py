"""Faults: kill -9 at random moments and SIGTERM to a real ``main.py``, each resumed
bit-identically, and a truncated newest checkpoint. (NaN losses: ``test_training.py``.)"""

from __future__ import annotations

import json
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

from harness_utils import CONF

ROOT = CONF.parent


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(run_dir)[-1], weights_only=True)["model"]


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
