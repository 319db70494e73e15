"""scripts/plot_curves.py on hand-made run records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import plot_curves  # noqa: E402
from experiments.results import read_run_dirs  # noqa: E402
from test_make_table import write_run  # noqa: E402  (one writer of the record format for both)


def accuracy_rows(values: list[float]) -> list[dict]:
    return [{"step": 2 * (i + 1), "epoch": i + 1, "val_loss": 1.0, "val_accuracy": value}
            for i, value in enumerate(values)]


def write_runs(root):
    """ADAM with two seeds, SGD with one, on SST2."""
    write_run(root / "adam0", [1.0, 3.0, 2.0, 2.0], label="ADAM", seed=0, evals=accuracy_rows([0.5, 0.7]),
              step_sizes=[0.0, 0.1, 0.2, 0.1])
    write_run(root / "adam1", [3.0, 5.0, 2.0, 2.0], label="ADAM", seed=1, evals=accuracy_rows([0.7, 0.9]),
              step_sizes=[0.0, 0.3, 0.2, 0.1])
    write_run(root / "sgd0", [2.0, 2.0, "nan", 2.0], label="SGD", seed=0, evals=accuracy_rows([0.6, 0.6]))


def figure(root, beta=0.5):
    runs = read_run_dirs([root])
    colors = plot_curves.label_colors([run.label for run in runs])
    return plot_curves.task_figure(runs[0].task, runs, colors, beta)


def test_one_line_per_optimizer_and_bands_where_two_seeds(tmp_path):
    write_runs(tmp_path)
    loss, accuracy, step_size = figure(tmp_path).axes
    for ax in (loss, accuracy, step_size):
        assert [line.get_label() for line in ax.get_lines()] == ["ADAM", "SGD"]
        assert len(ax.collections) == 1  # the band of ADAM only: SGD has one seed
    assert [ax.get_yscale() for ax in (loss, accuracy, step_size)] == ["log", "linear", "log"]


def test_a_log_band_spans_the_seeds_from_lowest_to_highest(tmp_path):
    write_runs(tmp_path)
    band = figure(tmp_path, beta=0.0).axes[0].collections[0].get_paths()[0].vertices
    # ADAM's seeds at steps 1..4: (1, 3), (3, 5), (2, 2), (2, 2); mean - std would be 0 at step 1.
    assert band[:, 1].min() == pytest.approx(1.0) and band[:, 1].max() == pytest.approx(5.0)


def test_loss_line_is_the_mean_of_bias_corrected_emas(tmp_path):
    write_runs(tmp_path)
    adam, sgd = figure(tmp_path, beta=0.5).axes[0].get_lines()
    # beta 0.5, seed 0: 1, (0.5*1 + 3)/1.5 = 7/3; seed 1: 3, (0.5*3 + 5)/1.5 = 13/3.
    assert np.allclose(adam.get_ydata()[:2], [2.0, 10 / 3])
    assert list(sgd.get_xdata()) == [1, 2, 4] and np.allclose(sgd.get_ydata(), 2.0)  # the NaN step dropped


def test_accuracy_and_step_size_panels(tmp_path):
    write_runs(tmp_path)
    _, accuracy, step_size = figure(tmp_path).axes
    adam = accuracy.get_lines()[0]
    assert list(adam.get_xdata()) == [2, 4] and np.allclose(adam.get_ydata(), [0.6, 0.8])
    band = accuracy.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.6 - np.std([0.5, 0.7], ddof=1))  # step 2: 0.6 ± 0.14
    sizes = step_size.get_lines()[0].get_ydata()
    assert np.isnan(sizes[0]) and np.allclose(sizes[1:], [0.2, 0.2, 0.1])  # 0 cannot sit on a log axis


def test_language_models_plot_perplexity(tmp_path):
    write_run(tmp_path / "lm", [4.0, 3.0], dataset="openwebtext", model="gpt2",
              evals=[{"step": 2, "epoch": 0, "val_loss": 3.0, "val_perplexity": 20.0}])
    panel = figure(tmp_path).axes[1]
    assert panel.get_ylabel() == "val perplexity" and panel.get_yscale() == "log"


def test_main_writes_png_and_pdf_per_task(tmp_path, capsys):
    write_runs(tmp_path / "runs")
    write_run(tmp_path / "runs" / "mrpc", [1.0, 0.5], dataset="mrpc", label="SGD")
    out = tmp_path / "plots"
    assert plot_curves.main([str(tmp_path / "runs"), "--out", str(out), "--pdf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "mrpc_bert_curves.pdf", "mrpc_bert_curves.png", "sst2_bert_curves.pdf", "sst2_bert_curves.png"]
    assert (out / "sst2_bert_curves.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "sst2_bert_curves.pdf").read_bytes().startswith(b"%PDF")
    assert str(out / "mrpc_bert_curves.png") in capsys.readouterr().out


def test_no_runs_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.main([str(tmp_path)])
    assert exit_info.value.code == 2 and str(tmp_path) in capsys.readouterr().err


def test_one_evaluation_per_run_is_a_point_per_optimizer_not_a_stack_on_one_step(tmp_path):
    """Runs evaluated once, at step 150: the panel puts the optimizers along its x axis, each a
    point with its spread over seeds, instead of error bars stacked at x = 150 on an axis 142-158."""
    for seed, accuracy in ((0, 0.6), (1, 0.8)):
        write_run(tmp_path / f"adam{seed}", [1.0, 0.9, 0.8], label="ADAM", seed=seed,
                  evals=[{"step": 150, "epoch": 1, "val_loss": 1.0, "val_accuracy": accuracy}])
    write_run(tmp_path / "sgd0", [1.0, 0.9, 0.8], label="SGD",
              evals=[{"step": 150, "epoch": 1, "val_loss": 1.0, "val_accuracy": 0.5}])
    panel = figure(tmp_path).axes[1]
    assert [tick.get_text() for tick in panel.get_xticklabels()] == ["ADAM", "SGD"]
    assert panel.get_xlim() == (-0.5, 1.5)
    assert panel.get_xlabel() == "evaluated once, at step 150"
    adam, sgd = panel.get_lines()[::3]  # each errorbar: its point, then the two caps
    assert list(adam.get_xdata()) == [0] and list(adam.get_ydata()) == [pytest.approx(0.7)]
    assert list(sgd.get_xdata()) == [1] and list(sgd.get_ydata()) == [pytest.approx(0.5)]
    low, high = panel.get_ylim()
    assert low <= 0.5 and high >= 0.7 + np.std([0.6, 0.8], ddof=1)  # the spread of ADAM shows


def test_a_diverged_loss_does_not_set_the_axis_and_is_named_in_the_legend(tmp_path):
    """L4Mom's loss blew up to 1e33: the loss axis fits the other optimizers (starting at 2.3,
    ending near 0.2), and the legend says that L4Mom diverged and how far."""
    for label, losses, sizes in (("ADAM", [2.3, 1.0, 0.5, 0.2], [1e-3] * 4), ("SGD", [2.3, 2.0, 1.5, 1.0], [0.1] * 4),
                                 ("L4Mom", [2.3, 50.0, 1e20, 1e33], [1.0, 1e5, 1e12, 1e17])):
        write_run(tmp_path / label, losses, label=label, step_sizes=sizes)
    loss, _, step_size = figure(tmp_path, beta=0.0).axes  # beta 0: the curves are the losses themselves
    low, high = loss.get_ylim()
    assert 2.3 <= high <= 2.3 * plot_curves.HEADROOM and low >= 0.2 / plot_curves.HEADROOM
    # Its step sizes went with it: that axis fits ADAM's 1e-3 and SGD's 0.1.
    low, high = step_size.get_ylim()
    assert low == pytest.approx(1e-3 / plot_curves.HEADROOM) and high == pytest.approx(0.1 * plot_curves.HEADROOM)
    legend = [text.get_text() for text in loss.figure.legends[0].get_texts()]
    assert legend == ["ADAM", "SGD", "L4Mom (diverged: up to 1e+33, off the axis)"]


def test_a_loss_that_rose_but_stayed_near_the_starts_keeps_the_axis(tmp_path):
    write_run(tmp_path / "adam", [2.3, 1.0, 0.5], label="ADAM")
    write_run(tmp_path / "sgd", [2.3, 9.0, 3.0], label="SGD")  # a spike, under 10x the start
    loss = figure(tmp_path, beta=0.0).axes[0]
    assert loss.get_ylim()[1] >= 9.0
    assert [text.get_text() for text in loss.figure.legends[0].get_texts()] == ["ADAM", "SGD"]
