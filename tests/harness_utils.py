"""Composing the harness config in tests (Hydra's compose API) and running it in a tmp dir."""

from __future__ import annotations

import os
import runpy
import sys
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import experiments.runner
from experiments.config import register_schema
from experiments.distributed import Process
from experiments.logging import Loggers
from experiments.runner import build, run
from experiments.training import Callback, Trainer, build_trainer

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


def run_config(overrides: list[str], run_dir: Path, callbacks: Sequence[Callback] = ()) -> dict:
    return run(compose_run_config(overrides), run_dir, callbacks=callbacks)


def trainer_for(overrides: list[str], run_dir: Path, wrap: Callable[[nn.Module], nn.Module] | None = None,
                **parts) -> Trainer:
    """The trainer of the run ``overrides`` describe, built from its parts as the runner builds
    them (on the CPU, logging nowhere). ``wrap(model)`` is what the loss calls (a stand-in for
    DDP's wrapper); ``parts`` replace or add keyword arguments of :func:`build_trainer` (the
    optimizer, a schedule)."""
    cfg = compose_run_config(overrides)
    data = build(cfg, "dataset")
    model = build(cfg, "model", spec=data.spec)
    parts.setdefault("optimizer", build(cfg, "optimizer", params=model.parameters()))
    if wrap is not None:
        parts["forward_model"] = wrap(model)
    return build_trainer(OmegaConf.to_object(cfg.trainer), data, model, loggers=Loggers(None, []), run_dir=run_dir,
                         process=Process(torch.device("cpu")), seed=cfg.seed, **parts)


def trainers_also_call(monkeypatch, *added: Callback) -> None:
    """Every trainer the runner builds in this test calls the callbacks ``added`` too: for runs
    through ``main.py``, which passes none."""
    build_as_usual = experiments.runner.build_trainer

    def building(*args, callbacks: Sequence[Callback] = (), **kwargs) -> Trainer:
        return build_as_usual(*args, callbacks=[*callbacks, *added], **kwargs)

    monkeypatch.setattr(experiments.runner, "build_trainer", building)


def logged_rows(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` without their wall times (which differ between runs)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def crash_then_resume(overrides: list[str], run_dir: Path, crash_step: int) -> dict:
    """Run ``overrides`` in ``run_dir`` until step ``crash_step`` dies, then resume it with
    ``trainer.resume=true``; returns the summary of the resumed run."""
    try:
        run_config(overrides, run_dir, callbacks=[CrashAt(crash_step)])
    except Crash:
        pass
    else:
        raise AssertionError(f"the run did not reach step {crash_step}")
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


class CrashAt(Callback):
    """Raises :class:`Crash` once step ``step`` is counted and logged, before the evaluation and
    the checkpoint it makes due: ``run_config(..., callbacks=[CrashAt(25)])``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.state.step == self.step:
            raise Crash("killed")


class TrainedParameters(Callback):
    """The trained model's parameters at the end of fit, and whether what the loss called could
    skip DDP's all-reduce (``no_sync``)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        self.params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.no_sync = hasattr(trainer.step.objective.forward_model, "no_sync")


class SignalAtEvaluation(Callback):
    """Sends ``signum`` to this process when the evaluation of step ``step`` begins."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_evaluation_start(self, trainer: Trainer) -> None:
        if trainer.state.step == self.step:
            os.kill(os.getpid(), self.signum)
