"""Where a run's metrics go: its run record (always) and Weights & Biases (when configured),
behind one interface.

The record itself (its files, how they are written) is :mod:`experiments.record`; here are the
fan-out to the sinks and wandb's checks and sink.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .network import PROBE_SECONDS, connects, host_and_port
from .record import RunRecord


class MetricsSink(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


# wandb's own spellings of the modes in WANDB_MODE, and what they mean here.
_WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
                "disabled": "disabled"}


def wandb_mode(settings: DictConfig) -> str:
    """The mode wandb runs in: ``WANDB_MODE`` from the environment when set (the usual way to
    take a cluster job offline), else ``logger.wandb.mode``. The check and the sink both use this,
    so that what was checked is what runs."""
    from_env = os.environ.get("WANDB_MODE")
    if from_env:
        if from_env not in _WANDB_MODES:
            raise ConfigError(
                f"WANDB_MODE={from_env!r} in the environment: must be one of {sorted(_WANDB_MODES)}, "
                "or unset it to use logger.wandb.mode"
            )
        return _WANDB_MODES[from_env]
    return settings.mode.value if hasattr(settings.mode, "value") else str(settings.mode)


_OFFLINE_INSTEAD = "or use logger.wandb.mode=offline (sync later with `wandb sync`) or disabled"


def check_wandb(settings: DictConfig) -> None:
    """Fail before any work when wandb cannot log as configured: not installed, or online with
    no credentials (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc), with a key that is
    not a wandb key, without a connection to the wandb server (``WANDB_BASE_URL``) within a
    second, or with a key that the server refuses (asked once, as ``wandb login`` asks it)."""
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        raise ConfigError("logger=wandb needs the wandb package: pip install -e '.[wandb]'") from error
    if wandb_mode(settings) != "online":
        return
    source = "WANDB_MODE=online" if os.environ.get("WANDB_MODE") else "logger.wandb.mode=online"
    key, where = _wandb_key()
    if key is None:
        raise ConfigError(f"{source} needs credentials: run `wandb login` or set WANDB_API_KEY; {_OFFLINE_INSTEAD}")
    from wandb.sdk.lib.wbauth.validation import check_api_key  # wandb's own check of a key's form

    problem = check_api_key(key)
    if problem is not None:
        raise ConfigError(f"{source}: the wandb API key in {where} is not one: {problem} Run `wandb login` "
                          f"again or set WANDB_API_KEY; {_OFFLINE_INSTEAD}")
    host, port = host_and_port(_wandb_url())
    if not connects(host, port):
        raise ConfigError(f"{source}: no connection to the wandb server {host}:{port} within "
                          f"{PROBE_SECONDS:g} s (no network?); {_OFFLINE_INSTEAD}")
    refusal = _server_refusal(key)
    if refusal is not None:
        raise ConfigError(f"{source}: the wandb server {_wandb_url()} refused the API key in {where} "
                          f"({refusal}). Run `wandb login --relogin` or set WANDB_API_KEY; {_OFFLINE_INSTEAD}")


_KEY_CHECK_SECONDS = 20


def _server_refusal(key: str) -> str | None:
    """The server's reason when it refuses ``key``, else None. ``wandb.Api`` asks the server who
    the key belongs to, without storing the key anywhere; a server that answers with anything but
    a refusal (an error of its own, slowness) is left to ``wandb.init``, which retries."""
    import wandb

    try:
        wandb.Api(api_key=key, timeout=_KEY_CHECK_SECONDS)
    except wandb.errors.AuthenticationError as error:
        return " ".join(str(error).split()) or "authentication failed"
    except (OSError, wandb.errors.Error):
        pass
    return None


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _wandb_key() -> tuple[str | None, str]:
    """The API key wandb would use, and where it comes from."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"], "WANDB_API_KEY"
    try:
        entry = netrc.netrc().authenticators(host_and_port(_wandb_url())[0])
    except (FileNotFoundError, netrc.NetrcParseError):
        entry = None
    return (entry[2], "~/.netrc") if entry else (None, "")


class WandbSink:
    """Mirrors the metric rows to a wandb run. The API key is read by wandb from its own login
    or ``WANDB_API_KEY``; this project never writes it anywhere."""

    def __init__(self, settings: DictConfig, cfg: DictConfig, run_dir: Path, name: str) -> None:
        import wandb

        try:
            self.run = wandb.init(
                mode=wandb_mode(settings),
                project=settings.project,
                entity=settings.entity,
                group=settings.group,
                tags=list(settings.tags),
                name=name,
                dir=str(run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
                reinit="finish_previous",
            )
        except (OSError, wandb.errors.Error) as error:  # a key the server refuses, a lost connection
            reason = " ".join(str(error).split()) or type(error).__name__
            raise ConnectionError(f"wandb did not start: {reason}") from error

    def log(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.run.log(values, step=int(row["step"]))

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.run.summary[key] = value
        self.run.finish(exit_code=0 if summary.get("status") == "finished" else 1)


class Loggers:
    """Fans every row out to the run record and the optional sinks. ``record`` is ``None`` on
    the ranks of a multi-process run other than rank 0 (which alone writes the record)."""

    def __init__(self, record: RunRecord | None, sinks: list[MetricsSink]) -> None:
        self.record = record
        self.sinks = sinks

    def log(self, row: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.log(row)
        for sink in self.sinks:
            sink.log(row)

    def flush(self) -> None:
        if self.record is not None:
            self.record.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.finish(summary)
        for sink in self.sinks:
            sink.finish(summary)
