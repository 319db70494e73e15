"""A resume continues the recorded run or refuses: a change that alters the trajectory is named
and refused before anything is written; changes that only extend the run go through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.resume import RESUMABLE, trajectory_changes

from harness_utils import CONF, compose_run_config, main_in_process, working_copy

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
BASE = ["trainer.progress=false", "trainer.device=cpu", "trainer.max_steps=4",
        "trainer.checkpoint_interval=2"]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("recorded") / "run"
    assert main_in_process([*BASE, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture
def record(recorded, tmp_path, monkeypatch) -> Path:
    return working_copy(recorded, tmp_path, monkeypatch)


@pytest.mark.parametrize(("change", "named"), [
    (["seed=1"], "seed 0 -> 1"),
    (["model=mlp"], "model.name 'small_cnn' -> 'mlp'"),
    (["optimizer=adam"], "optimizer.build._target_ 'optim.presets.paper_optimizer' -> 'torch.optim.Adam'"),
    (["dataset.build.val_fraction=0.3"], "dataset.build.val_fraction 0.2 -> 0.3"),
    (["trainer.batch_size=16"], "trainer.batch_size 32 -> 16"),
    (["trainer.eval_interval=1"], "trainer.eval_interval 0 -> 1"),  # evaluations draw from the RNG
    (["trainer.accumulation_steps=2"], "trainer.accumulation_steps 1 -> 2"),
])
def test_a_resume_that_alters_the_trajectory_is_refused_naming_the_key(record, change, named, capsys):
    before = snapshot(record)
    code = main_in_process([*BASE, "trainer.resume=true", *change, f"hydra.run.dir={record}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "trainer.resume=true refused" in lines[0] and named in lines[0]
    assert "A resume may change only trainer.epochs, trainer.max_steps" in lines[0]
    assert snapshot(record) == before  # config.yaml, metrics, summary, checkpoints: as they were


def test_more_steps_and_other_reporting_settings_continue_the_run(record, capsys):
    argv = [*BASE, "trainer.resume=true", "trainer.max_steps=6", "trainer.log_interval=2",
            "trainer.keep_checkpoints=3", f"hydra.run.dir={record}"]
    assert main_in_process(argv) == 0
    capsys.readouterr()
    summary = json.loads((record / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6
    rows = [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 6]  # every step to 4, then every 2nd


def test_the_length_of_a_scheduled_run_is_part_of_its_trajectory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    scheduled = [*BASE, "optimizer=adam", "+experiment/optimizers/nlp=adam",  # cosine with warm-up
                 f"hydra.run.dir={tmp_path}"]
    assert main_in_process(scheduled) == 0
    capsys.readouterr()
    assert main_in_process([*scheduled, "trainer.resume=true", "trainer.max_steps=8"]) == 2
    assert "trainer.max_steps 4 -> 8 (the length of optimizer.schedule)" in capsys.readouterr().err


def test_a_key_the_record_predates_counts_as_its_default():
    """A record written before the schema gained a key was made with that key's default."""
    cfg = compose_run_config(["trainer.max_steps=4"])
    recorded = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    del recorded["trainer"]["accumulation_steps"]  # 1 by default
    assert trajectory_changes(recorded, cfg) == []
    accumulating = compose_run_config(["trainer.max_steps=4", "trainer.accumulation_steps=3"])
    changed = trajectory_changes(recorded, accumulating)
    assert [(c.key, c.recorded, c.requested) for c in changed] == [("trainer.accumulation_steps", 1, 3)]


def test_every_key_not_listed_is_protected():
    """Keys that the schema gains later are protected by default: only the listed ones (and
    the keys under them) may change."""
    cfg = compose_run_config(["trainer.max_steps=4"])
    recorded = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    recorded["trainer"]["a_key_from_the_future"] = 5
    recorded["logger"] = {"wandb": {"mode": "offline"}}  # logger is listed: any change under it passes
    recorded["trainer"]["progress"] = True
    assert [c.key for c in trajectory_changes(recorded, cfg)] == ["trainer.a_key_from_the_future"]
    assert "trainer.eval_interval" not in RESUMABLE and "trainer.num_workers" not in RESUMABLE
