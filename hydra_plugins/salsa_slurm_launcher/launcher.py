"""Hydra's SLURM launcher (submitit), waiting for its jobs without SLURM's accounting.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``) selects :class:`SlurmLauncher`. It
submits a multirun's jobs as Hydra's submitit launcher does (one job array, every setting of that
plugin), and waits for them differently. submitit decides that a job has ended from ``sacct``,
which fails where accounting is off (as on many small clusters): it then waits for a result file
that a cancelled, killed or out-of-requeues job never writes, or returns while a requeued job
still has work ahead. Here a job has ended when SLURM's queue (``squeue``, slurmctld's own table)
no longer holds it, or when every task has written its result; a requeued job is pending in the
queue, so the wait goes on through requeues. Each run's outcome is printed as its job ends, read
from its run record (``summary.json``), and a job that ended without a result is a failed job of
the multirun, with what its record says.

The class lives in ``hydra_plugins`` because Hydra instantiates launchers from there only.
Without Hydra's submitit plugin (the ``cluster`` extra) this module defines nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from experiments.record import Status, read_summary
from experiments.slurm import queued_jobs
from experiments.sweeps import RunFailed

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
except ImportError:  # no `cluster` extra: Hydra's plugin scan must not fail on every main.py
    submitit_launcher = None

log = logging.getLogger(__name__)
_FIRST_POLL_S, _LAST_POLL_S = 2.0, 30.0  # squeue is asked often at first, then every 30 s


class JobEnded(RunFailed):
    """A job of the multirun ended without a result (cancelled, killed, out of requeues)."""


def poll_interval(waited_s: float) -> float:
    """Seconds until the next look at the queue: 2 s at first (short jobs, tests), growing by a
    second every 10 s waited up to 30 s (a grid of long runs should not flood slurmctld)."""
    return min(_LAST_POLL_S, _FIRST_POLL_S + waited_s / 10)


def outcome_line(run_dir: Path, job_id: str) -> str:
    """One line: what the record of ``run_dir`` says of the run whose job ``job_id`` ended."""
    summary = read_summary(run_dir)
    if summary is None or summary.status is Status.unreadable:
        return f"  {'no record':<11} {run_dir} (SLURM job {job_id}: it ended before the run wrote one)"
    restarts = summary.slurm_restarts
    requeues = f", requeued {restarts} time{'s' * (restarts != 1)}" if restarts else ""
    error = f": {summary.error}" if summary.status is not Status.finished and summary.error else ""
    return f"  {summary.status:<11} {run_dir} (SLURM job {job_id}{requeues}){error}"


if submitit_launcher is not None:

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """Hydra's submitit SLURM launcher whose wait needs ``squeue`` only (see the module)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            assert self.config is not None
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            numbers = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
            run_dirs = [self._run_dir(overrides, number) for overrides, number in zip(job_overrides, numbers)]
            arguments = [(list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
                         for overrides, number in zip(job_overrides, numbers)]
            jobs = self._executor().map_array(self, *zip(*arguments))
            for job, overrides in zip(jobs, job_overrides):
                log.info(f"\tSLURM job {job.job_id}: {' '.join(filter_overrides(overrides))}")
            self._wait(jobs, run_dirs)
            return [self._job_return(job, run_dir, overrides)
                    for job, run_dir, overrides in zip(jobs, run_dirs, job_overrides)]

        def _executor(self) -> Any:
            """submitit's executor with this launcher's settings, translated as Hydra's plugin does:
            the queue-independent keys by name, the others with the ``slurm_`` prefix."""
            import submitit

            params = dict(self.params)
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"),
                                             slurm_max_num_timeout=params.pop("max_num_timeout"))
            common = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{key if key in common else f"{self._EXECUTOR}_{key}": value
                                          for key, value in params.items()})
            return executor

        def _run_dir(self, overrides: Sequence[str], number: int) -> Path:
            """The folder Hydra will give the job (its sweep dir and subdir), resolved as the job
            itself resolves them."""
            assert self.hydra_context is not None and self.config is not None
            job_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(job_config.hydra.job):
                job_config.hydra.job.num = number
            HydraConfig.instance().set_config(job_config)
            try:
                return Path(str(job_config.hydra.sweep.dir)) / str(job_config.hydra.sweep.subdir)
            finally:
                HydraConfig.instance().set_config(self.config)

        def _wait(self, jobs: Sequence[Any], run_dirs: Sequence[Path]) -> None:
            """Until every job has ended, printing each run's outcome as its job ends."""
            waiting = dict(zip(jobs, run_dirs))
            started, unanswered = time.monotonic(), 0
            print(f"waiting for {len(jobs)} SLURM job(s) ({', '.join(job.job_id for job in jobs)})", flush=True)
            while waiting:
                try:
                    queue = queued_jobs(job.job_id for job in waiting)
                    unanswered = 0
                except OSError as error:  # slurmctld restarting: the jobs go on, ask again later
                    unanswered += 1
                    if unanswered in (1, 10):
                        log.warning(f"squeue did not answer ({error}); still waiting")
                    queue = {job.job_id: "UNKNOWN" for job in waiting}
                for job in [job for job in waiting if job.job_id not in queue or _all_results(job)]:
                    print(outcome_line(waiting.pop(job), job.job_id), flush=True)
                if waiting:
                    time.sleep(poll_interval(time.monotonic() - started))

        @staticmethod
        def _job_return(job: Any, run_dir: Path, overrides: Sequence[str]) -> JobReturn:
            """The job's own result (Hydra's record of the run function) when every task wrote
            one; else a failed job that says what the run's record says."""
            if _all_results(job):
                try:
                    return job.results()[0]  # rank 0's
                except Exception as error:  # the job failed outside the run function
                    reason = f"{type(error).__name__}: {error}"
            else:
                reason = "it left the queue without a result (cancelled, killed or out of requeues)"
            return JobReturn(overrides=list(overrides), working_dir=str(run_dir), status=JobStatus.FAILED,
                             _return_value=JobEnded(f"SLURM job {job.job_id} ({run_dir}): {reason}; "
                                                    f"{outcome_line(run_dir, job.job_id).strip()}"))


def _all_results(job: Any) -> bool:
    """Whether every task of ``job`` has written its result file."""
    tasks = [job.task(rank) for rank in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    return all(task.paths.result_pickle.exists() for task in tasks)
