"""A sweep's plan: the runs of a grid, what each needs, and the ``main.py -m`` multiruns that do it.

Each run has the folder ``<root>/<grid>/<dataset>-<model>-<optimizer>-seed<seed>`` (Hydra's sweep
dir and subdir: the same under every launcher), and its record decides what a sweep does with it
(:class:`State`): a finished run is skipped; so is a run that diverged (a deterministic run
diverges again) unless asked to retry it; a checkpoint is resumed (``trainer.resume=true``); a
record without a checkpoint (failed or killed before the first one) is restarted with
``trainer.resume=true``, which the runner begins at step 0 (a fresh start refuses a folder that
holds a record); no record is a fresh run.

Planning reads run folders through :mod:`experiments.record` alone: ``run_multiple.py --dry-run``
imports neither torch nor Hydra.
"""

from __future__ import annotations

import enum
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .grid import Grid, Task
from .paths import MAIN
from .record import RUN_LOG, Status, list_checkpoints, read_summary

# Hydra names each run's folder from the choices that command() passes; run_name() must agree
# (the tests run both). Choices, not the configs' `name` keys: they are what the plan knows.
SUBDIR = ("${hydra:runtime.choices.dataset}-${hydra:runtime.choices.model}"
          "-${hydra:runtime.choices.optimizer}-seed${seed}")


def run_name(dataset: str, model: str, optimizer: str, seed: int) -> str:
    return f"{dataset}-{model}-{optimizer}-seed{seed}"


class Launcher(enum.Enum):
    local = "local"
    joblib = "joblib"
    submitit_slurm = "submitit_slurm"


# The Hydra plugin each launcher needs (the `cluster` extra), checked before anything is planned.
LAUNCHER_PLUGINS = {
    Launcher.joblib: "hydra_plugins.hydra_joblib_launcher",
    Launcher.submitit_slurm: "hydra_plugins.hydra_submitit_launcher",
}


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a task, an optimizer column and a seed, and the folder of its record."""

    task: Task
    preset: str  # conf/experiment/<preset>.yaml, which sets up the task
    optimizer: str
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


class State(enum.Enum):
    """What a sweep does with a run, read from its folder."""

    skip = "skip"  # finished
    diverged = "diverged"  # failed by diverging: skipped unless retried
    resume = "resume"  # a checkpoint to continue from
    restart = "restart"  # a record but no checkpoint: started over with trainer.resume=true
    fresh = "fresh"  # no record


def classify(run_dir: Path, retry_diverged: bool = False) -> State:
    summary = read_summary(run_dir)
    if summary is not None and summary.status is Status.finished:
        return State.skip
    if summary is not None and summary.diverged and not retry_diverged:
        return State.diverged
    if list_checkpoints(run_dir):
        return State.resume
    return State.fresh if summary is None else State.restart


def plan_runs(grid: Grid, root: Path, columns: Sequence[str], seeds: int, tasks: Sequence[Task]) -> list[Run]:
    """Tasks x columns x seeds of ``grid``, in table order."""
    return [
        Run(task, grid.presets[task], optimizer, seed,
            root / grid.name / run_name(task.dataset, task.model, optimizer, seed))
        for task in tasks for optimizer in columns for seed in range(seeds)
    ]


@dataclass(frozen=True)
class Multirun:
    """Runs that one ``main.py -m`` launches: optimizers x seeds of one task, other overrides shared."""

    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    resume: bool
    runs: tuple[Run, ...]

    @classmethod
    def of(cls, runs: Sequence[Run], resume: bool) -> Multirun:
        """The multirun of ``runs``, which must be a cross product of their optimizers and seeds."""
        optimizers = tuple(dict.fromkeys(run.optimizer for run in runs))
        seeds = tuple(dict.fromkeys(run.seed for run in runs))
        return cls(optimizers, seeds, resume, tuple(runs))

    @property
    def task(self) -> Task:
        return self.runs[0].task

    @property
    def preset(self) -> str:
        return self.runs[0].preset

    @property
    def label(self) -> str:
        optimizers = "+".join(self.optimizers)
        return f"{self.task.dataset}-{self.task.model}-{optimizers}{'-resume' * self.resume}"


def make_multiruns(pending: Sequence[tuple[Run, State]], launcher: Launcher) -> list[Multirun]:
    """Group the runs to launch into Hydra multiruns.

    ``local`` gets one run per multirun, so that nothing but the run itself shares its process.
    The other launchers get the largest cross products Hydra can sweep: the runs of one task with
    the same resume flag, grouped by the seeds that each optimizer still needs (so that no
    finished run is launched again).
    """
    if launcher is Launcher.local:
        return [Multirun.of((run,), state is not State.fresh) for run, state in pending]
    # (task, resume) -> optimizer -> its runs
    blocks: dict[tuple[Task, bool], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run, state in pending:
        # A requeued SLURM job repeats its command line, so it must be able to continue its record.
        resume = state is not State.fresh or launcher is Launcher.submitit_slurm
        blocks[(run.task, resume)][run.optimizer].append(run)
    multiruns = []
    for (_, resume), by_optimizer in blocks.items():
        by_seeds: dict[tuple[int, ...], list[Run]] = defaultdict(list)
        for runs in by_optimizer.values():
            by_seeds[tuple(run.seed for run in runs)].extend(runs)
        multiruns += [Multirun.of(runs, resume) for runs in by_seeds.values()]
    return multiruns


@dataclass(frozen=True)
class Options:
    launcher: Launcher
    n_jobs: int
    overrides: tuple[str, ...]  # from the command line, for every run
    threads: int | None = None  # trainer.threads added to every run; None: nothing added


def threads_per_run(grid: Grid, launcher: Launcher, n_jobs: int, overrides: Sequence[str]) -> int | None:
    """The ``trainer.threads`` each run of ``grid`` gets, or None to add nothing.

    A ``trainer.threads=`` among the user's overrides wins (None: it is passed as given). Else the
    grid's own setting; else, when the joblib launcher runs jobs side by side on this machine,
    its cores split between them: with torch's default (a thread per core) in every job, their
    threads wait for each other (runs on a busy 2-core machine were 15-30x slower). Runs one
    after another (``local``) and SLURM jobs (each on cores of its own) keep torch's default.
    """
    if any(override.lstrip("+").startswith("trainer.threads=") for override in overrides):
        return None
    if grid.threads is not None:
        return grid.threads
    if launcher is Launcher.joblib and n_jobs > 1:
        return max(1, (os.cpu_count() or 1) // n_jobs)
    return None


def launcher_overrides(options: Options) -> list[str]:
    if options.launcher is Launcher.joblib:
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={options.n_jobs}"]
    if options.launcher is Launcher.submitit_slurm:
        return ["hydra/launcher=slurm"]  # conf/hydra/launcher/slurm.yaml
    return []


def command(multirun: Multirun, grid_dir: Path, options: Options) -> list[str]:
    """The ``main.py -m`` command line of ``multirun``."""
    task = multirun.task
    cmd = [
        sys.executable, str(MAIN), "-m",
        f"+experiment={multirun.preset}", f"dataset={task.dataset}", f"model={task.model}",
        f"optimizer={','.join(multirun.optimizers)}", f"seed={','.join(map(str, multirun.seeds))}",
    ]
    if multirun.resume:
        cmd.append("trainer.resume=true")
    if options.threads is not None:
        cmd.append(f"trainer.threads={options.threads}")
    cmd += ["trainer.progress=false", f"hydra.sweep.dir={grid_dir}", f"hydra.sweep.subdir={SUBDIR}"]
    return cmd + launcher_overrides(options) + list(options.overrides)


def multirun_log(multirun: Multirun, grid_dir: Path, launcher: Launcher) -> Path:
    """Where the output of ``multirun`` goes: the run folder's log for a run launched alone."""
    if launcher is Launcher.local:
        return multirun.runs[0].run_dir / RUN_LOG
    return grid_dir / "logs" / f"{multirun.label}.log"
