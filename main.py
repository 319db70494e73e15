"""One training run, configured by Hydra (``conf/config.yaml``).

    python main.py                                     # the embedded default, offline on CPU
    python main.py optimizer=salsa dataset=sst2 model=bert trainer=paper_nlp
    python main.py -m optimizer=salsa,adam seed=0,1,2  # a multirun (a failed run ends no other)
    python main.py trainer.resume=true hydra.run.dir=<run dir>   # continue a killed run
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.config import ConfigError, register_schema
from experiments.distributed import is_main_process
from experiments.runner import run
from experiments.trainer import Interrupted, TrainingDiverged

register_schema()


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
    """Report a failed run. A single run exits with ``exit_code``; in a multirun the others go on
    (Hydra would otherwise end the sweep) and the failure stays in the run's record."""
    print(message, file=sys.stderr)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except (ConfigError, FileNotFoundError) as error:  # a wrong setting or missing data/model
        return fail(f"error: {error} (run: {run_dir})", 2)
    except TrainingDiverged as error:
        return fail(f"failed: {error} (record: {run_dir})", 3)
    except Interrupted as error:
        print(f"interrupted: {error} (record: {run_dir})", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    if is_main_process():  # under torchrun, rank 0 alone reports: it wrote the record
        print(f"record: {run_dir}")
        print(one_line(summary))


if __name__ == "__main__":
    main()
