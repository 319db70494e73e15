"""The runs a table or a figure counts: read from run folders or a wandb project, and chosen.

A run folder's record (:mod:`experiments.record`) says who the run is (task, optimizer label,
seed: read from its config, the same way for both sources), how it ended and what it logged.

Which runs count is decided here, once for the table and the plots: only finished runs by
default, and of several runs of the same (task, optimizer, seed) - reruns - the latest. Runs are
reruns of one another only when their configs agree in everything that changes what a run computes
(every key but the seed and those a resume may change: threads, device, logging, checkpoints;
``experiments/resume.py``). Runs of one optimizer label whose configs differ otherwise (other
epochs, another ``c``, bf16) are different experiments: each gets a column of its own, its label
followed by the keys that differ and its values of them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import RecordError
from .grid import Task
from .metrics_rows import read_rows
from .record import METRICS, SUMMARY, Status, load_summary, read_config
from .resume import LENGTH, RESUMABLE


@dataclass
class RecordedRun:
    """One run as its record tells: who it is, how it ended, and (read on first use) its metrics
    rows."""

    source: str  # the run directory, or entity/project/id on wandb
    task: Task
    label: str  # the optimizer's label, the table's column
    seed: int
    status: str  # a record.Status (wandb: its run state when the run wrote no summary)
    summary: Mapping[str, Any]
    recorded_at: float  # seconds since the epoch (summary.json written; wandb: run started); orders reruns
    read_metrics: Callable[[], tuple[pd.DataFrame, pd.DataFrame]] = field(repr=False)
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the resolved config

    @cached_property
    def _metrics(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self.read_metrics()

    @property
    def train(self) -> pd.DataFrame:
        """Training rows: ``step``, ``loss`` (non-finite as NaN/inf) and, from directories,
        ``smoothed_loss``, ``step_size``, ``forwards``, ``time``."""
        return self._metrics[0]

    @property
    def evals(self) -> pd.DataFrame:
        """Evaluation rows: ``step``, ``val_loss`` and ``val_accuracy`` or ``val_perplexity``."""
        return self._metrics[1]

    def final(self, key: str) -> float | None:
        """The summary's ``key`` as a float (``"nan"``/``"inf"`` included); None when absent, or
        when it is not a number (said on stderr)."""
        value = self.summary.get(key)
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise TypeError(value)
            return float(value)
        except (TypeError, ValueError):
            print(f"skipped: {self.source}: summary.json's {key} is not a number ({value!r})", file=sys.stderr)
            return None


def _float(value: Any) -> Any:
    # The record writes non-finite floats as the strings "nan", "inf", "-inf".
    return float(value) if isinstance(value, str) else value


def read_metrics_file(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and evaluation rows of a ``metrics.jsonl``; lines that are not rows (the torn
    last line of a killed run, text the run did not write) are skipped, and said so on stderr."""
    train, evals = [], []
    found = read_rows(path)
    if found.note(path):
        print(f"skipped: {found.note(path)}", file=sys.stderr)
    for _, parsed in found.rows:
        try:
            row = {key: _float(value) for key, value in parsed.items()}
        except ValueError:  # a value that is text, not a number the record wrote as "nan"/"inf"
            print(f"skipped: {path}: a row with a value that is not a number (step {parsed['step']})",
                  file=sys.stderr)
            continue
        if "loss" in row:
            train.append(row)
        elif "val_loss" in row:
            evals.append(row)
    return pd.DataFrame(train), pd.DataFrame(evals)


def identity(config: Mapping[str, Any]) -> tuple[Task, str, int]:
    """(task, optimizer label, seed) of a resolved config."""
    task = Task(config["dataset"]["name"], config["model"]["name"])
    return task, config["optimizer"]["label"], int(config["seed"])


def read_run_dir(run_dir: Path) -> RecordedRun:
    """The run recorded in ``run_dir``."""
    try:
        summary = load_summary(run_dir)
        status = summary["status"]
        config = read_config(run_dir)
        task, label, seed = identity(config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise RecordError(f"{run_dir}: not a readable run record ({reason})") from error
    return RecordedRun(
        source=str(run_dir), task=task, label=label, seed=seed, status=status,
        summary=summary, recorded_at=(run_dir / SUMMARY).stat().st_mtime,
        read_metrics=lambda: read_metrics_file(run_dir / METRICS), config=config,
    )


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Every directory under ``roots`` that holds a ``summary.json``, in path order."""
    return sorted({summary.parent for root in roots for summary in Path(root).rglob(SUMMARY)})


def read_run_dirs(roots: Iterable[Path]) -> list[RecordedRun]:
    return [read_run_dir(run_dir) for run_dir in find_run_dirs(roots)]


def _wandb_metrics(run: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training-loss history of a wandb run (all rows: ``history()`` would subsample)."""
    try:
        history = run.scan_history(keys=["loss"])
        rows = [{"step": row["_step"], "loss": _float(row["loss"])} for row in history]
    except Exception as error:  # wandb raises its own and requests' errors for network failures
        raise RecordError(f"could not read the history of wandb run {run.id}: {error}") from error
    return pd.DataFrame(rows, columns=["step", "loss"]), pd.DataFrame()


def _wandb_run(run: Any, project: str) -> RecordedRun:
    task, label, seed = identity(run.config)
    summary = dict(run.summary)
    # WandbSink copies the record's summary, status included; a run that never got there has
    # only wandb's state (running, crashed, ...).
    created = datetime.fromisoformat(run.created_at.replace("Z", "+00:00"))
    return RecordedRun(
        source=f"{project}/{run.id}", task=task, label=label, seed=seed,
        status=summary.get("status", run.state), summary=summary, recorded_at=created.timestamp(),
        read_metrics=lambda: _wandb_metrics(run), config=dict(run.config),
    )


def _wandb_api() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise RecordError("--wandb needs the wandb package: pip install -e '.[wandb]'") from error
    return wandb.Api()


def read_wandb(project: str) -> list[RecordedRun]:
    """The runs of the wandb project ``project`` (``entity/project``) through wandb's public API
    (``wandb.Api().runs``). Histories are fetched on first use."""
    try:
        runs = _wandb_api().runs(project)
        return [_wandb_run(run, project) for run in runs]
    except RecordError:
        raise
    except (KeyError, TypeError) as error:
        reason = f"a run without the harness's config ({error!r})"
        raise RecordError(f"wandb project {project}: {reason}") from error
    except Exception as error:  # no network, no credentials, no such project: wandb's and requests' errors
        raise RecordError(f"could not read the wandb project {project}: {error}") from error


# Keys whose values leave what a run computes as it is (a resume may change them), and the seed:
# runs that differ only in these are reruns. The length of a run is not among them.
NOT_SETTINGS = ("seed", *(key for key in RESUMABLE if key not in LENGTH))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        return {key: value for name, child in node.items() for key, value in _flatten(child, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): node}


def settings(config: Mapping[str, Any]) -> dict[str, str]:
    """The keys of a resolved config that decide what its run computes, values as JSON text."""
    return {key: json.dumps(value, sort_keys=True) for key, value in _flatten(config).items()
            if not any(key == name or key.startswith(f"{name}.") for name in NOT_SETTINGS)}


def differing_keys(runs: Sequence[RecordedRun]) -> list[str]:
    """The settings in which runs of the same task differ."""
    differ: set[str] = set()
    for task in {run.task for run in runs}:
        variants = [settings(run.config) for run in runs if run.task == task]
        for key in set().union(*variants):
            if len({variant.get(key) for variant in variants}) > 1:
                differ.add(key)
    return sorted(differ)


def split_experiments(runs: Sequence[RecordedRun]) -> list[RecordedRun]:
    """``runs`` with the label of each one that is not a rerun of the others of its label made
    distinct: ``"ADAM (trainer.precision=bf16)"``, named by the settings that differ within a task
    (the runs of that label in every task are named the same way, so that they share columns)."""
    by_label: dict[str, list[RecordedRun]] = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    split = []
    for label, group in by_label.items():
        keys = differing_keys(group)
        if not keys:
            split += group
            continue
        for run in group:
            values = settings(run.config)
            named = ", ".join(f"{key}={json.loads(values[key]) if key in values else None}" for key in keys)
            split.append(dataclasses.replace(run, label=f"{label} ({named})"))
        print(f"not reruns: the {label} runs differ in {', '.join(keys)}; a column each", file=sys.stderr)
    return split


def counted_runs(runs: Iterable[RecordedRun], include_unfinished: bool = False) -> list[RecordedRun]:
    """The runs that count: finished ones (all, with ``include_unfinished``), one per
    (task, label, seed) - the latest of reruns, labels split by :func:`split_experiments` first.
    Skipped runs are listed on stderr."""
    counted = []
    for run in runs:
        if run.status != Status.finished and not include_unfinished:
            print(f"skipped ({run.status}): {run.source}", file=sys.stderr)
        else:
            counted.append(run)
    latest: dict[tuple[Task, str, int], RecordedRun] = {}
    for run in sorted(split_experiments(counted), key=lambda r: r.recorded_at):
        key = (run.task, run.label, run.seed)
        if key in latest:
            print(f"rerun: {run.source} replaces {latest[key].source}", file=sys.stderr)
        latest[key] = run
    return list(latest.values())


def sources_text(roots: Iterable[Path], wandb: str | None = None) -> str:
    """The sources searched, for messages, e.g. ``multirun (no such directory), outputs``."""
    parts = [f"{root}" + ("" if Path(root).is_dir() else " (no such directory)") for root in roots]
    return ", ".join(parts + ([f"wandb project {wandb}"] if wandb else []))
