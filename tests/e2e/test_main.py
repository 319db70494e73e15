"""``main.py`` as a user runs it: the default run's record and summary line, and what a refused
run leaves and says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python main.py`` as a user runs it, from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.newcomer
def test_a_refused_default_run_leaves_no_folder_and_names_none(tmp_path):
    """Hydra makes outputs/<name>/<time>/ for the default run; refused, the run removes both, and
    its message does not name a directory that no longer exists as the place of its run."""
    (tmp_path / "notes.txt").write_text("mine")
    done = main(["trainer.batch_size=0", "trainer.progress=false"], tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("error: trainer.batch_size must be positive, got 0 "
                          f"(nothing written; {tmp_path}/outputs/digits-small_cnn-salsa-seed0/")
    assert err.endswith(" was removed)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no outputs/ left behind


@pytest.mark.newcomer
def test_a_refusal_keeps_parents_that_hold_something(tmp_path):
    earlier = tmp_path / "outputs" / "earlier-run"
    earlier.mkdir(parents=True)
    run_dir = tmp_path / "outputs" / "a" / "b"
    done = main(["trainer.batch_size=0", "trainer.progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 2
    assert f"(nothing written; {run_dir} was removed)" in done.stderr
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["earlier-run"]


def test_main_default_run_prints_its_record_and_a_summary_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "main.py", "trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == f"record: {tmp_path}"
    assert lines[-1].startswith("finished: digits/small_cnn/salsa seed 0 - 45 steps")
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_main_embedded_default_within_two_minutes(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_val_accuracy"] > 0.9
