"""The run record (always) and Weights & Biases (when configured), behind one interface.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object
per logged step or evaluation, flushed at least every ``FLUSH_SECONDS`` and before every checkpoint,
so a crash keeps what was logged: at most the last second of rows, and never a row that a resume
from the last checkpoint would not log again) and
``summary.json`` (written atomically: small, as ``status: running``, before the run starts, and
in full at the end). When the disk is full at the end, the summary is overwritten in place, within
the space the first one holds, with as much as fits: its status and error come first, so the
record still says how the run ended.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .files import overwrite_in_place, write_atomically, write_with
from .metrics_rows import read_rows
from .network import PROBE_SECONDS, connects, host_and_port

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
FLUSH_SECONDS = 1.0  # a write per row costs a system call, ~1 % of a small model's step


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsSink(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class RunRecord:
    """The local record of one run: config, metrics rows and summary.

    Making one writes nothing: the runner writes the small ``running`` summary first and then
    :meth:`start` writes the rest, so that a failure to write even that leaves the directory as
    it was."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / METRICS
        self.has_begun = False  # whether this process has written the summary
        self._replaced: bytes | None = None  # the summary of an earlier process, as it was
        self._file: IO[str] | None = None
        self._flushed_at = time.monotonic()

    def has_summary(self) -> bool:
        """Whether the directory holds a summary already (of an earlier process: a resume)."""
        return (self.run_dir / SUMMARY).exists()

    def start(self, cfg: DictConfig, resume_from_step: int | None = None,
              invocation: Mapping[str, str] | None = None) -> tuple[int, str | None]:
        """Write the config and open the metrics (after the rows up to ``resume_from_step``, when
        resuming). ``invocation`` maps file names (relative to the run directory) to texts that
        record how the run was started (Hydra's ``.hydra/`` files). Returns how many rows were
        kept and what was skipped (see :meth:`_truncate_after`)."""
        for name, text in (invocation or {}).items():
            (self.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.run_dir / name, text)
        write_atomically(self.run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        kept, skipped = self._truncate_after(resume_from_step) if resume_from_step is not None else (0, None)
        self._file = open(self.metrics_path, "a")
        self._flushed_at = time.monotonic()
        return kept, skipped

    def _truncate_after(self, step: int) -> tuple[int, str | None]:
        """Drop rows logged after the checkpoint we resume from (they will be logged again) and
        lines that are not rows; returns how many rows were kept, and the note on the skipped."""
        found = read_rows(self.metrics_path)
        if not self.metrics_path.exists():
            return 0, None
        kept = [line for line, row in found.rows if row["step"] <= step]
        write_with(self.metrics_path, lambda f: f.write(b"".join(line + b"\n" for line in kept)))
        return len(kept), found.note(self.metrics_path)

    def log(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        if time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Hand the rows logged so far to the operating system (they survive a killed process)."""
        if self._file is not None:
            self._file.flush()
        self._flushed_at = time.monotonic()

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Replace the summary; on a full disk, overwrite it in place with what fits."""
        path = self.run_dir / SUMMARY
        if not self.has_begun and path.exists():
            self._replaced = path.read_bytes()
        try:
            write_atomically(path, _summary_text(summary))
        except OSError:
            if not (path.exists() and _overwrite_with_what_fits(path, summary)):
                raise
        self.has_begun = True

    def restore_summary(self) -> None:
        """Put back the summary this process replaced (a resume refused once its data was
        built): the record says again what it said before."""
        if self._replaced is not None:
            write_with(self.run_dir / SUMMARY, lambda f: f.write(self._replaced))

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the metrics and write the final summary. A full disk that loses the last
        unflushed rows is noted in the summary rather than raised over the run's own outcome."""
        try:
            if self._file is not None:
                self._file.close()
        except OSError as error:
            summary = {**summary, "metrics_error": f"{type(error).__name__}: {error}"}
        self.write_summary(summary)


def _summary_text(summary: Mapping[str, Any]) -> str:
    return json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n"


def _overwrite_with_what_fits(path: Path, summary: dict[str, Any]) -> bool:
    """Overwrite ``path`` in place with as much of ``summary`` as fits in its size: the status,
    the error (cut short if need be), then the other fields in order."""
    room = path.stat().st_size
    kept: dict[str, Any] = {"status": summary.get("status", "failed")}
    error = str(summary.get("error", ""))
    while error and (overflow := len(_summary_text({**kept, "error": error}).encode()) - room) > 0:
        error = error[: len(error) - overflow]  # JSON escapes may take a second cut
    if error:
        kept["error"] = error
    for key, value in summary.items():
        if key not in kept and len(_summary_text({**kept, key: value}).encode()) <= room:
            kept[key] = value
    return overwrite_in_place(path, _summary_text(kept))


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
