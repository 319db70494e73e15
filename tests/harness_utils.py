"""Composing the harness config in tests (Hydra's compose API) and running it in a tmp dir."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.config import register_schema
from experiments.runner import run

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["trainer.progress=false", "trainer.device=cpu"]


def compose_run_config(overrides: list[str]) -> DictConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=FAST + overrides)


def run_config(overrides: list[str], run_dir: Path) -> dict:
    return run(compose_run_config(overrides), run_dir)
