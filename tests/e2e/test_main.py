"""What a refused run leaves and says, and a scheduler that cannot act on a line search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.config import ScheduleConfig
from harness_utils import trainer_for

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python main.py`` as a user runs it, from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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


def test_a_refusal_keeps_parents_that_hold_something(tmp_path):
    earlier = tmp_path / "outputs" / "earlier-run"
    earlier.mkdir(parents=True)
    run_dir = tmp_path / "outputs" / "a" / "b"
    done = main(["trainer.batch_size=0", "trainer.progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 2
    assert f"(nothing written; {run_dir} was removed)" in done.stderr
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["earlier-run"]


def test_a_scheduler_on_a_line_search_warns_once(tmp_path):
    """The runner refuses the combination (optimizer.schedule=null); the trainer built directly warns."""
    with pytest.warns(UserWarning) as caught:
        trainer_for(["optimizer=salsa_class", "trainer.max_steps=4"], tmp_path, schedule=ScheduleConfig())
    messages = [str(w.message) for w in caught if "scheduler" in str(w.message)]
    assert messages == ["LambdaLR has no effect on SaLSA: a line search sets its own step size at every step, "
                        "and a group's lr only mirrors it; drop the scheduler"]
