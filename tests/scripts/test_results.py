"""Which runs make_table.py and plot_curves.py merge: reruns only (configs equal but for what a
resume may change and the seed); runs of one label with other settings get columns of their own; what they cannot read in a
record is skipped and said."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import make_table  # noqa: E402
from experiments.grid import Task  # noqa: E402
from experiments.results import RecordedRun, counted_runs, read_metrics_file, read_run_dirs  # noqa: E402
from test_make_table import write_run  # noqa: E402


def with_config(run_dir: Path, **keys) -> Path:
    """Set dotted ``keys`` (``trainer__precision="bf16"``) in the run's config.yaml."""
    config = OmegaConf.load(run_dir / "config.yaml")
    for key, value in keys.items():
        OmegaConf.update(config, key.replace("__", "."), value)
    OmegaConf.save(config, run_dir / "config.yaml")
    return run_dir


def loss_columns(root: Path) -> dict[str, float]:
    table = make_table.build_table(counted_runs(read_run_dirs([root])), make_table.metric("loss", "last1pct"))
    return {column: float(table.mean.loc[("SST2", "BERT"), column]) for column in table.mean.columns}


@pytest.mark.newcomer
def test_runs_with_other_settings_are_not_reruns_but_columns_of_their_own(tmp_path, capsys):
    with_config(write_run(tmp_path / "fp32", [0.5], mtime=1_000), trainer__precision="fp32", trainer__epochs=5)
    with_config(write_run(tmp_path / "bf16", [0.7], mtime=2_000), trainer__precision="bf16", trainer__epochs=3)
    assert loss_columns(tmp_path) == {"ADAM (trainer.epochs=5, trainer.precision=fp32)": 0.5,
                                      "ADAM (trainer.epochs=3, trainer.precision=bf16)": 0.7}
    err = capsys.readouterr().err
    assert "not reruns: the ADAM runs differ in trainer.epochs, trainer.precision; a column each" in err
    assert "rerun:" not in err


@pytest.mark.newcomer
def test_runs_that_differ_only_in_how_they_ran_are_reruns(tmp_path, capsys):
    old = with_config(write_run(tmp_path / "old", [0.5], mtime=1_000), trainer__threads=None,
                      trainer__device="cuda", logger__wandb={"mode": "online"})
    new = with_config(write_run(tmp_path / "new", [0.7], mtime=2_000), trainer__threads=1,
                      trainer__device="cpu", trainer__progress=False)
    assert loss_columns(tmp_path) == {"ADAM": 0.7}  # the latest
    assert f"rerun: {new} replaces {old}" in capsys.readouterr().err


@pytest.mark.newcomer
def test_a_label_split_in_one_task_is_split_in_every_task(tmp_path):
    with_config(write_run(tmp_path / "sst2-fp32", [0.5], seed=0), trainer__precision="fp32")
    with_config(write_run(tmp_path / "sst2-bf16", [0.7], seed=0), trainer__precision="bf16")
    with_config(write_run(tmp_path / "mrpc-fp32", [0.9], dataset="mrpc"), trainer__precision="fp32")
    table = make_table.build_table(counted_runs(read_run_dirs([tmp_path])), make_table.metric("loss", "last1pct"))
    assert list(table.mean.columns) == ["ADAM (trainer.precision=fp32)", "ADAM (trainer.precision=bf16)"]
    assert table.mean.loc[("MRPC", "BERT"), "ADAM (trainer.precision=fp32)"] == 0.9
    assert table.n.loc[("MRPC", "BERT"), "ADAM (trainer.precision=bf16)"] == 0


@pytest.mark.reliability
def test_the_scripts_skip_lines_that_are_not_rows_and_say_so(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(b'{"step": 1, "loss": 2.0}\n[1]\n{"step": Infinity, "loss": 1.0}\n\xff\xfe\n'
                        b'{"step": 2, "loss": "nan"}\n{"step": 3, "loss": "fast"}\n{"step": 3, "val_loss": 1.5}\n')
    train, evals = read_metrics_file(metrics)
    err = capsys.readouterr().err
    assert list(train["step"]) == [1, 2] and list(evals["step"]) == [3]
    assert "skipped 3 lines that are not a metrics row" in err
    assert "a row with a value that is not a number (step 3)" in err


@pytest.mark.reliability
@pytest.mark.parametrize("value", ["fast", [1, 2], {"a": 1}, True])
def test_a_summary_value_that_is_not_a_number_is_left_out_and_said(value, capsys):
    run = RecordedRun(source="somewhere/run", task=Task("digits", "small_cnn"), label="ADAM", seed=0,
                      status="finished", summary={"final_val_accuracy": value, "final_loss": "nan"},
                      recorded_at=0.0, read_metrics=lambda: (None, None))
    assert run.final("final_val_accuracy") is None
    assert run.final("final_loss") != run.final("final_loss")  # "nan" is a number the record writes
    assert "summary.json's final_val_accuracy is not a number" in capsys.readouterr().err
