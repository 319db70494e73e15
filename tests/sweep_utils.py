"""``run_multiple.py --dry-run`` in tests: its printed plan, the commands in it, and the config
each command composes (Hydra's compose API on the checkout's ``conf/``)."""

from __future__ import annotations

import shlex

import run_multiple
from experiments.paths import CONF


def dry_run(capsys, *argv: str) -> str:
    assert run_multiple.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line.removeprefix("  $ ")) for line in out.splitlines() if line.startswith("  $ ")]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from experiments.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def job_overrides(cmd: list[str]) -> list[str]:
    """The run's overrides: the command after ``python main.py -m``, less Hydra's own settings."""
    return [a for a in cmd[3:] if not a.startswith("hydra")]
