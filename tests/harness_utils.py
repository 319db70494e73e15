"""Composing the harness config in tests (Hydra's compose API) and running it in a tmp dir."""

from __future__ import annotations

import runpy
import sys
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.config import register_schema
from experiments.runner import run
from experiments.trainer import Trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["trainer.progress=false", "trainer.device=cpu"]


def main_in_process(argv: list[str]) -> int:
    """Run ``main.py`` with the command-line arguments ``argv`` in this process (no interpreter
    start-up, no torch import: a fraction of a second); returns its exit status."""
    saved = sys.argv
    sys.argv = ["main.py", *argv]
    try:
        runpy.run_path(str(CONF.parent / "main.py"), run_name="__main__")
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv = saved


def compose_run_config(overrides: list[str]) -> DictConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=FAST + overrides)


def run_config(overrides: list[str], run_dir: Path) -> dict:
    return run(compose_run_config(overrides), run_dir)


def logged_rows(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` without their wall times (which differ between runs)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def crash_then_resume(overrides: list[str], run_dir: Path, crash_step: int, monkeypatch) -> dict:
    """Run ``overrides`` in ``run_dir`` until step ``crash_step`` dies, then resume it with
    ``trainer.resume=true``; returns the summary of the resumed run."""
    original = Trainer._after_step
    monkeypatch.setattr(Trainer, "_after_step", crashing_at_step(crash_step))
    try:
        run_config(overrides, run_dir)
    except Crash:
        pass
    else:
        raise AssertionError(f"the run did not reach step {crash_step}")
    finally:
        monkeypatch.setattr(Trainer, "_after_step", original)
    return run_config([*overrides, "trainer.resume=true"], run_dir)


def working_copy(recorded: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of a run record (made once per module) to alter, with the repository as the working
    directory, as main.py runs from there."""
    monkeypatch.chdir(CONF.parent)
    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    return copy


class Crash(RuntimeError):
    """A stand-in for a process dying mid-run."""


def crashing_at_step(step: int) -> Callable[..., None]:
    """``Trainer._after_step`` that raises :class:`Crash` once step ``step`` is logged; patch it
    in with ``monkeypatch.setattr(Trainer, "_after_step", crashing_at_step(25))``."""
    original = Trainer._after_step

    def after_step(self: Trainer, loss: float, seconds: float) -> None:
        original(self, loss, seconds)
        if self.state.step == step:
            raise Crash("killed")

    return after_step
