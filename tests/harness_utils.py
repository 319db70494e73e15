"""Composing the harness config in tests (Hydra's compose API) and running it in a tmp dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.config import register_schema
from experiments.runner import run
from experiments.trainer import Trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["trainer.progress=false", "trainer.device=cpu"]


def compose_run_config(overrides: list[str]) -> DictConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=FAST + overrides)


def run_config(overrides: list[str], run_dir: Path) -> dict:
    return run(compose_run_config(overrides), run_dir)


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
