"""What the harness reads from SLURM's environment and decides from it, without a cluster
(tests/e2e/test_slurm.py runs the same paths on a real one)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from experiments import signals
from experiments.distributed import Launch, is_main_process, launch_of
from experiments.errors import Interrupted
from experiments.runner import _continues_requeued_job, _requeue_if_cut_by_time_limit
from experiments.slurm import SlurmJob, StepTasks, expand_hostlist, step_tasks
from hydra_plugins.salsa_slurm_launcher.launcher import outcome_line, poll_interval

STEP = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize("nodelist, hosts", [
    ("vm", ["vm"]),
    ("gpu[01-03,7],login", ["gpu01", "gpu02", "gpu03", "gpu7", "login"]),
    ("a[1-2]-ib", ["a1-ib", "a2-ib"]),
    ("r[1-2]n[8-9]", ["r1n8", "r1n9", "r2n8", "r2n9"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
])
def test_host_lists_expand_as_scontrol_show_hostnames_does(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


def test_a_task_of_an_srun_step_is_a_rank_whose_rendezvous_is_the_first_host():
    # Port 20000 + 4242 mod 20000: the same on every task of the job, without any exchange.
    assert step_tasks(STEP) == StepTasks(rank=3, world_size=4, local_rank=1, master_addr="gpu07", master_port=24242)
    assert launch_of(STEP) == Launch(3, 4, 1, "tcp://gpu07:24242")
    assert not is_main_process(STEP) and is_main_process({**STEP, "SLURM_PROCID": "0"})
    given = {**STEP, "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500"}
    assert launch_of(given).init_method == "tcp://10.1.2.3:29500"


def test_a_batch_script_or_a_one_task_step_is_a_single_process():
    # The batch script has SLURM_PROCID=0 and the job's task count, but it is no step of several tasks.
    batch_script = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    assert launch_of(batch_script) is None and is_main_process(batch_script)
    assert launch_of({**STEP, "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_torchrun_variables_win_over_slurm_ones():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert launch_of({**STEP, **torchrun}) == Launch(1, 2, 1, None)  # env:// rendezvous


def test_the_job_id_is_the_one_squeue_shows():
    assert SlurmJob.current({}) is None
    assert SlurmJob.current({"SLURM_JOB_ID": "12"}) == SlurmJob("12", 0)
    array_task = {"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "13", "SLURM_ARRAY_TASK_ID": "2",
                  "SLURM_RESTART_COUNT": "3"}
    assert SlurmJob.current(array_task) == SlurmJob("13_2", 3)


def test_the_time_limit_signal_stops_a_run_only_under_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert signals.stop_signals() == (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert signals.stop_signals() == (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
    assert Interrupted("", signal.SIGUSR2).exit_code == 140 and Interrupted("").exit_code == 143


class FakeJob(SlurmJob):
    """A job whose requeue is recorded instead of asked of scontrol (or refused, as scontrol
    refuses a job that is not a batch job)."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__("12", 0)
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "refuse", refuse)

    def requeue(self) -> None:
        self.calls.append("requeue")
        if self.refuse:
            raise OSError("scontrol requeue 12 failed: Only batch jobs are accepted or processed")


def stopped_summary() -> dict:
    return {"status": "interrupted", "error": "Interrupted: stopped by SIGUSR2 after step 9"}


def test_a_time_limit_cut_with_progress_requeues_its_job():
    job, summary, stopped = FakeJob(), stopped_summary(), Interrupted("...", signal.SIGUSR2)
    _requeue_if_cut_by_time_limit(stopped, summary, job, progressed=True)
    assert job.calls == ["requeue"] and summary["status"] == "requeued" and stopped.requeued


def test_a_time_limit_cut_without_progress_ends_the_job_instead_of_requeueing_forever():
    job, summary, stopped = FakeJob(), stopped_summary(), Interrupted("...", signal.SIGUSR2)
    _requeue_if_cut_by_time_limit(stopped, summary, job, progressed=False)
    assert job.calls == [] and summary["status"] == "interrupted" and not stopped.requeued
    assert "not requeued: this attempt made no step" in summary["error"]


def test_a_refused_requeue_leaves_the_run_interrupted_with_the_reason():
    job, summary, stopped = FakeJob(refuse=True), stopped_summary(), Interrupted("...", signal.SIGUSR2)
    _requeue_if_cut_by_time_limit(stopped, summary, job, progressed=True)
    assert summary["status"] == "interrupted" and "Only batch jobs" in summary["error"] and not stopped.requeued


def test_a_sigterm_is_recorded_as_slurm_s_own_requeue_pre_emption_or_cancel():
    job, summary = FakeJob(), stopped_summary()
    _requeue_if_cut_by_time_limit(Interrupted("...", signal.SIGTERM), summary, job, progressed=True)
    assert job.calls == [] and summary["status"] == "interrupted"
    assert "pre-empted, requeued or cancelled" in summary["error"]


def test_only_a_restart_of_the_job_that_wrote_the_record_continues_it(tmp_path: Path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "requeued", "slurm_job_id": "13_2"}))
    assert _continues_requeued_job(tmp_path, SlurmJob("13_2", 1))
    assert not _continues_requeued_job(tmp_path, SlurmJob("13_2", 0))  # a first attempt: a fresh start
    assert not _continues_requeued_job(tmp_path, SlurmJob("14_0", 1))  # another job's record
    assert not _continues_requeued_job(tmp_path, None)
    assert not _continues_requeued_job(tmp_path / "missing", SlurmJob("13_2", 1))


def test_the_wait_polls_often_at_first_and_at_most_every_30_s():
    assert poll_interval(0) == 2.0 and poll_interval(100) == 12.0 and poll_interval(3600) == 30.0


def test_the_outcome_line_says_what_the_record_says(tmp_path: Path):
    assert "no record" in outcome_line(tmp_path, "5_0")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "slurm_restarts": 2}))
    assert outcome_line(tmp_path, "5_0") == f"  finished    {tmp_path} (SLURM job 5_0, requeued 2 times)"
    (tmp_path / "summary.json").write_text(json.dumps({"status": "failed", "error": "ValueError: x"}))
    assert outcome_line(tmp_path, "5_1") == f"  failed      {tmp_path} (SLURM job 5_1): ValueError: x"
