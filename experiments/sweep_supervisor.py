"""A sweep's supervisor: it launches the multiruns of a plan, waits for them and reports each run.

``local``: one ``main.py -m`` process per run, one after another, its output in the run folder's
``run.log``; a failure ends nothing else. ``joblib`` and ``submitit_slurm``: one multirun per
block of runs that Hydra can sweep as a cross product, output in ``<grid dir>/logs/``. In a
multirun ``main.py`` reports a failed run, goes on with the next and exits with 1 at the end; runs
that a joblib multirun left without an outcome (it died, or refused them) then run one by one as
under ``local``. A multirun whose log cannot be opened is reported as not run, and the sweep goes
on. SLURM multiruns are all started at once and waited for.

Every outcome is read from the runs' records (:mod:`experiments.record`), never from the output
of the runs: a run whose record this launch did not rewrite was refused (its refusal note, in
``<grid dir>/refusals/``, says why), or never ran. A stop signal to the sweep is passed on once to
the runs in progress (:class:`Stopping`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from .record import REFUSALS_ENV, Status, read_refusal_note, read_summary, refusal_note, summary_version
from .sweep_plan import Launcher, Multirun, Options, Run, classify, command, make_multiruns, multirun_log

REFUSALS = "refusals"  # the grid folder's folder of refusal notes


def refusals_folder(grid_dir: Path) -> Path:
    return grid_dir / REFUSALS


def child_env(threads: int | None, grid_dir: Path) -> dict[str, str]:
    """The environment of the multiruns: unbuffered output, the thread pools bounded, and the
    folder for refusal notes named."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")  # run.log follows the run (`tail -f`)
    env[REFUSALS_ENV] = str(refusals_folder(grid_dir))
    if threads is not None:
        # trainer.threads sets torch's pool; these bound the OpenMP/MKL pools of everything else
        # the run loads (numpy, scikit-learn) and apply from the process start.
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(variable, str(threads))
    return env


@dataclass
class Launched:
    """A multirun in progress: its process, and what its runs' records were when it started."""

    multirun: Multirun
    log: Path
    began: float
    before: dict[Run, tuple[int, int] | None]
    process: subprocess.Popen
    output: IO[str]


@dataclass(frozen=True)
class Attempt:
    """A run's last launch: its log, the version of its record before it (a record this attempt
    did not rewrite tells nothing of it), where a refusal would be noted, and why it was not
    launched at all, if it was not."""

    log: Path
    before: tuple[int, int] | None
    refusals: Path
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


def launch(multirun: Multirun, grid_dir: Path, options: Options, env: dict[str, str]) -> Launched:
    """Start ``multirun``, its output appended to its log after a line naming it; ``OSError`` when
    the log cannot be opened (then nothing is started). Refusal notes of its runs' earlier
    launches are removed first: a note found afterwards is this launch's."""
    cmd, log = command(multirun, grid_dir, options), multirun_log(multirun, grid_dir, options.launcher)
    before = {run: summary_version(run.run_dir) for run in multirun.runs}
    log.parent.mkdir(parents=True, exist_ok=True)
    output = open(log, "a")
    for run in multirun.runs:
        refusal_note(refusals_folder(grid_dir), run.run_dir).unlink(missing_ok=True)
    output.write(f"### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
    output.flush()
    process = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Launched(multirun, log, time.time(), before, process, output)


def has_outcome(run: Run, before: tuple[int, int] | None) -> bool:
    """Whether ``run`` wrote a final record (not ``running``) since its record was ``before``: a
    run that the multirun never started, cut off, or stopped before its record has none."""
    summary = read_summary(run.run_dir)
    return (summary_version(run.run_dir) != before
            and summary is not None and summary.status is not Status.running)


def run_multiruns(multiruns: Sequence[Multirun], grid_dir: Path, options: Options,
                  stopping: Stopping) -> dict[Run, Attempt]:
    """Launch ``multiruns`` and print each run's outcome; returns each run's last attempt. A
    multirun that cannot be launched (its log does not open) is reported and the others go on;
    after a stop signal (``stopping``) none is launched."""
    env = child_env(options.threads, grid_dir)
    attempts: dict[Run, Attempt] = {}
    # A SLURM multirun waits for its jobs: start them all at once, so that the cluster runs them
    # together. The other launchers use this machine: one multirun at a time.
    waves = [multiruns] if options.launcher is Launcher.submitit_slurm else [[m] for m in multiruns]
    for wave in waves:
        started = []
        for multirun in wave:
            if stopping.signum:
                return attempts
            try:
                started.append(launch(multirun, grid_dir, options, env))
            except OSError as error:
                log = multirun_log(multirun, grid_dir, options.launcher)
                not_launched(multirun, log, error, grid_dir, attempts)
                continue
            stopping.running.append(started[-1].process)
        for launched in started:
            launched.process.wait()
            launched.output.close()
            stopping.running.remove(launched.process)
            finish(launched, grid_dir, options, attempts, stopping)
    return attempts


def not_launched(multirun: Multirun, log: Path, error: OSError, grid_dir: Path,
                 attempts: dict[Run, Attempt]) -> None:
    why = f"not launched: its log {log} cannot be opened ({type(error).__name__}: {error})"
    for run in multirun.runs:
        attempts[run] = Attempt(log, summary_version(run.run_dir), refusals_folder(grid_dir), why)
        print(f"  {'not run':<11} {run.name} ({why})", flush=True)


def finish(launched: Launched, grid_dir: Path, options: Options, attempts: dict[Run, Attempt],
           stopping: Stopping) -> None:
    """Report the runs of a multirun that ended; run one by one those it left without an outcome."""
    multirun, returncode, log = launched.multirun, launched.process.returncode, launched.log
    # A joblib multirun that died (killed, out of memory) leaves runs without an outcome. Not on
    # SLURM: the jobs of a multirun that stopped waiting may still be running there.
    stopped = returncode != 0 and len(multirun.runs) > 1 and options.launcher is Launcher.joblib
    retry = [run for run in multirun.runs
             if stopped and not stopping.signum and not has_outcome(run, launched.before[run])]
    report([run for run in multirun.runs if run not in retry], returncode, launched, grid_dir, attempts)
    if retry:
        print(f"  {multirun.label}: the multirun stopped (exit {returncode}, log {log}); "
              f"running its {len(retry)} runs without an outcome one by one")
        alone = replace(options, launcher=Launcher.local)  # trainer.threads as in its multirun
        pending = [(run, classify(run.run_dir)) for run in retry]
        attempts.update(run_multiruns(make_multiruns(pending, Launcher.local), grid_dir, alone, stopping))


def report(runs: Sequence[Run], returncode: int, launched: Launched, grid_dir: Path,
           attempts: dict[Run, Attempt]) -> None:
    """Print the outcome of ``runs`` (of the multirun ``launched``) and note their attempt."""
    elapsed = time.time() - launched.began
    for run in runs:
        attempts[run] = Attempt(launched.log, launched.before[run], refusals_folder(grid_dir))
        summary = read_summary(run.run_dir)
        rewritten = summary_version(run.run_dir) != launched.before[run]
        status = (summary.status if summary is not None else "no record") if rewritten else "not run"
        failed = f", exit {returncode}, log {launched.log}" if status != Status.finished else ""
        print(f"  {status:<11} {run.name} ({elapsed:.1f} s{failed})", flush=True)


def describe_failure(run: Run, attempt: Attempt | None) -> str:
    """Why ``run`` did not finish: its record's status and error when its last attempt wrote one;
    else its refusal note (a refused resume leaves the older record as it was, whose status would
    mislead)."""
    summary = read_summary(run.run_dir)
    log = attempt.log if attempt else None
    if attempt is not None and attempt.not_launched:
        what = attempt.not_launched
    elif attempt is None or summary_version(run.run_dir) != attempt.before:
        if summary is None:
            what = "no record: it stopped before training (a config error, missing data) or never started"
        else:
            what = summary.outcome
    else:
        refusal = read_refusal_note(attempt.refusals, run.run_dir)
        cause = f"refused: {refusal}" if refusal else "it wrote nothing (see its log)"
        what = (f"no record: {cause}" if summary is None
                else f"its record is as before (status {summary.status}): {cause}")
    return f"  {run.name}: {what}\n    log: {log}\n    run dir: {run.run_dir}"
