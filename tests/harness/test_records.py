"""The run record: no hang and no lost or falsified record.

A resume that cannot continue the same data stream (its place lies past the end of the epoch as
the epoch is now, or the stream it counted in changed) is refused with the reason and leaves the
record as it was (the loop itself always makes progress or stops: ``test_training.py``). A resume without its recorded
config reads the second copy or refuses; a fresh run goes only into a new, empty or own
directory; temporary files are cleared only once the directory is known to be ours; rows lost
from ``metrics.jsonl`` and lines in it that are not rows are said in the summary and on the
console."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.checkpoint import PAYLOAD_KEYS, list_checkpoints, load_checkpoint, save_checkpoint

from harness_utils import CONF, main_in_process, working_copy

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
BASE = ["trainer.progress=false", "trainer.device=cpu", "trainer.max_steps=4", "trainer.checkpoint_interval=2"]
ROWS_BEFORE_STEP_4 = 4  # one training row per step; digits' epoch is longer, so no evaluation yet


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("recorded") / "run"
    assert main_in_process([*BASE, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture
def record(recorded, tmp_path, monkeypatch) -> Path:
    return working_copy(recorded, tmp_path, monkeypatch)


def resume(record: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    code = main_in_process([*BASE, "trainer.max_steps=6", "trainer.resume=true", *extra, f"hydra.run.dir={record}"])
    return code, capsys.readouterr().err.strip().splitlines()


def rewrite_last_checkpoint(record: Path, change) -> None:
    """Alter the trainer state of the newest checkpoint and save it as the harness does (with a
    matching digest): a checkpoint taken in another data stream, or by an older harness."""
    path = list_checkpoints(record)[-1]
    payload = load_checkpoint(path, PAYLOAD_KEYS)
    change(payload["trainer"])
    save_checkpoint(record, payload["trainer"]["step"], payload, keep=10)


# -- hangs: the data stream ----------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "named"), [
    ("train_examples", 2000, "train_examples 2000 -> "),  # the dataset file was shortened
    ("ranks", 1 + 1, "ranks 2 -> 1"),  # taken under torchrun with two processes
    ("examples_per_step", 64, "examples_per_step 64 -> 32"),  # the batch size changed behind the config's back
])
def test_a_resume_in_another_data_stream_is_refused_and_the_record_stays(record, key, value, named, capsys):
    rewrite_last_checkpoint(record, lambda state: state["stream"].__setitem__(key, value))
    before = snapshot(record)
    code, lines = resume(record, capsys)
    assert code == 2 and len(lines) == 1
    assert "trainer.resume=true refused" in lines[0] and named in lines[0] and "another data stream" in lines[0]
    assert snapshot(record) == before  # the summary is put back as it was; metrics and checkpoints untouched


@pytest.mark.parametrize("batch_in_epoch", [45, 46, 10_000])
def test_a_checkpoint_whose_place_lies_past_the_epoch_is_refused_not_spun_on(record, batch_in_epoch, capsys):
    """A checkpoint of an older harness (no stream recorded) whose place in the epoch does not
    exist now: the loop would take no step and never look at a stop signal (digits' training
    split is 1438 examples: 45 steps of 32)."""
    def older(state):
        del state["stream"]
        state["batch_in_epoch"] = batch_in_epoch

    rewrite_last_checkpoint(record, older)
    before = snapshot(record)
    code, lines = resume(record, capsys)
    assert code == 2 and len(lines) == 1
    assert f"lies at step {batch_in_epoch} of epoch 0, past the end of an epoch as it is now (45 steps)" in lines[0]
    assert snapshot(record) == before


# -- the recorded config --------------------------------------------------------------------------
@pytest.mark.parametrize("change", [["optimizer=adam"], ["seed=1"], ["trainer.batch_size=16"]])
def test_without_config_yaml_the_resume_is_checked_against_the_hydra_copy(record, change, capsys):
    (record / "config.yaml").unlink()
    before = snapshot(record)
    code, lines = resume(record, capsys, *change)
    assert code == 2 and len(lines) == 1 and "trainer.resume=true refused" in lines[0]
    assert snapshot(record) == before  # the finished record is not overwritten with `failed`
    assert summary(record)["status"] == "finished"


def test_without_either_copy_of_the_config_the_resume_is_refused(record, capsys):
    (record / "config.yaml").unlink()
    (record / ".hydra" / "config.yaml").unlink()
    before = snapshot(record)
    code, lines = resume(record, capsys)
    assert code == 2 and len(lines) == 1
    assert "holds a record but neither config.yaml nor .hydra/config.yaml" in lines[0]
    assert snapshot(record) == before


def test_without_config_yaml_a_resume_with_the_same_config_continues(record, capsys):
    (record / "config.yaml").unlink()
    code, _ = resume(record, capsys)
    assert code == 0 and summary(record)["status"] == "finished" and summary(record)["steps"] == 6
    assert (record / "config.yaml").exists()


# -- whose directory ------------------------------------------------------------------------------
@pytest.mark.parametrize("resume_flag", [[], ["trainer.resume=true"]])
def test_a_directory_of_the_user_s_files_is_refused_and_left_alone(tmp_path, resume_flag, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / ".draft.tmp").write_text("not a harness temporary file")
    (mine / "data").mkdir()
    before = snapshot(mine)
    code = main_in_process([*BASE, *resume_flag, f"hydra.run.dir={mine}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "holds files that are not a run record (data, notes.txt)" in lines[0]
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == [".draft.tmp", "data", "notes.txt"]


def test_the_working_directory_as_the_run_dir_is_refused_when_it_holds_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("a project")
    code = main_in_process([*BASE, "hydra.run.dir=."])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "holds files that are not a run record (README.md)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_a_refused_run_leaves_the_temporary_files_of_a_record(record, capsys):
    """A fresh run into a record is refused: what the record's killed writer left is not the
    refused run's to clear (the next writer that may write there clears it)."""
    leftover = record / ".summary.json.tmp"
    leftover.write_text("half")
    code = main_in_process([*BASE, f"hydra.run.dir={record}"])
    assert code == 2 and "already holds a run record" in capsys.readouterr().err
    assert leftover.read_text() == "half"
    assert resume(record, capsys)[0] == 0 and not leftover.exists()  # the resume, once checked, clears it


# -- rows of metrics.jsonl --------------------------------------------------------------------------
def cut_record(record: Path, keep_lines: int | None) -> None:
    """A record whose run was killed after the checkpoint of step 4 (its summary says running),
    with its metrics cut to ``keep_lines`` lines (None: deleted)."""
    (record / "summary.json").write_text(json.dumps({**summary(record), "status": "running"}))
    metrics = record / "metrics.jsonl"
    if keep_lines is None:
        metrics.unlink()
    else:
        metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:keep_lines]))


@pytest.mark.parametrize(("keep_lines", "missing"), [(None, 4), (0, 4), (1, 3), (3, 1)])
def test_rows_missing_before_the_checkpoint_are_said_in_the_summary_and_on_the_console(
        record, keep_lines, missing, capsys):
    assert list_checkpoints(record)[-1].name == "step_000000004.pt"  # the resume continues from step 4
    cut_record(record, keep_lines)
    code, lines = resume(record, capsys)
    assert code == 0
    assert summary(record)["metrics_missing_rows"] == missing
    assert any(f"holds {ROWS_BEFORE_STEP_4 - missing} of the {ROWS_BEFORE_STEP_4} rows logged before the "
               "checkpoint of step 4" in line for line in lines)


def test_a_whole_metrics_file_gives_no_warning(record, capsys):
    cut_record(record, keep_lines=100)
    code, lines = resume(record, capsys)
    assert code == 0 and "metrics_missing_rows" not in summary(record)
    assert not [line for line in lines if line.startswith("warning:")]


@pytest.mark.parametrize("line", [
    b"[1, 2, 3]",  # JSON, not an object
    b'{"step": Infinity, "loss": 1.0}',  # an infinite step
    b'{"step": NaN, "loss": 1.0}',
    b'{"step": 1.5, "loss": 1.0}',
    b'{"step": "3", "loss": 1.0}',
    b'{"step": true, "loss": 1.0}',
    b'{"loss": 1.0}',  # no step
    b"\xff\xfe not UTF-8",
    b'{"step": 2, "loss": 1.',  # the torn last line of a killed run
])
def test_a_line_that_is_not_a_row_is_skipped_on_resume_and_said(record, line, capsys):
    cut_record(record, keep_lines=100)
    with open(record / "metrics.jsonl", "ab") as f:
        f.write(line + b"\n")
    code, lines = resume(record, capsys)
    assert code == 0
    note = summary(record)["metrics_skipped"]
    assert "skipped 1 line that is not a metrics row" in note
    assert any(note in text for text in lines)
    steps = [json.loads(text)["step"] for text in (record / "metrics.jsonl").read_text().splitlines()]
    assert steps[:ROWS_BEFORE_STEP_4] == [1, 2, 3, 4] and all(isinstance(s, int) and math.isfinite(s) for s in steps)
    assert "metrics_missing_rows" not in summary(record)


def test_the_checkpoint_counts_the_rows_logged_before_it(recorded):
    """The run checkpointed at step 4 and then made its final evaluation (a fifth row, after it)."""
    counted = load_checkpoint(list_checkpoints(recorded)[-1], PAYLOAD_KEYS)["trainer"]["logged_rows"]
    rows = [json.loads(line) for line in (recorded / "metrics.jsonl").read_text().splitlines()]
    assert [("loss" in row, "val_loss" in row) for row in rows] == [(True, False)] * 4 + [(False, True)]
    assert counted == ROWS_BEFORE_STEP_4
