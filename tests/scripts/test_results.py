"""Which runs make_table.py and plot_curves.py merge: reruns only (configs equal but for what a
resume may change and the seed); runs of one label with other settings get columns of their own."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import make_table  # noqa: E402
from experiments.results import counted_runs, read_run_dirs  # noqa: E402
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


def test_runs_with_other_settings_are_not_reruns_but_columns_of_their_own(tmp_path, capsys):
    with_config(write_run(tmp_path / "fp32", [0.5], mtime=1_000), trainer__precision="fp32", trainer__epochs=5)
    with_config(write_run(tmp_path / "bf16", [0.7], mtime=2_000), trainer__precision="bf16", trainer__epochs=3)
    assert loss_columns(tmp_path) == {"ADAM (trainer.epochs=5, trainer.precision=fp32)": 0.5,
                                      "ADAM (trainer.epochs=3, trainer.precision=bf16)": 0.7}
    err = capsys.readouterr().err
    assert "not reruns: the ADAM runs differ in trainer.epochs, trainer.precision; a column each" in err
    assert "rerun:" not in err


def test_runs_that_differ_only_in_how_they_ran_are_reruns(tmp_path, capsys):
    old = with_config(write_run(tmp_path / "old", [0.5], mtime=1_000), trainer__threads=None,
                      trainer__device="cuda", logger__wandb={"mode": "online"})
    new = with_config(write_run(tmp_path / "new", [0.7], mtime=2_000), trainer__threads=1,
                      trainer__device="cpu", trainer__progress=False)
    assert loss_columns(tmp_path) == {"ADAM": 0.7}  # the latest
    assert f"rerun: {new} replaces {old}" in capsys.readouterr().err


def test_a_label_split_in_one_task_is_split_in_every_task(tmp_path):
    with_config(write_run(tmp_path / "sst2-fp32", [0.5], seed=0), trainer__precision="fp32")
    with_config(write_run(tmp_path / "sst2-bf16", [0.7], seed=0), trainer__precision="bf16")
    with_config(write_run(tmp_path / "mrpc-fp32", [0.9], dataset="mrpc"), trainer__precision="fp32")
    table = make_table.build_table(counted_runs(read_run_dirs([tmp_path])), make_table.metric("loss", "last1pct"))
    assert list(table.mean.columns) == ["ADAM (trainer.precision=fp32)", "ADAM (trainer.precision=bf16)"]
    assert table.mean.loc[("MRPC", "BERT"), "ADAM (trainer.precision=fp32)"] == 0.9
    assert table.n.loc[("MRPC", "BERT"), "ADAM (trainer.precision=bf16)"] == 0
