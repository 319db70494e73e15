"""Sweeps never overwrite: a multirun whose swept keys do not all reach the runs' folder names
refuses before it starts; a multirun with a failed run exits with 1 after all its runs (the one
rule for handled and unhandled failures); run_multiple.py goes on past a run whose log it cannot
open and says why a resume failed."""

from __future__ import annotations

import json
import sys

import pytest

import run_multiple
from experiments import sweep_supervisor
from experiments.record import REFUSALS_ENV, list_checkpoints, read_refusal_note
from experiments.sweeps import keys_missing_from, swept_keys

from harness_utils import CONF, main_in_process

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
FAST = ["trainer.progress=false", "trainer.device=cpu", "trainer.max_steps=1"]
NAMES = "${dataset.name}-${model.name}-${optimizer.name}-seed${seed}"  # conf/config.yaml's sweep subdir


def test_a_sweep_over_a_key_missing_from_the_folder_names_refuses_before_starting(tmp_path, monkeypatch,
                                                                                    capsys):
    monkeypatch.chdir(ROOT)
    sweep = tmp_path / "sweep"
    code = main_in_process(["-m", *FAST, "optimizer=adam", "optimizer.build.lr=0.1,0.05",
                            f"hydra.sweep.dir={sweep}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("error: main.py -m sweeps optimizer.build.lr, which the runs' folder names "
            f"(hydra.sweep.subdir={NAMES}) do not contain") in err
    assert f"hydra.sweep.subdir={NAMES}-lr${{optimizer.build.lr}}" in err
    assert not sweep.exists()  # nothing started, nothing written


def test_the_suggested_folder_name_gives_each_run_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    subdir = NAMES + "-lr${optimizer.build.lr}"
    argv = ["-m", *FAST, "optimizer=adam", "optimizer.build.lr=0.1,0.05", f"hydra.sweep.dir={tmp_path}",
            f"hydra.sweep.subdir={subdir}"]
    assert main_in_process(argv) == 0
    capsys.readouterr()
    folders = sorted(p.parent.name for p in tmp_path.glob("*/summary.json"))
    assert folders == ["digits-small_cnn-adam-seed0-lr0.05", "digits-small_cnn-adam-seed0-lr0.1"]


@pytest.mark.parametrize(("overrides", "subdir", "missing"), [
    (["optimizer=salsa,adam", "seed=0,1"], "${optimizer.name}-seed${seed}", []),
    (["optimizer=salsa,adam"], "${hydra:runtime.choices.optimizer}", []),
    (["trainer=default,paper_nlp"], "${optimizer.name}-seed${seed}", ["trainer"]),
    (["optimizer.build.lr=0.1,0.2", "seed=range(3)"], "${optimizer.name}-seed${seed}",
     ["optimizer.build.lr"]),
    (["optimizer.build.lr=0.1,0.2"], "${hydra.job.override_dirname}", []),
    (["optimizer.build.lr=0.1,0.2"], "run${hydra.job.num}", []),
    (["+trainer.max_steps=1,2", "optimizer.build.lr=3"], "${optimizer.build.lr}", ["trainer.max_steps"]),
    (["hydra.launcher.n_jobs=1,2", "seed=0,1"], "seed${seed}", []),  # Hydra's own settings make no run
])
def test_which_swept_keys_reach_the_folder_name(overrides, subdir, missing):
    assert keys_missing_from(subdir, swept_keys(overrides), excluded_from_dirname=[]) == missing


def test_a_key_left_out_of_override_dirname_does_not_reach_it():
    missing = keys_missing_from("${hydra.job.override_dirname}", ["seed"], excluded_from_dirname=["seed"])
    assert missing == ["seed"]


def test_a_multirun_with_a_failed_run_finishes_the_others_and_exits_with_1(tmp_path, monkeypatch, capsys):
    """The handled failure (a config error in seed 0's run) and an unhandled one end the same
    way: every run is tried, the multirun exits with 1."""
    monkeypatch.chdir(ROOT)
    code = main_in_process(["-m", *FAST, "seed=0,1", "trainer.batch_size=${seed}",
                            f"hydra.sweep.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: trainer.batch_size must be positive, got 0" in err
    assert "a run of this multirun did not finish" in err
    finished = json.loads((tmp_path / "digits-small_cnn-salsa-seed1" / "summary.json").read_text())
    assert finished["status"] == "finished"
    assert not (tmp_path / "digits-small_cnn-salsa-seed0").exists()  # refused: its folder is removed


def test_a_refused_run_leaves_a_note_only_where_a_supervisor_asks(tmp_path, monkeypatch, capsys):
    """Its run folder is left as it was either way (here: never made); the note says why."""
    monkeypatch.chdir(ROOT)
    run_dir, notes = tmp_path / "run", tmp_path / "refusals"
    argv = [*FAST, "trainer.batch_size=0", f"hydra.run.dir={run_dir}"]
    monkeypatch.delenv(REFUSALS_ENV, raising=False)
    assert main_in_process(argv) == 2
    assert not run_dir.exists() and not notes.exists()
    monkeypatch.setenv(REFUSALS_ENV, str(notes))
    assert main_in_process(argv) == 2
    assert not run_dir.exists()
    assert read_refusal_note(notes, run_dir) == "trainer.batch_size must be positive, got 0"
    assert "error: trainer.batch_size must be positive, got 0" in capsys.readouterr().err


def fake_main(behaviour: dict[str, str]):
    """A ``command`` of the sweep's supervisor whose runs act as ``main.py`` would, in a fraction of
    a second: ``finish`` writes a finished record, anything else is the reason the run is refused,
    said on stderr and noted where the supervisor asks (experiments/record.py)."""

    def command(multirun, grid_dir, options):
        script = "import json, pathlib, sys\nfrom experiments.record import leave_refusal_note\ncode = 0\n"
        for run in multirun.runs:
            what = behaviour.get(run.name, "finish")
            if what == "finish":
                script += (f"p = pathlib.Path({str(run.run_dir)!r}); p.mkdir(parents=True, exist_ok=True)\n"
                           "(p / 'summary.json').write_text(json.dumps({'status': 'finished'}))\n")
            else:
                script += (f"print({f'error: {what} (run: {run.run_dir})'!r}, file=sys.stderr); code = 2\n"
                           f"leave_refusal_note(pathlib.Path({str(run.run_dir)!r}), {what!r})\n")
        return [sys.executable, "-c", script + "sys.exit(code)"]

    return command


def test_a_run_whose_log_cannot_be_opened_is_listed_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_supervisor, "command", fake_main({}))
    grid = tmp_path / "mini"
    blocked = grid / "digits-small_cnn-adam-seed0"
    (blocked / "run.log").mkdir(parents=True)  # a folder where the log should be: it does not open
    argv = ["mini", "--tasks", "digits", "--columns", "adam,sgd", "--seeds", "2", "--root", str(tmp_path)]
    assert run_multiple.main(argv) == 1
    out = capsys.readouterr().out
    assert "3 of 4 launched runs finished." in out
    failures = out.split("did not finish")[1]
    assert (f"{blocked.name}: not launched: its log {blocked / 'run.log'} cannot be opened "
            "(IsADirectoryError") in failures
    assert {p.parent.name for p in grid.glob("*/summary.json")} == {
        "digits-small_cnn-adam-seed1", "digits-small_cnn-sgd-seed0", "digits-small_cnn-sgd-seed1"}


def test_a_refused_resume_is_reported_with_its_cause_not_the_old_status(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "mini"
    run_dir = grid / "digits-small_cnn-adam-seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000000002.pt").write_bytes(b"damaged")
    old = {"status": "interrupted", "error": "Interrupted: SIGTERM"}
    (run_dir / "summary.json").write_text(json.dumps(old))
    refusal = "trainer.resume=true refused: none of the 1 checkpoints is usable"
    monkeypatch.setattr(sweep_supervisor, "command", fake_main({run_dir.name: refusal}))
    argv = ["mini", "--tasks", "digits", "--columns", "adam", "--seeds", "1", "--root", str(tmp_path)]
    assert run_multiple.main(argv) == 1
    out = capsys.readouterr().out
    assert "not run" in out.split("did not finish")[0]
    assert (f"{run_dir.name}: its record is as before (status interrupted): refused: {refusal}"
            in out.split("did not finish")[1])
    # The note is where the supervisor asked for it, and the record is as it was.
    assert (grid / "refusals" / f"{run_dir.name}.json").exists()
    assert json.loads((run_dir / "summary.json").read_text()) == old


@pytest.mark.slow
def test_a_refused_resume_through_the_real_main(tmp_path, capsys):
    """The same through main.py: its refusal note is what run_multiple.py reports."""
    grid = tmp_path / "mini"
    run_dir = grid / "digits-small_cnn-adam-seed0"
    argv = ["mini", "--tasks", "digits", "--columns", "adam", "--seeds", "1", "--root", str(tmp_path),
            "trainer.max_steps=4", "trainer.checkpoint_interval=2"]
    assert run_multiple.main(argv) == 0
    for checkpoint in list_checkpoints(run_dir):
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    capsys.readouterr()
    assert run_multiple.main(argv) == 1
    failures = capsys.readouterr().out.split("did not finish")[1]
    assert (f"{run_dir.name}: its record is as before (status interrupted): "
            "refused: trainer.resume=true refused: none of the 2 checkpoints") in failures
