"""The run record: what a run folder holds, under which names, and how it is written and read.

A run folder holds

* ``config.yaml``: the resolved config;
* ``metrics.jsonl``: one JSON object per logged step or evaluation (what a row is:
  :mod:`experiments.metrics_rows`), flushed at least every ``FLUSH_SECONDS`` and before every
  checkpoint, so a crash keeps what was logged: at most the last second of rows, and never a row
  that a resume from the last checkpoint would not log again;
* ``summary.json``: how the run ended (:class:`Status`, and the error when it failed), its final
  and best metrics, counts, wall time and library versions. Written atomically: small, as
  ``running``, before the run starts, and in full at the end. When the disk is full at the end,
  it is overwritten in place, within the space the first one holds, with as much as fits: its
  status and error come first, so the record still says how the run ended;
* ``checkpoints/``: ``step_<step>.pt``, each with its digest (:mod:`experiments.checkpoint`);
* ``.hydra/``: Hydra's record of how the run was started, written by the run itself;
* ``run.log``: ``run_multiple.py``'s log of a run it launches alone.

A run refused before it wrote anything leaves its folder as it was. A sweep's supervisor that
wants to know why names a folder in the environment (:data:`REFUSALS_ENV`); a refused run then
leaves a refusal note there, ``<folder>/<run folder name>.json``.

This module imports neither torch nor pandas: ``run_multiple.py``, the SLURM launcher and the
scripts read records through it.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from .files import overwrite_in_place, write_atomically, write_with
from .metrics_rows import read_rows

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
HYDRA_FILES = ".hydra"  # Hydra's record of the invocation; its config.yaml is the config's second copy
RUN_LOG = "run.log"  # run_multiple.py's log of a run it launches alone, made before the run starts
REFUSALS_ENV = "SALSA_REFUSALS"  # the folder where a refused run leaves its note, when set
FLUSH_SECONDS = 1.0  # a write per row costs a system call, ~1 % of a small model's step
_CHECKPOINT = re.compile(r"^step_(\d+)\.pt$")


class Status(enum.StrEnum):
    """What ``summary.json`` says of how the run went."""

    running = "running"  # written before the run starts; still so if the process died
    finished = "finished"
    failed = "failed"  # with its error; ``diverged: true`` when the optimizer diverged
    interrupted = "interrupted"  # a stop signal, after a checkpoint once training had begun
    requeued = "requeued"  # stopped by SLURM's time limit; the job runs again and continues
    unreadable = "unreadable"  # never written: a summary that is not a JSON object with a known status


@dataclass(frozen=True)
class Summary:
    """A ``summary.json`` as read: its fields as written, and the ones readers decide by."""

    fields: Mapping[str, Any]

    @property
    def status(self) -> Status:
        try:
            return Status(self.fields.get("status"))
        except ValueError:
            return Status.unreadable

    @property
    def error(self) -> str | None:
        return self.fields.get("error")

    @property
    def diverged(self) -> bool:
        """The run failed by diverging: run again, it diverges again."""
        return self.fields.get("diverged") is True

    @property
    def slurm_job_id(self) -> str | None:
        return self.fields.get("slurm_job_id")

    @property
    def slurm_restarts(self) -> int:
        return self.fields.get("slurm_restarts") or 0

    @property
    def outcome(self) -> str:
        """The status, and the error when there is one: ``failed: ValueError: ...``."""
        return self.status + (f": {self.error}" if self.error else "")


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The summary of ``run_dir`` as written; ``OSError`` or ``ValueError`` when it cannot be read."""
    fields = json.loads((run_dir / SUMMARY).read_text())
    if not isinstance(fields, dict):
        raise ValueError(f"{SUMMARY} holds {type(fields).__name__}, not an object")
    return fields


def read_summary(run_dir: Path) -> Summary | None:
    """The summary of ``run_dir``; ``None`` when it has none, status ``unreadable`` when it has
    one that does not read (torn, or not ours)."""
    if not (run_dir / SUMMARY).exists():
        return None
    try:
        return Summary(load_summary(run_dir))
    except (OSError, ValueError):
        return Summary({"status": Status.unreadable})


def summary_version(run_dir: Path) -> tuple[int, int] | None:
    """Which version of its summary ``run_dir`` holds (the summary is written by replacing the
    file): a summary that a launch did not rewrite tells nothing of that launch."""
    try:
        stat = (run_dir / SUMMARY).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def read_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config the run recorded; ``OSError`` or ``ValueError`` when it does not read."""
    return OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def refusal_note(folder: Path, run_dir: Path) -> Path:
    """Where the run of ``run_dir`` leaves its refusal note in ``folder``."""
    return folder / f"{run_dir.name}.json"


def leave_refusal_note(run_dir: Path, reason: str) -> None:
    """Note why the run of ``run_dir`` was refused, in the folder that :data:`REFUSALS_ENV` names
    (nothing when it names none). A note that cannot be written is left out: the refusal itself
    has been said on stderr."""
    folder = os.environ.get(REFUSALS_ENV)
    if not folder:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_atomically(refusal_note(Path(folder), run_dir),
                         json.dumps({"run_dir": str(run_dir), "error": reason}) + "\n")
    except OSError:
        pass


def read_refusal_note(folder: Path, run_dir: Path) -> str | None:
    """Why the run of ``run_dir`` was refused, from its note in ``folder``; ``None`` without one."""
    try:
        note = json.loads(refusal_note(folder, run_dir).read_text())
        return str(note["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class RunRecord:
    """Writes the record of one run: config, metrics rows and summary.

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
    kept: dict[str, Any] = {"status": summary.get("status", Status.failed)}
    error = str(summary.get("error", ""))
    while error and (overflow := len(_summary_text({**kept, "error": error}).encode()) - room) > 0:
        error = error[: len(error) - overflow]  # JSON escapes may take a second cut
    if error:
        kept["error"] = error
    for key, value in summary.items():
        if key not in kept and len(_summary_text({**kept, key: value}).encode()) <= room:
            kept[key] = value
    return overwrite_in_place(path, _summary_text(kept))
