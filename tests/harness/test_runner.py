"""End-to-end runs on the offline digits: every optimizer, the run record, resume, wandb."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import list_checkpoints
from experiments.errors import ConfigError

from harness_utils import CONF, Crash, CrashAt, run_config

ROOT = CONF.parent
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
TINY = ["trainer.max_steps=12", "trainer.batch_size=64", "trainer.eval_interval=6"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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


def test_default_run_learns_digits(tmp_path):
    summary = run_config(["trainer.epochs=3"], tmp_path)
    assert summary["final_val_accuracy"] > 0.8  # chance is 0.1
    assert summary["epochs"] == 3
    steps_per_epoch = math.ceil(1437 / 32)
    assert summary["steps"] == 3 * steps_per_epoch
    assert [r["epoch"] for r in rows(tmp_path) if "val_loss" in r] == [1, 2, 3]


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


def test_line_search_with_a_schedule_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="optimizer.schedule=null"):
        run_config(["optimizer=adam", "+experiment/optimizers/nlp=adam", "optimizer.build._target_=optim.SaLSA",
                    "~optimizer.build.lr", "~optimizer.build.betas", "~optimizer.build.amsgrad"], tmp_path)




def test_resume_after_a_crash_continues_the_same_trajectory(tmp_path):
    common = ["trainer.max_steps=30", "trainer.checkpoint_interval=10", "trainer.eval_interval=10",
              "model.build.dropout=0.2"]
    straight = run_config(common, tmp_path / "straight")

    with pytest.raises(Crash):
        run_config(common, tmp_path / "resumed", callbacks=[CrashAt(25)])
    failed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert failed["status"] == "failed" and "killed" in failed["error"]
    assert len([r for r in rows(tmp_path / "resumed") if "loss" in r]) == 25  # kept what was logged

    resumed = run_config([*common, "trainer.resume=true"], tmp_path / "resumed")
    assert resumed["status"] == "finished"
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "resumed")) == strip(rows(tmp_path / "straight"))
    assert resumed["final_loss"] == straight["final_loss"]
    a = torch.load(list_checkpoints(tmp_path / "straight")[-1], weights_only=True)["model"]
    b = torch.load(list_checkpoints(tmp_path / "resumed")[-1], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fresh_run_refuses_to_overwrite_a_record(tmp_path):
    run_config(["trainer.max_steps=2"], tmp_path)
    with pytest.raises(ConfigError, match="trainer.resume=true"):
        run_config(["trainer.max_steps=2"], tmp_path)


def test_wandb_offline_writes_its_files_and_disabled_writes_none(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    offline = tmp_path / "offline"
    run_config(["logger=wandb", "logger.wandb.mode=offline", "trainer.max_steps=3"], offline)
    runs = list((offline / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    disabled = tmp_path / "disabled"
    run_config(["logger=wandb", "logger.wandb.mode=disabled", "trainer.max_steps=3"], disabled)
    assert not (disabled / "wandb").exists()
    assert (disabled / "metrics.jsonl").exists()  # the local record is always written
    for run_dir in (offline, disabled):
        text = "".join(p.read_text(errors="ignore") for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size < 10**6)
        assert "WANDB_API_KEY" not in text


def test_main_default_run_prints_its_record_and_a_summary_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "main.py", "trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == f"record: {tmp_path}"
    assert lines[-1].startswith("finished: digits/small_cnn/salsa seed 0 - 45 steps")
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_main_embedded_default_within_two_minutes(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_val_accuracy"] > 0.9
