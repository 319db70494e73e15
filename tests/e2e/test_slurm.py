"""The harness on a real SLURM cluster (``scripts/local_slurm.sh``: one node, accounting off).

A run cut by its time limit or pre-empted loses nothing and ends as the uninterrupted run ends,
bit for bit; the multirun waits for it through every requeue; a job of two tasks is one DDP run
equal to torchrun's; a ``run_multiple.py`` grid finishes and its table reads. Marked ``slow``
(minutes: the time limit is SLURM's smallest useful one) and ``slurm``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import list_checkpoints
from ranks import free_port, loopback_env
from slurm_cluster import Cluster, watching

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "main.py"
ONE_THREAD = ["trainer.threads=1", "trainer.progress=false", "trainer.device=cpu"]
ON_CPU_NODE = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.mem_gb=1"]
TIME_LIMIT = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=75"]
# The warning comes at most 45 s into a job (slurmctld looks every 30 s, so possibly earlier): the
# long run trains for about twice that on this machine, so that every machine cuts it at least once.
LONG_RUN_TRAINING_S = 90.0
RUN_NAME = "digits-small_cnn-salsa-seed0"
TIMEOUT_S = 900


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(run_dir)[-1], weights_only=True)["model"]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Final loss, step count and every parameter equal to the bit."""
    got, want = summary(run_dir), summary(reference)
    assert (got["status"], got["steps"], got["final_loss"]) == ("finished", want["steps"], want["final_loss"])
    params, reference_params = final_parameters(run_dir), final_parameters(reference)
    assert params.keys() == reference_params.keys()
    assert all(torch.equal(params[name], reference_params[name]) for name in params)


def logged_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


def multirun(cluster: Cluster, sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """``main.py -m`` on the cluster, started from ``sweep_dir``'s parent; output in ``sweep_dir``.log."""
    command = [sys.executable, str(MAIN), "-m", *ON_CPU_NODE, f"hydra.sweep.dir={sweep_dir}", *overrides]
    log = open(f"{sweep_dir}.log", "w")
    return subprocess.Popen(command, cwd=sweep_dir.parent, env={**cluster.env, **loopback_env()},
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, sweep_dir: Path) -> str:
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the multirun did not return within {TIMEOUT_S} s; see {sweep_dir}.log")
    return Path(f"{sweep_dir}.log").read_text()


def run_locally(run_dir: Path, *overrides: str) -> dict:
    done = subprocess.run([sys.executable, str(MAIN), *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return summary(run_dir)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The default task on one thread for as many epochs as take LONG_RUN_TRAINING_S here, timed
    from a 20-epoch run (a fixed count was cut on a slow machine and not on a fast one)."""
    timed = run_locally(tmp_path_factory.mktemp("calibration") / "run", *ONE_THREAD, "trainer.epochs=20")
    seconds_per_epoch = (timed["train_time"] + timed["timing"]["eval"]) / timed["epochs"]
    return [*ONE_THREAD, f"trainer.epochs={max(300, math.ceil(LONG_RUN_TRAINING_S / seconds_per_epoch))}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, long_run: list[str]) -> Path:
    """The long run, once, locally and without a cut."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_locally(run_dir, *long_run)
    return run_dir


def test_a_time_limit_cuts_the_run_and_its_requeued_job_ends_it_bit_identically(
        slurm_cluster: Cluster, long_run: list[str], uninterrupted: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / RUN_NAME
    with watching(slurm_cluster, run_dir) as watch:
        # No trainer.resume and no periodic checkpoints: the cut's own checkpoint carries the run.
        output = finish(multirun(slurm_cluster, sweep_dir, *long_run, *TIME_LIMIT), sweep_dir)
        returned = summary(run_dir), slurm_cluster.queued()  # the moment the launcher returned
    record, queue = returned
    job_id = record["slurm_job_id"]
    assert record["status"] == "finished" and job_id not in queue, output
    assert record["slurm_restarts"] >= 1 and "requeued" in watch.statuses, (watch, output)
    assert "failed" not in watch.statuses
    assert slurm_cluster.job_state(job_id) == "COMPLETED"
    assert_same_run(run_dir, uninterrupted)
    # Each cut checkpointed the step it stopped after: no step was trained twice or lost.
    assert logged_steps(run_dir) == list(range(1, record["steps"] + 1))
    assert len(list_checkpoints(run_dir)) == min(1 + record["slurm_restarts"], 2)  # keep_checkpoints: 2
    assert f"finished    {run_dir} (SLURM job {job_id}, requeued" in output


def test_a_preempted_job_continues_from_the_checkpoint_of_its_sigterm(
        slurm_cluster: Cluster, long_run: list[str], uninterrupted: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / RUN_NAME
    with watching(slurm_cluster, run_dir) as watch:
        process = multirun(slurm_cluster, sweep_dir, *long_run)  # no time limit to speak of
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.jsonl").exists() or len(logged_steps(run_dir)) < 2000:
            assert process.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.5)
        job_id = summary(run_dir)["slurm_job_id"]
        slurm_cluster.run("scontrol", "requeue", job_id)  # what a pre-emption in REQUEUE mode does
        output = finish(process, sweep_dir)
    record = summary(run_dir)
    assert record["status"] == "finished" and record["slurm_restarts"] == 1, output
    assert watch.statuses[:2] == ["running", "interrupted"] and "failed" not in watch.statuses, watch
    assert slurm_cluster.job_state(job_id) == "COMPLETED"
    assert_same_run(run_dir, uninterrupted)
    assert logged_steps(run_dir) == list(range(1, record["steps"] + 1))


def test_a_cancelled_job_ends_the_wait_and_the_multirun_fails(slurm_cluster: Cluster, long_run: list[str],
                                                               tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / RUN_NAME
    process = multirun(slurm_cluster, sweep_dir, *long_run)
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.5)
    job_id = summary(run_dir)["slurm_job_id"]
    slurm_cluster.run("scancel", job_id)
    output = finish(process, sweep_dir)
    assert process.returncode == 1, output
    record = summary(run_dir)
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]
    assert re.search(rf"interrupted +{re.escape(str(run_dir))} \(SLURM job {job_id}\)", output), output
    assert list_checkpoints(run_dir)  # its SIGTERM checkpoint: a later resume loses nothing


def test_a_job_of_two_tasks_is_one_ddp_run_equal_to_torchrun(slurm_cluster: Cluster, tmp_path: Path):
    short = [*ONE_THREAD, "trainer.epochs=2"]
    sweep_dir = tmp_path / "sweep"
    output = finish(multirun(slurm_cluster, sweep_dir, *short, "hydra.launcher.tasks_per_node=2"), sweep_dir)
    run_dir = sweep_dir / RUN_NAME
    record = summary(run_dir)
    assert (record["status"], record["world_size"]) == ("finished", 2), output
    assert [line.strip().split()[0] for line in output.splitlines() if str(run_dir) in line
            and line.strip().startswith(("finished", "failed"))] == ["finished"]  # one record, one line

    torchrun_dir = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(MAIN), *short, f"hydra.run.dir={torchrun_dir}"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **loopback_env()}, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert_same_run(run_dir, torchrun_dir)


def test_a_run_multiple_grid_on_slurm_finishes_and_its_table_reads_it(slurm_cluster: Cluster, tmp_path: Path):
    root = tmp_path / "sweeps"
    launcher = [o for o in ON_CPU_NODE if o != "hydra/launcher=slurm"]
    done = subprocess.run(
        [sys.executable, str(REPO / "run_multiple.py"), "mini", "--tasks", "digits", "--columns", "salsa,adam",
         "--seeds", "1", "--launcher", "submitit_slurm", "--root", str(root), "trainer.device=cpu", *launcher],
        cwd=tmp_path, env=slurm_cluster.env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 launched runs finished." in done.stdout
    for optimizer in ("salsa", "adam"):
        assert summary(root / "mini" / f"digits-small_cnn-{optimizer}-seed0")["status"] == "finished"
    table = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), str(root),
                            "--out", str(tmp_path / "table")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert table.returncode == 0, table.stderr
    text = "\n".join(path.read_text() for path in (tmp_path / "table").rglob("*.md"))
    assert "ADAM-SaLSa" in text and "ADAM" in text and "digits" in text, text
