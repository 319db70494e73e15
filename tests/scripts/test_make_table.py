"""scripts/make_table.py on hand-made run records whose numbers are known."""

from __future__ import annotations

import json
import math
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import make_table  # noqa: E402
from experiments.results import counted_runs, read_run_dirs  # noqa: E402


def write_run(
    run_dir: Path,
    losses: Sequence[float | str] = (1.0,),
    *,
    dataset: str = "sst2",
    model: str = "bert",
    label: str = "ADAM",
    seed: int = 0,
    status: str = "finished",
    summary: dict | None = None,
    evals: Sequence[dict] = (),
    step_sizes: Sequence[float] | None = None,
    mtime: float | None = None,
) -> Path:
    """A run record as experiments/runner.py writes it: one training row per loss (non-finite
    ones as the strings "nan"/"inf"), then the evaluation rows, then a torn line."""
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "optimizer": {"name": label.lower(), "label": label},
              "model": {"name": model}, "dataset": {"name": dataset}, "trainer": {"loss_smoothing": 0.98}}
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
    sizes = step_sizes if step_sizes is not None else [0.1] * len(losses)
    rows = [{"step": i + 1, "epoch": 0, "loss": loss, "smoothed_loss": loss, "step_size": size,
             "forwards": i + 1, "time": 0.01 * i} for i, (loss, size) in enumerate(zip(losses, sizes))]
    lines = [json.dumps(row) for row in [*rows, *evals]] + ['{"step": 99, "loss": 0.']  # killed mid-write
    (run_dir / "metrics.jsonl").write_text("\n".join(lines))
    record = {"status": status, "optimizer": label.lower(), "label": label, "model": model,
              "dataset": dataset, "seed": seed, **(summary or {})}
    (run_dir / "summary.json").write_text(json.dumps(record))
    if mtime is not None:
        os.utime(run_dir / "summary.json", (mtime, mtime))
    return run_dir


def markdown_rows(markdown: str, title: str) -> dict[str, list[str]]:
    """The Markdown table under ``## title``: its first cell -> the other cells, per row."""
    block = markdown.split(f"## {title}\n")[1].split("\n## ")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")][2:]  # below the header rule
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in rows}


def table_of(root: Path, key: str = "loss", smoothing: str = "last1pct") -> make_table.Table:
    return make_table.build_table(counted_runs(read_run_dirs([root])), make_table.metric(key, smoothing))


def test_final_loss_is_the_mean_of_the_last_percent_of_rows(tmp_path):
    write_run(tmp_path / "a", [float(i) for i in range(1, 251)], label="ADAM")  # last 2 of 250: 249, 250
    write_run(tmp_path / "b", [5.0] * 49 + [7.0], label="SGD")  # 50 rows: at least one row, the last
    write_run(tmp_path / "c", [3.0] * 198 + [4.0, "nan"], label="SGD-SLS")  # skipped step left out
    table = table_of(tmp_path)
    assert table.mean.loc[("SST2", "BERT"), "ADAM"] == pytest.approx(249.5)
    assert table.mean.loc[("SST2", "BERT"), "SGD"] == pytest.approx(7.0)
    assert table.mean.loc[("SST2", "BERT"), "SGD-SLS"] == pytest.approx(4.0)


def test_ema_smoothing_reads_the_summary(tmp_path):
    write_run(tmp_path / "a", [9.0], summary={"final_smoothed_loss": 0.25})
    assert table_of(tmp_path, smoothing="ema").mean.iloc[0, 0] == 0.25


def authors_exp_smoothing(values: list[float], beta: float = 0.99) -> list[float]:
    """``exp_smoothing`` of the authors' plot.py (SLSforDifferentLayers at 4311114), restated: the
    first value as it is, then beta * previous + (1 - beta) * value."""
    smoothed = [values[0]]
    for value in values[1:]:
        smoothed.append(beta * smoothed[-1] + (1 - beta) * value)
    return smoothed


def test_authors_smoothing_is_their_ema_of_the_seed_mean(tmp_path):
    runs = [[4.0, 2.0, 1.0] * 40, [2.0, 1.0, 3.0] * 40]
    for seed, losses in enumerate(runs):
        write_run(tmp_path / str(seed), [*losses[:-1], "nan", losses[-1]], seed=seed)  # a skipped step
    mean_curve = [(a + b) / 2 for a, b in zip(*runs)]  # plot.py smooths the mean over seeds
    expected = authors_exp_smoothing(mean_curve)[-1]
    assert table_of(tmp_path, smoothing="authors").mean.iloc[0, 0] == pytest.approx(expected, rel=1e-12)


def test_cell_is_mean_and_sample_std_over_seeds(tmp_path):
    for seed, loss in enumerate([1.0, 2.0, 4.0]):
        write_run(tmp_path / f"s{seed}", [10.0, loss], seed=seed)
    table = table_of(tmp_path)
    assert table.mean.iloc[0, 0] == pytest.approx(7 / 3)
    # ((1 - 7/3)^2 + (2 - 7/3)^2 + (4 - 7/3)^2) / (3 - 1) = 7/3
    assert table.std.iloc[0, 0] == pytest.approx(math.sqrt(7 / 3))
    assert table.n.iloc[0, 0] == 3


def write_two_tasks(root: Path) -> None:
    """SST2 and MRPC; L4Adam only on SST2. Written out of order on purpose."""
    cells = {
        ("sst2", "L4Adam"): 0.05, ("sst2", "ADAM-SaLSa"): 0.1, ("sst2", "SGD"): 0.4, ("sst2", "ADAM"): 0.1,
        ("mrpc", "ADAM"): 1.0, ("mrpc", "SGD"): 0.9, ("mrpc", "ADAM-SaLSa"): 0.4,
    }
    for i, ((dataset, label), loss) in enumerate(cells.items()):
        write_run(root / f"run{i}", [loss], dataset=dataset, label=label)


def test_order_log_average_and_ranks_with_ties(tmp_path):
    write_two_tasks(tmp_path)
    table = table_of(tmp_path)
    assert list(table.mean.columns) == ["ADAM", "SGD", "ADAM-SaLSa", "L4Adam"]  # paper's order, then others
    assert list(table.mean.index) == [("MRPC", "BERT"), ("SST2", "BERT")]  # the paper's row order
    summary = make_table.summary_rows(table.mean, higher_is_better=False)
    log_average = summary.loc[("log average", "")]
    assert log_average["ADAM"] == pytest.approx(math.sqrt(0.1 * 1.0))
    assert log_average["SGD"] == pytest.approx(math.sqrt(0.4 * 0.9))
    assert log_average["ADAM-SaLSa"] == pytest.approx(math.sqrt(0.1 * 0.4))
    assert math.isnan(log_average["L4Adam"])  # a task is missing
    # Ranked among the complete columns: SST2 ADAM = SaLSa -> 1.5 each, SGD 3; MRPC SaLSa 1, SGD 2, ADAM 3.
    rank = summary.loc[("average rank", "")]
    assert rank[["ADAM", "SGD", "ADAM-SaLSa"]].tolist() == [2.25, 2.5, 1.25]
    assert math.isnan(rank["L4Adam"])


def test_markdown_bold_on_best_and_missing_cells_shown_missing(tmp_path):
    write_two_tasks(tmp_path)
    markdown = make_table.to_markdown(make_table.table_section(table_of(tmp_path), ""))
    rows = markdown_rows(markdown, "Final training loss")
    assert rows["MRPC"] == ["BERT", "1", "0.9", "**0.4**", "–"]  # never 0, never filled
    assert rows["SST2"] == ["BERT", "0.1", "0.4", "0.1", "**0.05**"]
    assert rows["log average"][4] == "–"
    assert rows["average rank"] == ["", "2.25", "2.5", "**1.25**", "–"]


def test_accuracy_bold_is_the_highest_and_absent_metric_is_missing(tmp_path):
    write_run(tmp_path / "a", label="ADAM", summary={"final_val_accuracy": 0.9})
    write_run(tmp_path / "b", label="SGD", summary={"final_val_accuracy": 0.8})
    write_run(tmp_path / "c", label="SGD", dataset="openwebtext", model="gpt2")  # no accuracy: LM
    markdown = make_table.to_markdown(make_table.table_section(table_of(tmp_path, "accuracy"), ""))
    rows = markdown_rows(markdown, "Final validation accuracy")
    assert rows["SST2"] == ["BERT", "**0.9**", "0.8"]
    assert "GPT-2" not in rows  # a row of dashes says nothing: a language model has no accuracy


def test_summary_rows_are_left_out_when_no_optimizer_has_every_task(tmp_path):
    write_run(tmp_path / "a", [0.5], label="ADAM")
    write_run(tmp_path / "b", [0.7], label="SGD", dataset="mrpc")
    markdown = make_table.to_markdown(make_table.table_section(table_of(tmp_path), ""))
    rows = markdown_rows(markdown, "Final training loss")
    assert set(rows) == {"MRPC", "SST2"}
    assert "No log average or average rank: no optimizer has a value for every task." in markdown


def test_unfinished_runs_do_not_count_and_are_listed(tmp_path, capsys):
    write_run(tmp_path / "done", [1.0], seed=0)
    write_run(tmp_path / "crashed", [100.0], seed=1, status="failed")
    write_run(tmp_path / "going", [100.0], seed=2, status="running")
    table = table_of(tmp_path)
    assert table.mean.iloc[0, 0] == 1.0 and table.n.iloc[0, 0] == 1
    err = capsys.readouterr().err
    assert f"skipped (failed): {tmp_path / 'crashed'}" in err and "skipped (running)" in err


def test_rerun_takes_the_latest_finished(tmp_path, capsys):
    write_run(tmp_path / "b_old", [5.0], mtime=1_000)  # sorts after the new one by path
    write_run(tmp_path / "a_new", [2.0], mtime=2_000)
    write_run(tmp_path / "c_newest_failed", [9.0], mtime=3_000, status="failed")
    table = table_of(tmp_path)
    assert table.mean.iloc[0, 0] == 2.0 and table.n.iloc[0, 0] == 1
    assert f"rerun: {tmp_path / 'a_new'} replaces {tmp_path / 'b_old'}" in capsys.readouterr().err


def test_paper_numbers_side_by_side_equal_the_csv(tmp_path):
    paper = pd.read_csv(ROOT / "results" / "paper" / "table_final_loss.csv")
    assert paper.shape == (8, 8)
    sst2 = paper.set_index("task").loc["SST2"]
    write_run(tmp_path / "a", [0.5], label="ADAM")
    write_run(tmp_path / "b", [0.25], label="ADAM-SaLSa")
    write_run(tmp_path / "c", [0.3], label="L4Adam")  # not in the paper: left out of the comparison
    out = tmp_path / "out"
    assert make_table.main([str(tmp_path), "--paper", "--out", str(out)]) == 0
    markdown = (out / "table.md").read_text()
    compared = markdown_rows(markdown, "Final training loss: ours / paper")
    assert compared["SST2"] == ["BERT", f"0.5 / {sst2['ADAM']}", f"0.25 / {sst2['ADAM-SaLSa']}"]  # no L4Adam
    assert set(compared) == {"SST2"}  # one task: summary rows would only repeat its row
    printed = markdown_rows(markdown, "The paper's summary rows")
    assert printed["log average (printed)"][:2] == ["0.0355", "0.0930"]  # as printed
    assert printed["average rank (printed)"] == ["2.75", "4.625", "3.125", "5.5", "1.25", "3.75"]
    assert printed["average rank (recomputed)"] == ["2.75", "4.875", "3.125", "5.375", "1.25", "3.625"]


def test_outputs_markdown_latex_png(tmp_path, capsys):
    write_two_tasks(tmp_path / "runs")
    out = tmp_path / "out"
    assert make_table.main([str(tmp_path / "runs"), "--metrics", "loss,time", "--out", str(out)]) == 0
    markdown = (out / "table.md").read_text()
    captured = capsys.readouterr()
    assert markdown in captured.out
    assert "## Final training loss" in markdown
    # No run recorded its training time: no table of dashes, a line saying so.
    assert "## Training time (s)" not in markdown
    assert "no run recorded the training time (s): that table is left out" in captured.err
    assert "last 1 % of logged training rows" in markdown  # the smoothing is documented
    latex = (out / "table.tex").read_text()
    assert r"\begin{tabular}" in latex and r"\textbf{0.05}" in latex and r"1 \%" in latex
    png = (out / "table.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_no_finished_runs_exits_2_naming_the_directory(tmp_path, capsys):
    write_run(tmp_path / "a", status="interrupted")
    with pytest.raises(SystemExit) as exit_info:
        make_table.main([str(tmp_path), str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"no finished runs in {tmp_path}, {tmp_path / 'nope'} (no such directory)" in err


class FakeWandbRun:
    def __init__(self, run_id: str, label: str, seed: int, losses: list[float], status: str, created: str):
        self.id, self.state, self.created_at = run_id, "finished", created
        self.config = {"seed": seed, "optimizer": {"label": label}, "model": {"name": "bert"},
                       "dataset": {"name": "mrpc"}}
        self.summary = {"status": status, "final_smoothed_loss": 0.5}
        self._losses = losses

    def scan_history(self, keys: list[str]):
        assert keys == ["loss"]
        return ({"_step": i + 1, "loss": loss} for i, loss in enumerate(self._losses))


def fake_wandb(runs: list[FakeWandbRun] | Exception) -> types.ModuleType:
    class Api:
        def runs(self, path: str):
            assert path == "me/salsa"
            if isinstance(runs, Exception):
                raise runs
            return iter(runs)

    return types.SimpleNamespace(Api=Api)


def test_wandb_source_through_a_fake_api(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb([
        FakeWandbRun("r1", "SGD", 0, [9.0, 1.0], "finished", "2024-01-01T00:00:00Z"),
        FakeWandbRun("r2", "SGD", 1, [9.0, 3.0], "finished", "2024-01-02T00:00:00Z"),
        FakeWandbRun("r3", "SGD", 1, [9.0, 5.0], "finished", "2024-01-03T00:00:00Z"),  # rerun of seed 1
        FakeWandbRun("r4", "SGD", 2, [9.0, 100.0], "failed", "2024-01-04T00:00:00Z"),
    ]))
    assert make_table.main(["--wandb", "me/salsa", "--out", str(tmp_path)]) == 0
    rows = markdown_rows((tmp_path / "table.md").read_text(), "Final training loss")
    assert rows["MRPC"] == ["BERT", f"**3 ± {math.sqrt(8):.2g}**"]  # seeds 0 and 1 (its rerun): 1 and 5


@pytest.mark.parametrize("module, message", [
    (None, "--wandb needs the wandb package"),
    (fake_wandb(ConnectionError("no route to host")), "could not read the wandb project me/salsa: no route"),
])
def test_wandb_errors_are_clear(module, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", module)  # None: `import wandb` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        make_table.main(["--wandb", "me/salsa", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.newcomer
def test_make_table_names_every_file_it_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import make_table
    from test_make_table import write_run

    write_run(tmp_path / "runs" / "a", [0.5], label="ADAM")
    monkeypatch.chdir(tmp_path)  # the default --out is outputs/table/ of the working directory
    assert make_table.main([str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    written = sorted(line.removeprefix("wrote ") for line in captured.err.splitlines() if line.startswith("wrote "))
    expected = sorted(str(tmp_path / "outputs" / "table" / name) for name in ("table.md", "table.png", "table.tex"))
    assert written == expected
    assert all(Path(path).is_file() for path in written)
    assert captured.out.startswith("## Final training loss")  # stdout stays the Markdown
