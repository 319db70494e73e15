"""The run record (always) and Weights & Biases (when configured), behind one interface.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object
per logged step or evaluation, flushed at least every ``FLUSH_SECONDS`` and before every checkpoint,
so a crash keeps what was logged: at most the last second of rows, and never a row that a resume
from the last checkpoint would not log again) and
``summary.json`` (written atomically at the end, and as ``status: running`` at the start).
"""

from __future__ import annotations

import json
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
FLUSH_SECONDS = 1.0  # a write per row costs a system call, ~1 % of a small model's step


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see a
    half-written file, and a crash leaves the previous version."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsSink(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


class RunRecord:
    """The local record of one run: config, metrics rows and summary."""

    def __init__(self, run_dir: Path, cfg: DictConfig, resume_from_step: int | None = None) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        self.metrics_path = run_dir / METRICS
        if resume_from_step is not None:
            self._truncate_after(resume_from_step)
        self._file = open(self.metrics_path, "a")
        self._flushed_at = time.monotonic()

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be logged again."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines() if _row_step(line) <= step]
        write_atomically(self.metrics_path, "".join(line + "\n" for line in kept))

    def log(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        if time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Hand the rows logged so far to the operating system (they survive a killed process)."""
        self._file.flush()
        self._flushed_at = time.monotonic()

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2)
        write_atomically(self.run_dir / SUMMARY, text + "\n")

    def finish(self, summary: dict[str, Any]) -> None:
        self._file.close()
        self.write_summary(summary)


def _row_step(line: str) -> float:
    """The step of a metrics row; infinite for a line that is not one (the torn last line of a
    killed run), so that resuming drops it."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def check_wandb(settings: DictConfig) -> None:
    """Fail before any work when wandb cannot log as configured: not installed, or online with
    no credentials (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc)."""
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        raise ConfigError("logger=wandb needs the wandb package: pip install -e '.[wandb]'") from error
    mode = settings.mode.value if hasattr(settings.mode, "value") else str(settings.mode)
    if mode == "online" and os.environ.get("WANDB_MODE") not in ("offline", "disabled") and not _wandb_key_known():
        raise ConfigError(
            "logger.wandb.mode=online needs credentials: run `wandb login` or set WANDB_API_KEY; "
            "or use logger.wandb.mode=offline (sync later with `wandb sync`) or disabled"
        )


def _wandb_key_known() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbSink:
    """Mirrors the metric rows to a wandb run. The API key is read by wandb from its own login
    or ``WANDB_API_KEY``; this project never writes it anywhere."""

    def __init__(self, settings: DictConfig, cfg: DictConfig, run_dir: Path, name: str) -> None:
        import wandb

        mode = settings.mode.value if hasattr(settings.mode, "value") else str(settings.mode)
        self.run = wandb.init(
            mode=mode,
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            tags=list(settings.tags),
            name=name,
            dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous",
        )

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
