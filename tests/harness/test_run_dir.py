"""One run directory, one writer: a second process (a second start, a resume of a run that is
still going) refuses at once and touches nothing; a dead process holds nothing; what killed
writes left behind is cleared by the next writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.errors import RunRefused
from experiments.run_dir import LOCK, claimed

from harness_utils import CONF, main_in_process

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
FAST = ["trainer.progress=false", "trainer.device=cpu"]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def record(tmp_path, monkeypatch, capsys) -> Path:
    """A finished two-step run, made through main.py (so with its .hydra/ files)."""
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    assert main_in_process([*FAST, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]) == 0
    capsys.readouterr()
    return run_dir


@pytest.mark.parametrize("extra", [[], ["trainer.resume=true"], ["seed=1"]], ids=["fresh", "resume", "other"])
def test_a_second_writer_is_refused_at_once_and_touches_nothing(record, extra, capsys):
    with claimed(record):  # the first writer, still running
        before = snapshot(record)
        started = time.monotonic()
        code = main_in_process([*FAST, "trainer.max_steps=4", *extra, f"hydra.run.dir={record}"])
        elapsed = time.monotonic() - started
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and elapsed < 10
    assert len(lines) == 1 and f"{record} is being written by process {os.getpid()}" in lines[0]
    assert snapshot(record) == before  # .hydra/, config, metrics, summary, checkpoints: as they were


def test_a_fresh_run_into_a_record_is_refused_and_its_hydra_files_stay(record, capsys):
    def the_record() -> dict:  # the lock file is not part of it: it names the last claimant
        return {name: content for name, content in snapshot(record).items() if name != LOCK}

    before = the_record()
    assert main_in_process([*FAST, "trainer.max_steps=3", f"hydra.run.dir={record}"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run record" in err and "trainer.resume=true" in err
    assert the_record() == before


def test_a_killed_writer_holds_nothing(tmp_path):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child claims the directory and is killed while it holds it
        with claimed(tmp_path):
            os.write(write, b"held")
            time.sleep(60)
        os._exit(0)
    assert os.read(read, 4) == b"held"
    with pytest.raises(RunRefused, match=f"being written by process {pid} "):
        with claimed(tmp_path):
            pass
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with claimed(tmp_path) as claim:  # the kernel dropped the dead process's lock
        assert claim.run_dir == tmp_path
        assert (tmp_path / LOCK).read_text().startswith(f"process {os.getpid()} ")


def test_a_refused_claim_leaves_no_lock_file_where_it_made_one(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(RunRefused), claimed(tmp_path / "old"):
        raise RunRefused("say no")
    assert (tmp_path / "old").is_dir() and not any((tmp_path / "old").iterdir())
    with pytest.raises(RunRefused), claimed(tmp_path / "new"):
        raise RunRefused("say no")
    assert not (tmp_path / "new").exists()  # made by the claim, so removed with it


def test_the_next_writer_clears_what_interrupted_writes_left(record, capsys):
    litter = [record / ".summary.json.tmp", record / ".metrics.jsonl.tmp",
              record / "checkpoints" / ".step_000000004.pt.tmp",
              record / "checkpoints" / ".step_000000004.pt.sha256.tmp",
              record / "checkpoints" / "step_000000004.pt.sha256"]  # a digest whose checkpoint never came
    for path in litter:
        path.write_bytes(b"half")
    assert main_in_process([*FAST, "trainer.max_steps=3", "trainer.resume=true",
                            f"hydra.run.dir={record}"]) == 0
    capsys.readouterr()
    assert not any(path.exists() for path in litter)
    assert json.loads((record / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_two_processes_started_into_one_directory(tmp_path):
    """Two real processes, the second started while the first trains: the second exits with 2,
    and the first's record holds its own rows only, each step once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "main.py", *FAST, "trainer.max_steps=1000000", "trainer.checkpoint_interval=50",
           f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "metrics.jsonl").exists() and first.poll() is None:
        time.sleep(0.05)
    for extra in ([], ["trainer.resume=true"]):
        second = subprocess.run(cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"{tmp_path} is being written by process {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, first.stderr.read()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 50
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
