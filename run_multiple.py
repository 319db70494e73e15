"""The paper's sweeps as Hydra multiruns of ``main.py``: resumable, failures isolated, ``--dry-run``.

    python run_multiple.py nlp --dry-run          # the GLUE table: 4 tasks x 6 columns x 5 seeds
    python run_multiple.py mini --launcher joblib --n-jobs 2     # the CPU table on this machine
    python run_multiple.py image --extra --launcher submitit_slurm hydra.launcher.partition=gpu
    python run_multiple.py all --seeds 1 data_dir=/data   # trailing Hydra overrides reach every run

A grid is tasks x columns (optimizer configs) x seeds. A task is an experiment preset
(``conf/experiment/<preset>.yaml``: model, dataset, trainer, and the task group whose optimizer
settings ``conf/experiment/optimizers/<group>/<optimizer>.yaml`` the composition merges over the
optimizer's config), so a run is ``main.py +experiment=<preset> optimizer=<column>``, as by hand.

Each run has the directory ``<root>/<grid>/<dataset>-<model>-<optimizer>-seed<seed>`` (Hydra's
sweep dir and subdir: the same under every launcher), and its ``summary.json`` decides what a
re-run does: ``finished`` is skipped; so is a run that diverged (``diverged`` in its record: too
many non-finite steps in a row, which a deterministic run repeats), unless ``--retry-diverged``
is given; a checkpoint is resumed (``trainer.resume=true``); a record
without a checkpoint (failed or killed before the first one) is restarted with
``trainer.resume=true``, which the runner begins at step 0 (a fresh start refuses a directory that
holds a record); no record is a fresh run. The directory name does not encode trailing overrides:
give runs that differ by them (``trainer.max_steps=...``) a ``--root`` of their own.

Launchers. ``local``: one ``main.py -m`` process per run, one after another, its output in
``<run dir>/run.log``; a failure ends nothing else. ``joblib`` and ``submitit_slurm``: one multirun
per block of runs that Hydra can sweep as a cross product (optimizers x seeds of one task sharing
every other override), output in ``<root>/<grid>/logs/``. In a multirun ``main.py`` reports a
failed run, goes on with the next and exits with 1 at the end; runs that a joblib multirun left
without an outcome (it died, or refused them) then run one by one as under ``local``. A batch whose
log cannot be opened is reported as not run, and the sweep goes on. SLURM multiruns are all started at once and waited for; every job gets
``trainer.resume=true``, because SLURM requeues a timed-out or pre-empted job with the same command
line. Don't re-run a grid while its SLURM jobs are queued: their records say ``running``, and
they would be started twice.

Threads. Runs that share this machine (joblib with ``--n-jobs`` above 1) get
``trainer.threads=<cores / n_jobs>``, and the mini grid ``trainer.threads=1`` under every
launcher; a ``trainer.threads=`` override of your own replaces it. ``--dry-run`` shows it in the
commands.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from experiments.extras import require

# Checked before the imports below, so that a missing extra is one line naming it, not a traceback.
require("run_multiple.py", "hydra", "omegaconf")

from experiments.checkpoint import list_checkpoints  # noqa: E402
from experiments.logging import SUMMARY  # noqa: E402
from experiments.run_dir import RUN_LOG  # noqa: E402
from experiments.signals import on_stop_signals, signal_name  # noqa: E402

REPO = Path(__file__).resolve().parent
MAIN = REPO / "main.py"
CONF = REPO / "conf"

# The paper's table, in its column order: ADAM, SGD, ADAM-SLS, SGD-SLS, ADAM-SaLSa, SGD-SaLSa.
PAPER_COLUMNS = ("adam", "sgd", "sls_adam", "sls", "salsa", "salsa_sgd")
# What users pick instead: L4 and the learning-rate-free optimizers at their documented defaults.
EXTRA_COLUMNS = ("l4_adam", "l4_mom", "prodigy", "dadapt_adam", "schedulefree_adamw")

# Hydra names each job's directory from the choices that command() passes; run_name() must agree
# (the tests run both). Choices, not the configs' `name` keys: they are what this script knows.
SUBDIR = ("${hydra:runtime.choices.dataset}-${hydra:runtime.choices.model}"
          "-${hydra:runtime.choices.optimizer}-seed${seed}")


def run_name(dataset: str, model: str, optimizer: str, seed: int) -> str:
    return f"{dataset}-{model}-{optimizer}-seed{seed}"


@dataclass(frozen=True)
class Task:
    """One row of a table: a dataset and model, set up by an experiment preset."""

    dataset: str
    model: str
    preset: str  # conf/experiment/<preset>.yaml


@dataclass(frozen=True)
class Grid:
    """A table: its tasks, default columns and seeds, and the threads per run process."""

    name: str
    tasks: tuple[Task, ...]
    columns: tuple[str, ...]
    seeds: int
    threads: int | None = None  # trainer.threads of each run; None: see threads_per_run


GRIDS = {
    grid.name: grid
    for grid in (
        Grid("nlp", tuple(Task(d, "bert", "paper/glue_bert") for d in ("mnli", "qnli", "mrpc", "sst2")),
             PAPER_COLUMNS, seeds=5),
        # docs/protocol.md: the image seed count is not recorded (the figures show bands). Three is the
        # fewest that gives a mean and a spread, at 60 % of the cost of the NLP table's five.
        Grid("image", (Task("cifar10", "resnet34_cifar", "paper/cifar_resnet34"),
                       Task("cifar100", "resnet34_cifar", "paper/cifar_resnet34"),
                       Task("imagenet", "resnet50", "paper/imagenet_resnet50")),
             PAPER_COLUMNS, seeds=3),
        # docs/protocol.md records no seed count either; a 124M model on OpenWebText gets one per column.
        Grid("gpt2", (Task("openwebtext", "gpt2", "paper/gpt2_openwebtext"),),
             PAPER_COLUMNS, seeds=1),
        # Tiny models: one thread per process. On a busy 2-core machine 200 digits steps took 0.7 s
        # with one thread and 46 s with two (the OpenMP threads wait for each other).
        Grid("mini", (Task("digits", "small_cnn", "mini/digits_cnn"),
                      Task("rotten_tomatoes", "small_bert", "mini/rotten_tomatoes_bert"),
                      Task("rotten_tomatoes_lm", "small_gpt2", "mini/rotten_tomatoes_gpt2")),
             PAPER_COLUMNS + EXTRA_COLUMNS, seeds=3, threads=1),
    )
}
ALL = ("nlp", "image", "gpt2")  # `all`: the paper's tables; the mini table is separate


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
    task: Task
    optimizer: str
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


class State(enum.Enum):
    """What a sweep does with a run, read from its directory."""

    skip = "skip"  # finished
    diverged = "diverged"  # failed by diverging: skipped unless --retry-diverged
    resume = "resume"  # a checkpoint to continue from
    restart = "restart"  # a record but no checkpoint: started over with trainer.resume=true
    fresh = "fresh"  # no record


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, None when it has none; a torn or foreign file reads as ``unreadable``."""
    path = run_dir / SUMMARY
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return summary if isinstance(summary, dict) else {"status": "unreadable"}


def classify(run_dir: Path, retry_diverged: bool = False) -> State:
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") == "finished":
        return State.skip
    if summary is not None and summary.get("diverged") is True and not retry_diverged:
        return State.diverged
    if list_checkpoints(run_dir):
        return State.resume
    return State.fresh if summary is None else State.restart


def plan_runs(grid: Grid, root: Path, columns: Sequence[str], seeds: int, tasks: Sequence[Task]) -> list[Run]:
    """Tasks x columns x seeds of ``grid``, in table order."""
    return [
        Run(task, optimizer, seed, root / grid.name / run_name(task.dataset, task.model, optimizer, seed))
        for task in tasks for optimizer in columns for seed in range(seeds)
    ]


@dataclass(frozen=True)
class Batch:
    """Runs that one ``main.py -m`` launches: optimizers x seeds of one task, other overrides shared."""

    task: Task
    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    resume: bool
    runs: tuple[Run, ...]

    @classmethod
    def of(cls, runs: Sequence[Run], resume: bool) -> Batch:
        """The batch of ``runs``, which must be a cross product of their optimizers and seeds."""
        optimizers = tuple(dict.fromkeys(run.optimizer for run in runs))
        seeds = tuple(dict.fromkeys(run.seed for run in runs))
        return cls(runs[0].task, optimizers, seeds, resume, tuple(runs))

    @property
    def label(self) -> str:
        optimizers = "+".join(self.optimizers)
        return f"{self.task.dataset}-{self.task.model}-{optimizers}{'-resume' * self.resume}"


def make_batches(pending: Sequence[tuple[Run, State]], launcher: Launcher) -> list[Batch]:
    """Group the runs to launch into Hydra multiruns.

    ``local`` gets one run per batch, so that nothing but the run itself shares its process.
    The other launchers get the largest cross products Hydra can sweep: the runs of one task with
    the same resume flag, grouped by the seeds that each optimizer still needs (so that no
    finished run is launched again).
    """
    if launcher is Launcher.local:
        return [Batch.of((run,), state is not State.fresh) for run, state in pending]
    # (task, resume) -> optimizer -> its runs
    blocks: dict[tuple[Task, bool], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run, state in pending:
        # A requeued SLURM job repeats its command line, so it must be able to continue its record.
        resume = state is not State.fresh or launcher is Launcher.submitit_slurm
        blocks[(run.task, resume)][run.optimizer].append(run)
    batches = []
    for (_, resume), by_optimizer in blocks.items():
        by_seeds: dict[tuple[int, ...], list[Run]] = defaultdict(list)
        for runs in by_optimizer.values():
            by_seeds[tuple(run.seed for run in runs)].extend(runs)
        batches += [Batch.of(runs, resume) for runs in by_seeds.values()]
    return batches


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


def command(batch: Batch, grid_dir: Path, options: Options) -> list[str]:
    """The ``main.py -m`` command line of ``batch``."""
    task = batch.task
    cmd = [
        sys.executable, str(MAIN), "-m",
        f"+experiment={task.preset}", f"dataset={task.dataset}", f"model={task.model}",
        f"optimizer={','.join(batch.optimizers)}", f"seed={','.join(map(str, batch.seeds))}",
    ]
    if batch.resume:
        cmd.append("trainer.resume=true")
    if options.threads is not None:
        cmd.append(f"trainer.threads={options.threads}")
    cmd += ["trainer.progress=false", f"hydra.sweep.dir={grid_dir}", f"hydra.sweep.subdir={SUBDIR}"]
    return cmd + launcher_overrides(options) + list(options.overrides)


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")  # run.log follows the run (`tail -f`)
    if threads is not None:
        # trainer.threads sets torch's pool; these bound the OpenMP/MKL pools of everything else
        # the run loads (numpy, scikit-learn) and apply from the process start.
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(variable, str(threads))
    return env


def batch_log(batch: Batch, grid_dir: Path, launcher: Launcher) -> Path:
    if launcher is Launcher.local:
        return batch.runs[0].run_dir / RUN_LOG
    return grid_dir / "logs" / f"{batch.label}.log"


@dataclass
class Launched:
    """A multirun in progress: its process, and what its runs' records were when it started."""

    batch: Batch
    log: Path
    began: float
    before: dict[Run, tuple[int, int] | None]
    process: subprocess.Popen
    output: IO[str]


@dataclass(frozen=True)
class Attempt:
    """A run's last launch: its log, the version of its record before it (a record this attempt
    did not rewrite tells nothing of it), and why it was not launched at all, if it was not."""

    log: Path
    before: tuple[int, int] | None
    not_launched: str | None = None


@dataclass
class Stopping:
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP; SLURM's time-limit warning) to the sweep: it is
    passed on to the runs in progress, which checkpoint and end ``interrupted``, and no other run
    starts. The runs are started in sessions of their own, so that a Ctrl-C in the terminal
    reaches them once, through here."""

    signum: int = 0
    running: list[subprocess.Popen] = field(default_factory=list)

    def request(self, signum: int) -> None:
        self.signum = self.signum or signum
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signum)


def launch(batch: Batch, grid_dir: Path, options: Options, env: dict[str, str]) -> Launched:
    """Start the multirun of ``batch``, its output appended to its log after a line naming it;
    ``OSError`` when the log cannot be opened (then nothing is started)."""
    cmd, log = command(batch, grid_dir, options), batch_log(batch, grid_dir, options.launcher)
    before = {run: record_version(run) for run in batch.runs}
    log.parent.mkdir(parents=True, exist_ok=True)
    output = open(log, "a")
    output.write(f"### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
    output.flush()
    process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Launched(batch, log, time.time(), before, process, output)


def record_version(run: Run) -> tuple[int, int] | None:
    """Which version of its summary a run holds: the record is written by replacing the file."""
    try:
        stat = (run.run_dir / SUMMARY).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def has_outcome(run: Run, before: tuple[int, int] | None) -> bool:
    """Whether ``run`` wrote a final record (not ``running``) since its record was ``before``: a
    run that the multirun never started, cut off, or stopped before its record has none."""
    return (record_version(run) != before
            and (read_summary(run.run_dir) or {}).get("status") not in (None, "running"))


def run_batches(batches: Sequence[Batch], grid: Grid, grid_dir: Path, options: Options,
                stopping: Stopping) -> dict[Run, Attempt]:
    """Launch ``batches`` and print each run's outcome; returns each run's last attempt. A batch
    that cannot be launched (its log does not open) is reported and the others go on; after a
    stop signal (``stopping``) none is launched."""
    env = child_env(options.threads)
    logs: dict[Run, Attempt] = {}
    # A SLURM multirun waits for its jobs: start them all at once, so that the cluster runs them
    # together. The other launchers use this machine: one multirun at a time.
    waves = [batches] if options.launcher is Launcher.submitit_slurm else [[batch] for batch in batches]
    for wave in waves:
        started = []
        for batch in wave:
            if stopping.signum:
                return logs
            try:
                started.append(launch(batch, grid_dir, options, env))
            except OSError as error:
                not_launched(batch, batch_log(batch, grid_dir, options.launcher), error, logs)
                continue
            stopping.running.append(started[-1].process)
        for launched in started:
            launched.process.wait()
            launched.output.close()
            stopping.running.remove(launched.process)
            finish(launched, grid, grid_dir, options, logs, stopping)
    return logs


def not_launched(batch: Batch, log: Path, error: OSError, logs: dict[Run, Attempt]) -> None:
    why = f"not launched: its log {log} cannot be opened ({type(error).__name__}: {error})"
    for run in batch.runs:
        logs[run] = Attempt(log, record_version(run), why)
        print(f"  {'not run':<11} {run.name} ({why})", flush=True)


def finish(launched: Launched, grid: Grid, grid_dir: Path, options: Options,
           logs: dict[Run, Attempt], stopping: Stopping) -> None:
    """Report the runs of a multirun that ended; run one by one those it left without an outcome."""
    batch, returncode, log = launched.batch, launched.process.returncode, launched.log
    # A joblib multirun that died (killed, out of memory) leaves runs without an outcome. Not on
    # SLURM: the jobs of a multirun that stopped waiting may still be running there.
    stopped = returncode != 0 and len(batch.runs) > 1 and options.launcher is Launcher.joblib
    retry = [run for run in batch.runs
             if stopped and not stopping.signum and not has_outcome(run, launched.before[run])]
    report([run for run in batch.runs if run not in retry], returncode, launched, logs)
    if retry:
        print(f"  {batch.label}: the multirun stopped (exit {returncode}, log {log}); "
              f"running its {len(retry)} runs without an outcome one by one")
        alone = replace(options, launcher=Launcher.local)  # trainer.threads as in its multirun
        pending = [(run, classify(run.run_dir)) for run in retry]
        logs.update(run_batches(make_batches(pending, Launcher.local), grid, grid_dir, alone, stopping))


def report(runs: Sequence[Run], returncode: int, launched: Launched, logs: dict[Run, Attempt]) -> None:
    """Print the outcome of ``runs`` (of the multirun ``launched``) and note their attempt."""
    elapsed = time.time() - launched.began
    for run in runs:
        logs[run] = Attempt(launched.log, launched.before[run])
        rewritten = record_version(run) != launched.before[run]
        status = (read_summary(run.run_dir) or {}).get("status") if rewritten else "not run"
        failed = f", exit {returncode}, log {launched.log}" if status != "finished" else ""
        print(f"  {status or 'no record':<11} {run.name} ({elapsed:.1f} s{failed})", flush=True)


def describe_failure(run: Run, attempt: Attempt | None) -> str:
    """Why ``run`` did not finish: its record's error when its last attempt wrote one; else the
    error line that ``main.py`` printed for it (a refused resume leaves the older record as it
    was, whose status would mislead)."""
    summary = read_summary(run.run_dir)
    log = attempt.log if attempt else None
    if attempt is not None and attempt.not_launched:
        what = attempt.not_launched
    elif attempt is None or record_version(run) != attempt.before:
        if summary is None:
            what = "no record: it stopped before training (a config error, missing data) or never started"
        else:
            what = summary["status"] + (f": {summary['error']}" if summary.get("error") else "")
    else:
        cause = error_line(attempt.log, run.run_dir) or "see its log"
        what = (f"no record: {cause}" if summary is None
                else f"its record is as before (status {summary.get('status')}): {cause}")
    return f"  {run.name}: {what}\n    log: {log}\n    run dir: {run.run_dir}"


def error_line(log: Path, run_dir: Path) -> str | None:
    """The last line in which ``main.py`` said why the run in ``run_dir`` did not finish."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    ends = (f"(run: {run_dir})", f"(record: {run_dir})", f"; {run_dir} was removed)")
    return next((line for line in reversed(lines)
                 if line.startswith(("error:", "failed:", "interrupted:")) and line.endswith(ends)), None)


def state_detail(run: Run, state: State) -> str:
    if state is State.skip:
        return " (finished)"
    if state is State.diverged:
        return " (skipped: it diverged; --retry-diverged runs it again)"
    if state is State.resume:
        return f" (from {list_checkpoints(run.run_dir)[-1].name})"
    if state is State.restart:
        return f" (status {(read_summary(run.run_dir) or {}).get('status')}, no checkpoint)"
    return ""


def print_plan(grid: Grid, runs: Sequence[Run], states: dict[Run, State], batches: Sequence[Batch],
               shape: tuple[int, int, int], grid_dir: Path, options: Options) -> None:
    tasks, columns, seeds = shape
    print(f"{grid.name}: {len(runs)} runs ({tasks} tasks x {columns} columns x {seeds} seeds) in {grid_dir}")
    for run in runs:
        print(f"  {states[run].value:<8} {run.name}{state_detail(run, states[run])}")
    counts = {state: sum(s is state for s in states.values()) for state in State}
    skipped = counts[State.skip] + counts[State.diverged]
    diverged = f", {counts[State.diverged]} diverged (skipped)" if counts[State.diverged] else ""
    print(f"{grid.name}: {len(runs) - skipped} to run ({counts[State.fresh]} fresh, "
          f"{counts[State.resume]} resume, {counts[State.restart]} restart), {counts[State.skip]} finished "
          f"(skipped){diverged}; {len(batches)} commands ({options.launcher.value} launcher):")
    for batch in batches:
        print(f"  $ {shlex.join(command(batch, grid_dir, options))}")
        print(f"    log: {batch_log(batch, grid_dir, options.launcher)}")
    sys.stdout.flush()  # before the runs' own output


def select(names: str | None, known: Iterable[str], what: str) -> list[str] | None:
    """The comma-separated ``names`` checked against ``known`` (None when not given)."""
    if names is None:
        return None
    chosen = [name for name in names.split(",") if name]
    if not chosen:
        raise SystemExit(f"no {what} given: name at least one; known: {', '.join(sorted(known))}")
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=[*GRIDS, "all"], help="all = " + " + ".join(ALL))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data_dir=/data")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the grid's: "
                        + ", ".join(f"{g.name} {g.seeds}" for g in GRIDS.values()) + ")")
    parser.add_argument("--extra", action="store_true", help="add the columns " + ", ".join(EXTRA_COLUMNS))
    parser.add_argument("--columns", help="comma-separated optimizer configs instead of the grid's columns")
    parser.add_argument("--tasks", help="comma-separated datasets: only these rows")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and commands, start nothing")
    parser.add_argument("--retry-diverged", action="store_true",
                        help="run again the runs that diverged (skipped otherwise: a deterministic run diverges again)")
    parser.add_argument("--launcher", type=Launcher, choices=list(Launcher), default=Launcher.local,
                        metavar="{" + ",".join(launcher.value for launcher in Launcher) + "}")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel jobs of the joblib launcher (default: the CPU count)")
    parser.add_argument("--root", type=Path, default=Path("multirun"), help="sweeps go to ROOT/<grid>/")
    args = parser.parse_intermixed_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.launcher in LAUNCHER_PLUGINS:
        require(f"--launcher {args.launcher.value}", LAUNCHER_PLUGINS[args.launcher])
    grids = [GRIDS[name] for name in (ALL if args.grid == "all" else (args.grid,))]
    columns = select(args.columns, [path.stem for path in (CONF / "optimizer").glob("*.yaml")], "optimizer")
    wanted = select(args.tasks, [task.dataset for grid in grids for task in grid.tasks], "task")
    options = Options(args.launcher, args.n_jobs, tuple(args.overrides))
    root = args.root.resolve()
    logs: dict[Run, Attempt] = {}
    launched: list[Run] = []
    stopping = Stopping()
    with on_stop_signals(stopping.request):
        for grid in grids:
            tasks = [task for task in grid.tasks if wanted is None or task.dataset in wanted]
            if not tasks or stopping.signum:
                continue
            # dict.fromkeys: --extra on the mini grid, which has every column already, adds nothing.
            grid_columns = tuple(dict.fromkeys(columns or grid.columns + EXTRA_COLUMNS * args.extra))
            seeds = args.seeds or grid.seeds
            runs = plan_runs(grid, root, grid_columns, seeds, tasks)
            states = {run: classify(run.run_dir, args.retry_diverged) for run in runs}
            pending = [(run, state) for run, state in states.items() if state not in (State.skip, State.diverged)]
            batches = make_batches(pending, args.launcher)
            shape = (len(tasks), len(grid_columns), seeds)
            threads = threads_per_run(grid, args.launcher, args.n_jobs, args.overrides)
            grid_options = replace(options, threads=threads)
            print_plan(grid, runs, states, batches, shape, root / grid.name, grid_options)
            if not args.dry_run and batches:
                logs.update(run_batches(batches, grid, root / grid.name, grid_options, stopping))
                launched += [run for run, _ in pending]
    if stopping.signum:
        print(f"interrupted: stopped by {signal_name(stopping.signum)}; the runs in progress were stopped "
              "after a checkpoint and no other run started: the same command again resumes the sweep",
              file=sys.stderr)
        return 128 + stopping.signum
    if args.dry_run:
        return 0
    failed = [run for run in launched if classify(run.run_dir) is not State.skip]
    print(f"{len(launched) - len(failed)} of {len(launched)} launched runs finished.")
    if failed:
        print(f"{len(failed)} did not finish (the same command again resumes or restarts them, and skips "
              "those that diverged unless --retry-diverged is given):")
        print("\n".join(describe_failure(run, logs.get(run)) for run in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
