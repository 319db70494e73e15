"""A default that fits a busy machine: the slowness note of a CPU run (experiments/speed.py).
(Timed checkpoints, trainer.checkpoint_minutes: ``test_training.py``; a resume without a
checkpoint: ``test_checkpoints.py``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments import speed
from harness_utils import run_config

pytestmark = pytest.mark.newcomer

ROOT = Path(__file__).resolve().parents[2]


def test_the_probe_times_each_thread_count_with_that_many_threads():
    seen = []

    def work():
        seen.append(torch.get_num_threads())
        time.sleep(0.004 if torch.get_num_threads() > 1 else 0.001)

    before = torch.get_num_threads()
    timings = speed.probe(work, (2, 1), repeats=3)
    assert seen == [2, 1, 2, 1, 2, 1]  # taking turns
    assert torch.get_num_threads() == before
    assert 0.004 <= timings[2] < 0.04 and 0.001 <= timings[1] < 0.004


@pytest.mark.parametrize("used, cores, other", [(2, 2, 1), (8, 16, 1), (1, 4, 4), (1, 1, None)])
def test_the_thread_count_compared_with(used, cores, other):
    assert speed.other_thread_count(used, cores) == other


def test_a_step_far_slower_than_a_forward_and_backward_is_noted_with_the_faster_thread_count():
    # 20 ms a step where a forward and backward takes 1 ms with one thread (10 ms with two), and
    # the line search made 2 forwards a step: it needed at most 2 ms, a tenth of what it took.
    note = speed.slowness_note(0.020, 2.0, {2: 0.010, 1: 0.001}, used=2)
    assert note is not None
    assert "20 ms a step, 10x the 2 ms" in note
    assert "(a forward and backward: 1 ms with 1 thread, 10 ms with 2 threads)" in note
    assert note.endswith("trainer.threads=1 would have been faster")
    # The run's own thread count was the faster: the cores were busy with other work.
    assert speed.slowness_note(0.020, 1.0, {1: 0.002, 4: 0.003}, used=1).endswith(
        "other work kept the cores busy")
    # Within FAR times the need: no note.
    assert speed.slowness_note(0.005, 2.0, {2: 0.010, 1: 0.001}, used=2) is None


def test_short_runs_and_long_steps_are_not_probed():
    def work():
        raise AssertionError("not probed")

    assert speed.check(work, train_seconds=speed.MIN_TRAIN_SECONDS / 2, steps=100, forwards=100, used=2,
                       cores=2) is None
    assert speed.check(work, train_seconds=100.0, steps=10, forwards=10, used=2, cores=2) is None  # 10 s a step
    assert speed.check(work, train_seconds=100.0, steps=1000, forwards=1000, used=1, cores=1) is None


SLOW_RUN = """
import runpy, sys
from experiments import speed
speed.MIN_TRAIN_SECONDS = 0.0  # probe even this short run
# The probe's measurement, made independent of this machine: a forward and backward takes 1
# microsecond at any thread count, far less than any real step.
speed.probe = lambda work, counts, repeats=speed.REPEATS: {{t: 1e-6 for t in counts}}
speed.available_cores = lambda: 2
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_slow_run_says_so_in_its_summary_and_on_the_console(tmp_path):
    """A run whose steps took far longer than a forward and backward of its model: the summary
    carries the note and the timings, and main.py prints the note."""
    argv = [str(ROOT / "main.py"), "trainer.max_steps=5", "trainer.progress=false", "trainer.device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SLOW_RUN.format(argv=argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["threads"] == 1
    assert summary["forward_backward_seconds"] == {"1": 1e-6, "2": 1e-6}
    (note,) = summary["notes"]
    assert note.endswith("other work kept the cores busy")  # one thread was as fast as two
    assert f"note: {note}" in done.stdout.splitlines()


def test_a_fast_run_gets_no_note(tmp_path):
    summary = run_config(["trainer.max_steps=5"], tmp_path / "run")
    assert "notes" not in summary  # too short to probe
