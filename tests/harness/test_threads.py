"""trainer.threads: validated, applied before anything is built, and set by the sweeps that run
jobs side by side (shown in their --dry-run commands)."""

from __future__ import annotations

import shlex

import pytest
import torch

import run_multiple
from experiments import runner, sweep_plan, sweep_supervisor
from experiments.errors import ConfigError
from experiments.preflight import check_values
from harness_utils import compose_run_config, run_config

pytestmark = pytest.mark.newcomer


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_small_cpu_trainer_uses_one_thread_and_the_paper_trainers_torchs_default():
    assert compose_run_config([]).trainer.threads == 1
    for trainer in ("paper_nlp", "paper_image", "paper_gpt2"):
        assert compose_run_config([f"trainer={trainer}"]).trainer.threads is None


@pytest.mark.parametrize("threads", [0, -2])
def test_threads_must_be_positive(threads):
    cfg = compose_run_config([f"trainer.threads={threads}"])
    with pytest.raises(ConfigError, match=rf"trainer.threads must be positive, got {threads}"):
        check_values(cfg)


def test_threads_are_set_before_the_data_is_built(tmp_path, monkeypatch, restore_threads):
    wanted = 1 if torch.get_num_threads() != 1 else 2
    seen: dict[str, int] = {}
    build = runner.build

    def recording_build(cfg, group, **objects):
        seen.setdefault(group, torch.get_num_threads())
        return build(cfg, group, **objects)

    monkeypatch.setattr(runner, "build", recording_build)
    summary = run_config([f"trainer.threads={wanted}", "trainer.max_steps=2"], tmp_path / "run")
    assert summary["status"] == "finished"
    assert seen == {"dataset": wanted, "model": wanted, "optimizer": wanted}


def plan_commands(capsys, *argv: str) -> list[list[str]]:
    assert run_multiple.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    return [shlex.split(line.removeprefix("  $ ")) for line in out.splitlines() if line.startswith("  $ ")]


def threads_overrides(command: list[str]) -> list[str]:
    return [arg for arg in command if arg.startswith("trainer.threads=")]


@pytest.mark.parametrize("argv, expected", [
    # 8 cores (patched below) shared by 2 jobs side by side: 4 threads each.
    (["nlp", "--launcher", "joblib", "--n-jobs", "2"], ["trainer.threads=4"]),
    (["nlp", "--launcher", "joblib", "--n-jobs", "3"], ["trainer.threads=2"]),
    (["nlp", "--launcher", "joblib", "--n-jobs", "16"], ["trainer.threads=1"]),
    # One job at a time: torch's default.
    (["nlp", "--launcher", "joblib", "--n-jobs", "1"], []),
    (["nlp"], []),
    (["image", "--launcher", "submitit_slurm"], []),
    # The mini grid's tiny models run fastest with one thread, side by side or not.
    (["mini"], ["trainer.threads=1"]),
    (["mini", "--launcher", "joblib", "--n-jobs", "2"], ["trainer.threads=1"]),
    # The user's own value replaces the sweep's.
    (["nlp", "--launcher", "joblib", "--n-jobs", "2", "trainer.threads=3"], ["trainer.threads=3"]),
    (["mini", "trainer.threads=2"], ["trainer.threads=2"]),
])
def test_dry_run_commands_carry_the_threads_of_each_run(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.setattr(sweep_plan.os, "cpu_count", lambda: 8)
    commands = plan_commands(capsys, *argv, "--seeds", "1", "--root", str(tmp_path))
    assert commands
    for command in commands:
        assert threads_overrides(command) == expected


def test_the_runs_environment_bounds_the_other_thread_pools(monkeypatch, tmp_path):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    env = sweep_supervisor.child_env(3, tmp_path)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    untouched = sweep_supervisor.child_env(None, tmp_path)
    assert "OMP_NUM_THREADS" not in untouched and "MKL_NUM_THREADS" not in untouched
