"""The runner on the offline digits: a default run learns, a crashed run resumes on its trajectory,
wandb's modes. (Every optimizer through the loop: ``test_training.py``; ``main.py`` as a user runs
it: ``tests/e2e/test_main.py``.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import list_checkpoints

from harness_utils import Crash, CrashAt, run_config



def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_default_run_learns_digits(tmp_path):
    summary = run_config(["trainer.epochs=3"], tmp_path)
    assert summary["final_val_accuracy"] > 0.8  # chance is 0.1
    assert summary["epochs"] == 3
    steps_per_epoch = math.ceil(1437 / 32)
    assert summary["steps"] == 3 * steps_per_epoch
    assert [r["epoch"] for r in rows(tmp_path) if "val_loss" in r] == [1, 2, 3]


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
