"""One training run, configured by Hydra (``conf/config.yaml``).

    python main.py                                     # the embedded default, offline on CPU
    python main.py optimizer=salsa dataset=sst2 model=bert trainer=paper_nlp
    python main.py -m optimizer=salsa,adam seed=0,1,2  # a multirun (a failed run ends no other)
    python main.py trainer.resume=true hydra.run.dir=<run dir>   # continue a killed run

Exit status: 0 when every run started finished. A single run that did not exits with 2 (a bad
input or a refused run directory: nothing was written), 3 (training diverged), 143 (SIGTERM: a
checkpoint is written), 140 (under SLURM, the time limit's SIGUSR2: a checkpoint is written and
the job requeued) or 1 (any other failure; the record says ``failed`` with the error). A
multirun goes through all its runs and exits with 1 if any of them did not finish (a stop signal
ends it at once, with 128 + the signal); one whose swept keys do not all reach the runs' folder
names starts nothing and exits with 2 (experiments/sweeps.py).
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
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.config import ConfigError, register_schema
from experiments.distributed import is_main_process
from experiments.run_dir import made_for_this_process, remove_empty_parents
from experiments.runner import run
from experiments.signals import Interrupted
from experiments.slurm import TIME_LIMIT_SIGNAL, SlurmJob
from experiments.trainer import TrainingDiverged

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


class RunFailed(CompactHydraException):
    """A run of a multirun did not finish. Hydra finishes the other runs, then prints this alone
    and exits with 1."""


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
        if hydra_cfg.mode == RunMode.RUN and not str(hydra_cfg.run.dir).strip():
            raise ConfigError("hydra.run.dir is empty: the record would be written into the working "
                              "directory; give a folder, e.g. hydra.run.dir=outputs/<name>")
        summary = run(cfg, run_dir, own_dir=own_dir, invocation=invocation(cfg))
    except (ConfigError, FileNotFoundError) as error:  # a wrong setting, missing data, a refusal
        if run_dir.exists():
            return fail(f"error: {error} (run: {run_dir})", 2)
        remove_empty_parents(run_dir, LAUNCHED)  # the claim removed the run directory it made
        return fail(f"error: {error} (nothing written; {run_dir} was removed)", 2)
    except TrainingDiverged as error:
        return fail(f"failed: {error} (record: {run_dir})", 3)
    except Interrupted as error:
        print(f"{'requeued' if error.requeued else 'interrupted'}: {error} (record: {run_dir})", file=sys.stderr)
        sys.exit(error.exit_code)
    except OSError as error:  # the machine's fault (a full disk, a lost mount): one line, no traceback
        return fail(f"failed: {type(error).__name__}: {error} (record: {run_dir})", 1)
    if is_main_process():  # under torchrun, rank 0 alone reports: it wrote the record
        print(f"record: {run_dir}")
        print(one_line(summary))
        for note in summary.get("notes", []):
            print(f"note: {note}")


if __name__ == "__main__":
    main()
