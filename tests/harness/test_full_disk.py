"""A full disk anywhere in a run: the summary ends ``failed`` with the reason, no temporary file
stays, and the checkpoints written before are intact (a stop signal in each phase of a run:
``test_signals.py``)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import experiments.record
import experiments.runner
from experiments.checkpoint import list_checkpoints, load_checkpoint
from experiments.record import RunRecord

from harness_utils import CONF, main_in_process

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
FAST = ["trainer.progress=false", "trainer.device=cpu"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def temporary_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*.tmp")]


def test_a_full_disk_at_the_end_still_leaves_a_true_summary(tmp_path, monkeypatch):
    """No room for a new summary file: the old one is overwritten in place with the status and
    the error first, and what else fits."""
    record = RunRecord(tmp_path)
    record.write_summary({"status": "running", "run_dir": str(tmp_path), "optimizer": "salsa", "seed": 0,
                          "versions": {"torch": torch.__version__}})

    def no_space(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(experiments.record, "write_atomically", no_space)
    error = "OSError: [Errno 28] No space left on device" + " (and a long explanation)" * 20
    record.finish({"status": "failed", "run_dir": str(tmp_path), "error": error, "steps": 7,
                   "timing": {"data": 1.0, "step": 2.0}})
    written = summary(tmp_path)
    assert written["status"] == "failed" and written["error"].startswith("OSError: [Errno 28] No space left")
    assert not temporary_files(tmp_path)


class FullAfter:
    """A file that takes ``room`` more bytes, then fails as a full disk does."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def test_a_disk_that_fills_during_a_checkpoint_fails_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    """The checkpoint of step 4 meets a full disk half-way (torch then reports the OSError as a
    RuntimeError of its zip writer): the run ends `failed` with the OSError, in one line, the
    half-written file is gone and the checkpoint of step 2 is intact."""
    real_save = torch.save

    def save(payload, f, *args, **kwargs):
        full = isinstance(payload, dict) and payload.get("trainer", {}).get("step") == 4
        return real_save(payload, FullAfter(f, 20_000) if full else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.chdir(ROOT)
    code = main_in_process([*FAST, "trainer.max_steps=6", "trainer.checkpoint_interval=2",
                            f"hydra.run.dir={tmp_path}"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"failed: OSError: [Errno 28] No space left on device (record: {tmp_path})"]
    assert summary(tmp_path)["status"] == "failed" and summary(tmp_path)["steps"] == 4
    assert summary(tmp_path)["error"] == "OSError: [Errno 28] No space left on device"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt"]
    assert load_checkpoint(list_checkpoints(tmp_path)[0])["trainer"]["step"] == 2
    assert not temporary_files(tmp_path)


def unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not unshare_available(), reason="needs unprivileged user and mount namespaces")
def test_a_real_full_disk_fails_the_run_in_one_line_and_keeps_its_checkpoints(tmp_path):
    """A 240 KiB tmpfs fills at the third checkpoint (83 KB each): the run ends `failed` with the
    reason, its first two checkpoints load, and no temporary file stays."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    run_dir = disk / "run"
    main = [sys.executable, "main.py", *FAST, "trainer.max_steps=40", "trainer.checkpoint_interval=2",
            f"hydra.run.dir={run_dir}"]
    # The tmpfs lives in a mount namespace of its own, gone with it: copy the record out first.
    script = (f"mount -t tmpfs -o size=240k tmpfs {disk} && {subprocess.list2cmdline(main)}; "
              f"code=$?; cp -a {run_dir} {out}/run; exit $code")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    record = out / "run"
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"failed: OSError: [Errno 28] No space left on device (record: {run_dir})"]
    assert summary(record)["status"] == "failed" and "No space left on device" in summary(record)["error"]
    assert [p.name for p in list_checkpoints(record)] == ["step_000000002.pt", "step_000000004.pt"]
    assert all(load_checkpoint(p)["trainer"]["step"] in (2, 4) for p in list_checkpoints(record))
    assert not temporary_files(record)
