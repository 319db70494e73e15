"""One training run, configured by Hydra (``conf/config.yaml``).

    python main.py                                     # the embedded default, offline on CPU
    python main.py optimizer=salsa dataset=sst2 model=bert trainer=paper_nlp
    python main.py -m optimizer=salsa,adam seed=0,1,2  # a multirun (a failed run ends no other)
    python main.py trainer.resume=true hydra.run.dir=<run dir>   # continue a killed run

Exit status: 0 when every run started finished. A single run that did not exits with the status
of the error that ended it (the table of experiments/errors.py): 2 (a bad input, also one Hydra
finds while composing the config or making the run directory, or a refused run directory: nothing
was written), 3 (training diverged), 128 + the signal for a stop signal (143 SIGTERM, 130
SIGINT/Ctrl-C, 129 SIGHUP: a checkpoint is written once training began; 140 under SLURM, the time
limit's SIGUSR2: the job is also requeued) or 1 (any other failure; the record says ``failed`` with
the error). A multirun goes through all its runs and exits with 1 if any of them did not finish (a
stop signal ends it at once, with 128 + the signal); one whose swept keys do not all reach the
runs' folder names starts nothing and exits with 2 (experiments/sweeps.py). A refused run leaves a
note where a sweep's supervisor asks for one (experiments/record.py, ``SALSA_REFUSALS``).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from experiments.extras import require

# Checked before the imports below, so that a missing extra is one line naming it, not a traceback.
require("main.py", "hydra", "omegaconf", "tqdm", "sklearn")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.composition import answer, hydra_failures_raised
from experiments.config import register_schema
from experiments.distributed import is_main_process
from experiments.errors import BAD_INPUT, FAILED, ConfigError, Interrupted, TrainingDiverged, exit_status
from experiments.record import leave_refusal_note
from experiments.run_dir import made_for_this_process, remove_empty_parents
from experiments.runner import run
from experiments.signals import signal_name, stop_signals_raise
from experiments.slurm import TIME_LIMIT_SIGNAL, SlurmJob
from experiments.sweeps import RunFailed

register_schema()
# Taken before Hydra makes any directory: a run directory that appeared after it is this
# process's own, and is removed again if the run is refused.
LAUNCHED = time.time()


def one_line(summary: dict) -> str:
    evals = ", ".join(
        f"{key.removeprefix('final_')} {value:.4g}"
        for key, value in summary.items()
        if key.startswith("final_val_")
    )
    return (
        f"{summary['status']}: {summary['dataset']}/{summary['model']}/{summary['optimizer']} "
        f"seed {summary['seed']} - {summary['steps']} steps, {summary['forwards']} forwards, "
        f"final loss {summary['final_loss']:.4g} (smoothed {summary['final_smoothed_loss']:.4g}), "
        f"{evals}, {summary['wall_time']:.1f} s"
    )


def fail(message: str, exit_code: int) -> None:
    """Report a run that did not finish, on one line. A single run exits with ``exit_code``; in a
    multirun the other runs go on and the multirun exits with 1 at the end."""
    print(message, file=sys.stderr)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RunFailed(f"a run of this multirun did not finish: {message}")
    sys.exit(exit_code)


def invocation(cfg: DictConfig) -> dict[str, str]:
    """Hydra's record of how the run was started (what Hydra writes itself when
    ``hydra.output_subdir`` is set), for the run to write once it holds its directory."""
    hydra_cfg = HydraConfig.instance().cfg
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if SlurmJob.current() is not None:
        # The run answers the time limit's warning itself; outside it the warning is ignored, so
        # that it cannot reach submitit's handler, which would requeue a job whose run finished.
        signal.signal(TIME_LIMIT_SIGNAL, signal.SIG_IGN)
    own_dir = made_for_this_process(run_dir, LAUNCHED)  # before anything is written there
    try:
        summary = run(cfg, run_dir, own_dir=own_dir, invocation=invocation(cfg))
    except (ConfigError, FileNotFoundError) as error:  # a wrong setting, missing data, a refusal
        if is_main_process():
            leave_refusal_note(run_dir, str(error))
        if run_dir.exists():
            return fail(f"error: {error} (run: {run_dir})", exit_status(error))
        remove_empty_parents(run_dir, LAUNCHED)  # the claim removed the run directory it made
        return fail(f"error: {error} (nothing written; {run_dir} was removed)", exit_status(error))
    except TrainingDiverged as error:
        return fail(f"failed: {error} (record: {run_dir})", exit_status(error))
    except Interrupted as error:
        print(f"{'requeued' if error.requeued else 'interrupted'}: {error} (record: {run_dir})", file=sys.stderr)
        sys.exit(exit_status(error))

    except OSError as error:  # the machine's fault (a full disk, a lost mount): one line, no traceback
        return fail(f"failed: {type(error).__name__}: {error} (record: {run_dir})", exit_status(error))
    if is_main_process():  # under torchrun, rank 0 alone reports: it wrote the record
        print(f"record: {run_dir}")
        print(one_line(summary))
        for note in summary.get("notes", []):
            print(f"note: {note}")


def _stopped_before_the_run(signum: int) -> Interrupted:
    return Interrupted(f"stopped by {signal_name(signum)} outside a run (while the config was composed, or "
                       "after the run had ended): no run was cut short", signum)


def launch() -> int:
    """``main()`` with what Hydra would report itself (see experiments/composition.py) and a stop
    signal outside the run (while Hydra composes, or after the outcome) answered in one line."""
    try:
        with stop_signals_raise(_stopped_before_the_run), hydra_failures_raised():
            main()
    except Exception as error:
        stop = _stop_within(error)
        if stop is None:
            return _report(error)
        print(f"interrupted: {stop}", file=sys.stderr)
        return exit_status(stop)
    return 0


def _stop_within(error: BaseException | None) -> Interrupted | None:
    """The stop signal behind ``error``: OmegaConf wraps one that arrives while it resolves."""
    while error is not None and not isinstance(error, Interrupted):
        error = error.__cause__ or error.__context__
    return error


def _report(error: Exception) -> int:
    """Print a failure Hydra raised (see experiments/composition.py) in one line; the exit status."""
    if isinstance(error, RunFailed):  # a multirun with a failed run: as Hydra reports it
        print(error, file=sys.stderr)
        return FAILED
    line = answer(error, [arg for arg in sys.argv[1:] if not arg.startswith("-")])
    if line is None:
        raise error  # not a bad input: a bug, whose traceback is due
    print(f"error: {line}", file=sys.stderr)
    return BAD_INPUT


if __name__ == "__main__":
    sys.exit(launch())
