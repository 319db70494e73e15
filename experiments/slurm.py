"""What a run needs to know of the SLURM job it runs in, and the one thing it asks SLURM to do.

SLURM describes a job to its processes through the environment: ``SLURM_JOB_ID`` (and, for a
task of a job array, ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID``: submitit submits arrays),
``SLURM_RESTART_COUNT`` (how often the job was requeued), and for every task of an ``srun`` job
step ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_STEP_NODELIST``.

Two signals reach a job before SLURM ends it: ``SIGUSR2`` at ``sbatch --signal=USR2@<seconds>``
before the time limit (submitit asks for it with ``signal_delay_s``), and ``SIGTERM`` when the job
is pre-empted, requeued (``scontrol requeue``) or cancelled, ``KillWait`` seconds (30 by default)
before ``SIGKILL``. The harness answers both by finishing the step, writing a checkpoint and ending
(see ``experiments/runner.py``); for the time limit it also requeues the job, which SLURM does
itself for the others.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# What `sbatch --signal=USR2@<seconds>` sends before the time limit (submitit's signal_delay_s).
TIME_LIMIT_SIGNAL = signal.SIGUSR2
# A rendezvous port per job: ranks of one job agree on it without talking, and two jobs on one
# node differ unless their ids are 20000 apart. MASTER_PORT in the environment wins.
_PORT_BASE, _PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job this process runs in."""

    job_id: str  # as squeue and scontrol name it: "<array job id>_<task id>" for an array task
    restarts: int  # SLURM_RESTART_COUNT: 0 for the first attempt, n after n requeues

    @classmethod
    def current(cls, environ: Mapping[str, str] = os.environ) -> SlurmJob | None:
        """The job of this process, or None outside SLURM."""
        if "SLURM_JOB_ID" not in environ:
            return None
        if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
        else:
            job_id = environ["SLURM_JOB_ID"]
        return cls(job_id, int(environ.get("SLURM_RESTART_COUNT") or 0))

    def requeue(self) -> None:
        """Put this job back into the queue. SLURM ends the running attempt (SIGTERM, SIGKILL
        after KillWait) and later starts the same batch script again, ``SLURM_RESTART_COUNT`` one
        higher. ``OSError`` when ``scontrol`` refuses or is missing."""
        try:
            done = subprocess.run(["scontrol", "requeue", self.job_id], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OSError(f"scontrol requeue {self.job_id}: {error}") from error
        if done.returncode:
            raise OSError(f"scontrol requeue {self.job_id} failed: {done.stderr.strip() or done.returncode}")


@dataclass(frozen=True)
class StepTasks:
    """This process's place among the tasks of an ``srun`` job step of several tasks."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str  # the first host of the step: rank 0 runs there
    master_port: int


def step_tasks(environ: Mapping[str, str] = os.environ) -> StepTasks | None:
    """The tasks of the job step this process belongs to, or None for a step of one task and for
    the batch script itself (which has ``SLURM_PROCID=0`` but is no step of several tasks)."""
    world_size = int(environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if world_size <= 1:
        return None
    hosts = expand_hostlist(environ["SLURM_STEP_NODELIST"])
    job_number = int(environ.get("SLURM_ARRAY_JOB_ID") or environ["SLURM_JOB_ID"])
    port = int(environ.get("MASTER_PORT") or _PORT_BASE + job_number % _PORT_SPAN)
    return StepTasks(int(environ["SLURM_PROCID"]), world_size, int(environ["SLURM_LOCALID"]),
                     environ.get("MASTER_ADDR") or hosts[0], port)


_HOSTLIST_ITEM = re.compile(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*")
_RANGE = re.compile(r"\[([^\]]*)\]")


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's compressed host list as host names, in order (what ``scontrol show hostnames``
    prints): ``gpu[01-03,7],login`` -> ``gpu01 gpu02 gpu03 gpu7 login``; zero padding is kept."""
    return [host for item in _HOSTLIST_ITEM.findall(nodelist) for host in _expand(item)]


def _expand(item: str) -> list[str]:
    match = _RANGE.search(item)
    if match is None:
        return [item]
    head, tails = item[: match.start()], _expand(item[match.end():])
    hosts = []
    for part in match.group(1).split(","):
        low, _, high = part.partition("-")
        numbers = [low] if not high else [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
        hosts += [head + number + tail for number in numbers for tail in tails]
    return hosts


def queued_jobs(job_ids: Iterable[str]) -> dict[str, str]:
    """The jobs of ``job_ids`` that SLURM still holds (pending, running, requeued, completing...),
    with their states, from ``squeue``: it reads slurmctld's own table, so unlike ``sacct`` it
    needs no accounting database. A job that has ended is absent. ``OSError`` when ``squeue``
    does not answer (slurmctld down or restarting): the caller asks again later."""
    ids = list(job_ids)
    if not ids:
        return {}
    command = ["squeue", "--noheader", "--array", "--jobs", ",".join(ids), "--format", "%i %T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OSError(f"squeue: {error}") from error
    if done.returncode:
        if "Invalid job id" in done.stderr:  # every one of them has left slurmctld's table
            return {}
        raise OSError(f"squeue failed: {done.stderr.strip() or done.returncode}")
    states = dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())
    return {job_id: states[job_id].strip() for job_id in ids if job_id in states}
