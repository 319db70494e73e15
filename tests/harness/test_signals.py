"""Stop signals: SIGTERM, SIGINT (Ctrl-C) and SIGHUP (a closed terminal, a dropped ssh
connection) stop a run in every phase: a checkpoint once training began, ``interrupted``, one line,
exit 128 + the signal; outside a run (while Hydra composes) one line too. ``run_multiple.py``
passes a stop signal on to the run in progress once and starts no other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import experiments.runner
from experiments.checkpoint import list_checkpoints
from experiments.sweep_supervisor import Stopping

from harness_utils import CONF, SignalAtEvaluation, main_in_process, trainers_also_call

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
FAST = ["trainer.progress=false", "trainer.device=cpu"]
# SIGTERM while training, to a real process: test_faults.py
STOPS = [signal.SIGINT, signal.SIGHUP]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def temporary_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*.tmp")]


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_while_training_checkpoints_and_exits_with_128_plus_it(signum, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    trainers_also_call(monkeypatch, SignalAtEvaluation(signum, step=2))
    run_dir = tmp_path / "run"
    code = main_in_process([*FAST, "trainer.max_steps=6", "trainer.eval_interval=2", f"hydra.run.dir={run_dir}"])
    lines = capsys.readouterr().err.strip().splitlines()
    name = signal.Signals(signum).name
    assert code == 128 + signum
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: stopped by {name} after step 2")
    assert summary(run_dir)["status"] == "interrupted" and name in summary(run_dir)["error"]
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000000002.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    resumed = main_in_process([*FAST, "trainer.max_steps=6", "trainer.eval_interval=2", "trainer.resume=true",
                               f"hydra.run.dir={run_dir}"])
    assert resumed == 0 and summary(run_dir)["status"] == "finished" and summary(run_dir)["steps"] == 6


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_while_a_fresh_run_builds_leaves_nothing(signum, tmp_path, monkeypatch, capsys):
    original = experiments.runner.build

    def build(cfg, which, **objects):
        if which == "model":
            os.kill(os.getpid(), signum)
        return original(cfg, which, **objects)

    monkeypatch.setattr(experiments.runner, "build", build)
    monkeypatch.chdir(ROOT)
    code = main_in_process([*FAST, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'run'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 128 + signum and len(lines) == 1
    assert f"stopped by {signal.Signals(signum).name} before training began" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_while_hydra_composes_is_one_line(signum, tmp_path, monkeypatch, capsys):
    """The signal arrives while Hydra resolves the run directory (a resolver of this test's sends
    it): no traceback, no folder, 128 + the signal."""
    def send(_: str = "") -> str:
        os.kill(os.getpid(), signum)
        return "x"

    OmegaConf.register_new_resolver("send_stop_signal", send, replace=True)
    monkeypatch.chdir(ROOT)
    code = main_in_process([*FAST, f"hydra.run.dir={tmp_path}/run-${{send_stop_signal:}}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 128 + signum
    assert lines == [f"interrupted: stopped by {signal.Signals(signum).name} outside a run (while the config was "
                     "composed, or after the run had ended): no run was cut short"]
    assert not list(tmp_path.iterdir())


def sigterm_while_building(monkeypatch, group: str) -> None:
    """Deliver a real SIGTERM to this process while the runner builds ``group``."""
    original = experiments.runner.build

    def build(cfg, which, **objects):
        if which == group:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(cfg, which, **objects)

    monkeypatch.setattr(experiments.runner, "build", build)


def test_sigterm_while_a_fresh_run_starts_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    sigterm_while_building(monkeypatch, "model")
    code = main_in_process([*FAST, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 128 + signal.SIGTERM
    assert "interrupted: stopped by SIGTERM before training began" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # it had written nothing, and leaves nothing
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_sigterm_while_a_resume_starts_records_interrupted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    assert main_in_process([*FAST, "trainer.max_steps=4", "trainer.checkpoint_interval=2",
                            f"hydra.run.dir={run_dir}"]) == 0
    # As a kill -9 leaves it: the summary still says running.
    (run_dir / "summary.json").write_text(json.dumps({**summary(run_dir), "status": "running"}))
    checkpoints = {p.name: p.read_bytes() for p in list_checkpoints(run_dir)}
    sigterm_while_building(monkeypatch, "dataset")
    code = main_in_process([*FAST, "trainer.max_steps=8", "trainer.checkpoint_interval=2",
                            "trainer.resume=true", f"hydra.run.dir={run_dir}"])
    capsys.readouterr()
    assert code == 128 + signal.SIGTERM
    assert summary(run_dir)["status"] == "interrupted"
    assert "SIGTERM before training began" in summary(run_dir)["error"]
    assert {p.name: p.read_bytes() for p in list_checkpoints(run_dir)} == checkpoints
    assert not temporary_files(run_dir)


def test_sigterm_during_the_final_evaluation_lets_it_finish(tmp_path, monkeypatch):
    """The last step is taken: the final evaluation and checkpoint complete the run, as an
    evaluation during training completes before the stop."""
    trainers_also_call(monkeypatch, SignalAtEvaluation(signal.SIGTERM, step=5))
    monkeypatch.chdir(ROOT)
    assert main_in_process([*FAST, "trainer.max_steps=5", f"hydra.run.dir={tmp_path}"]) == 0
    assert summary(tmp_path)["status"] == "finished" and "final_val_loss" in summary(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000005.pt"]



# -- run_multiple.py passes a stop signal on once --------------------------------------------------
def test_the_sweep_passes_a_stop_signal_on_once_and_remembers_the_first():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    finished = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    finished.wait()
    stopping = Stopping(running=[sleeper, finished])
    stopping.request(signal.SIGHUP)
    assert sleeper.wait(timeout=10) == -signal.SIGHUP
    stopping.request(signal.SIGINT)  # a second signal: the first one is what the sweep reports
    assert stopping.signum == signal.SIGHUP


@pytest.mark.slow
def test_ctrl_c_to_a_sweep_stops_its_run_after_a_checkpoint_and_exits_130(tmp_path):
    command = [sys.executable, str(ROOT / "run_multiple.py"), "mini", "--columns", "adam", "--tasks", "digits",
               "--seeds", "1", "--root", str(tmp_path), "trainer.max_steps=100000", "trainer.checkpoint_interval=1000"]
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "mini" / "digits-small_cnn-adam-seed0"
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # training is under way
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, out + err
    assert err.strip().splitlines()[-1].startswith("interrupted: stopped by SIGINT")
    assert "Traceback" not in err
    assert summary(run_dir)["status"] == "interrupted" and list_checkpoints(run_dir)
