"""The paper's sweeps as Hydra multiruns of ``main.py``: resumable, failures isolated, ``--dry-run``.

    python run_multiple.py nlp --dry-run          # the GLUE table: 4 tasks x 6 columns x 5 seeds
    python run_multiple.py mini --launcher joblib --n-jobs 2     # the CPU table on this machine
    python run_multiple.py image --extra --launcher submitit_slurm hydra.launcher.partition=gpu
    python run_multiple.py all --seeds 1 data_dir=/data   # trailing Hydra overrides reach every run

A grid (``experiments/grid.py``) is tasks x columns (optimizer configs) x seeds. A task, a row of
the table, is a dataset trained with a model, set up by an experiment preset
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
without an outcome (it died, or refused them) then run one by one as under ``local``. A multirun
whose log cannot be opened is reported as not run, and the sweep goes on. SLURM multiruns are all
started at once and waited for; every job gets ``trainer.resume=true``, because SLURM requeues a
timed-out or pre-empted job with the same command line. Don't re-run a grid while its SLURM jobs
are queued: their records say ``running``, and they would be started twice. Outcomes are read
from the runs' records; a run refused before it wrote one leaves a note saying why in
``<root>/<grid>/refusals/``.

Threads. Runs that share this machine (joblib with ``--n-jobs`` above 1) get
``trainer.threads=<cores / n_jobs>``, and the mini grid ``trainer.threads=1`` under every
launcher; a ``trainer.threads=`` override of your own replaces it. ``--dry-run`` shows it in the
commands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from experiments.extras import require

# Checked before the imports below, so that a missing extra is one line naming it, not a traceback.
require("run_multiple.py", "hydra", "omegaconf")

from experiments.grid import EXTRA_COLUMNS, GRIDS, PAPER_GRIDS, Grid  # noqa: E402
from experiments.paths import CONF  # noqa: E402
from experiments.record import list_checkpoints, read_summary  # noqa: E402
from experiments.signals import on_stop_signals, signal_name  # noqa: E402
from experiments.sweep_plan import (  # noqa: E402
    LAUNCHER_PLUGINS, Launcher, Multirun, Options, Run, State, classify, command, make_multiruns,
    multirun_log, plan_runs, threads_per_run,
)
from experiments.sweep_supervisor import Attempt, Stopping, describe_failure, run_multiruns  # noqa: E402


def state_detail(run: Run, state: State) -> str:
    if state is State.skip:
        return " (finished)"
    if state is State.diverged:
        return " (skipped: it diverged; --retry-diverged runs it again)"
    if state is State.resume:
        return f" (from {list_checkpoints(run.run_dir)[-1].name})"
    if state is State.restart:
        return f" (status {read_summary(run.run_dir).status}, no checkpoint)"
    return ""


def print_plan(grid: Grid, runs: Sequence[Run], states: dict[Run, State], multiruns: Sequence[Multirun],
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
          f"(skipped){diverged}; {len(multiruns)} commands ({options.launcher.value} launcher):")
    for multirun in multiruns:
        print(f"  $ {shlex.join(command(multirun, grid_dir, options))}")
        print(f"    log: {multirun_log(multirun, grid_dir, options.launcher)}")
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
    parser.add_argument("grid", choices=[*GRIDS, "all"], help="all = " + " + ".join(PAPER_GRIDS))
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
    grids = [GRIDS[name] for name in (PAPER_GRIDS if args.grid == "all" else (args.grid,))]
    columns = select(args.columns, [path.stem for path in (CONF / "optimizer").glob("*.yaml")], "optimizer")
    wanted = select(args.tasks, [task.dataset for grid in grids for task in grid.tasks], "task")
    options = Options(args.launcher, args.n_jobs, tuple(args.overrides))
    root = args.root.resolve()
    attempts: dict[Run, Attempt] = {}
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
            multiruns = make_multiruns(pending, args.launcher)
            shape = (len(tasks), len(grid_columns), seeds)
            threads = threads_per_run(grid, args.launcher, args.n_jobs, args.overrides)
            grid_options = replace(options, threads=threads)
            print_plan(grid, runs, states, multiruns, shape, root / grid.name, grid_options)
            if not args.dry_run and multiruns:
                attempts.update(run_multiruns(multiruns, root / grid.name, grid_options, stopping))
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
        print("\n".join(describe_failure(run, attempts.get(run)) for run in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
