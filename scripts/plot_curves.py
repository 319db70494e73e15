"""The paper's figures from run records: per task, the training curves of every optimizer.

One figure per task (``<dataset>_<model>_curves.png``, and ``.pdf`` with ``--pdf``), three panels
against the training step:

* training loss, smoothed (log scale): an exponential moving average of the per-batch training
  loss over the logged rows, bias-corrected like the trainer's own,
  ``s_t = sum_i beta^(t-i) x_i / sum_i beta^(t-i)`` over the finite losses up to row ``t``
  (``--beta``, default 0.99, the smoothing the paper's line searches use);
* validation accuracy at each evaluation (validation perplexity, log scale, for language models;
  validation loss where neither was logged);
* step size (log scale): a line search's accepted step size, or the scheduled learning rate.

One line per optimizer: the mean over seeds at each step, and a band of ± one standard deviation
across seeds where two or more seeds logged that step (their curves are aligned on the step).
The runs counted are those of ``make_table.py``: finished ones, the latest of reruns.

Usage::

    python scripts/plot_curves.py [RUN_ROOT ...] [--out outputs/plots] [--pdf] [--beta 0.99]

RUN_ROOT defaults to ``multirun outputs``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.extras import require

# Checked before the imports below, so that a missing extra is one line naming it, not a traceback.
require("plot_curves.py", "pandas", "matplotlib", "omegaconf")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend

from run_records import (  # scripts/ is on sys.path when a script in it runs
    LABEL_ORDER, RecordError, Run, Task, counted_runs, ordered, read_run_dirs, sources_text, task_order,
)

BETA = 0.99
Color = tuple[float, float, float]  # RGB in [0, 1]


def smoothed_loss(train: pd.DataFrame, beta: float) -> pd.Series:
    """The bias-corrected EMA (weight ``beta``) of the finite training losses, indexed by step.
    Non-finite losses are dropped first, as the trainer's EMA skips them."""
    losses = train.set_index("step")["loss"]
    losses = losses[np.isfinite(losses)]
    # adjust=True is the bias-corrected EMA: weights beta^k normalised by their sum.
    return losses.ewm(alpha=1 - beta, adjust=True).mean()


def positive(series: pd.Series) -> pd.Series:
    """``series`` with non-positive values as NaN: a log axis cannot show them (a warm-up's 0)."""
    return series.where(series > 0)


def eval_column(runs: Sequence[Run]) -> str:
    """The evaluation metric the runs logged: val_accuracy, else val_perplexity, else val_loss."""
    logged = {column for run in runs for column in run.evals.columns}
    return next((c for c in ("val_accuracy", "val_perplexity") if c in logged), "val_loss")


@dataclass(frozen=True)
class Panel:
    """One quantity against the step: how to read it from a run, and its axis."""

    ylabel: str
    log: bool
    series: Callable[[Run], pd.Series]  # indexed by step; empty when the run did not log it


def column(rows: Callable[[Run], pd.DataFrame], name: str) -> Callable[[Run], pd.Series]:
    """Reads column ``name`` of a run's ``rows`` (its training or evaluation rows) by step."""

    def series(run: Run) -> pd.Series:
        frame = rows(run)
        if name not in frame.columns:
            return pd.Series(dtype=float)
        return frame.set_index("step")[name].astype(float)

    return series


def panels(runs: Sequence[Run], beta: float) -> list[Panel]:
    """The three panels of a task's figure."""
    evaluated = eval_column(runs)
    return [
        Panel(f"training loss (EMA, β = {beta})", True, lambda run: smoothed_loss(run.train, beta)),
        Panel(evaluated.replace("_", " "), evaluated != "val_accuracy",
              column(lambda run: run.evals, evaluated)),
        Panel("step size", True, column(lambda run: run.train, "step_size")),
    ]


SPARSE_POINTS = 1  # a curve of one point (one evaluation per run) is a point with an error bar


def across_seeds(curves: Sequence[pd.Series]) -> pd.DataFrame:
    """Mean, sample standard deviation and count per step of curves aligned on their step index."""
    aligned = pd.concat(curves, axis=1)
    return pd.DataFrame({"mean": aligned.mean(axis=1), "std": aligned.std(axis=1),
                         "n": aligned.count(axis=1)})


def draw(ax: Axes, panel: Panel, runs_by_label: dict[str, list[Run]], colors: dict[str, Color]) -> None:
    """One line per optimizer (mean over seeds) with its ± std band where two or more seeds."""
    for label, runs in runs_by_label.items():
        curves = [c for c in (panel.series(run) for run in runs) if not c.empty]
        if not curves:
            continue
        stats = across_seeds(curves)
        if panel.log:
            stats["mean"] = positive(stats["mean"])
        if len(stats) <= SPARSE_POINTS:  # a line of one point would not show
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), label=label,
                        color=colors[label], marker="o", markersize=3, capsize=2, linewidth=1)
            continue
        ax.plot(stats.index, stats["mean"], label=label, color=colors[label], linewidth=1)
        banded = stats[stats["n"] >= 2]
        if not banded.empty:
            low, high = banded["mean"] - banded["std"], banded["mean"] + banded["std"]
            ax.fill_between(banded.index, positive(low) if panel.log else low, high,
                            color=colors[label], alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    if panel.log:
        ax.set_yscale("log")


def task_figure(task: Task, runs: Sequence[Run], colors: dict[str, Color], beta: float = BETA) -> Figure:
    """The figure of one task: the three panels, one line per optimizer label of ``runs``."""
    runs_by_label = {label: [r for r in runs if r.label == label]
                     for label in ordered((r.label for r in runs), LABEL_ORDER)}
    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, panel in zip(axes, panels(runs, beta)):
        draw(ax, panel, runs_by_label, colors)
    axes[0].legend(fontsize=8)
    seeds = sorted({len(group) for group in runs_by_label.values()})
    fig.suptitle(f"{task.name} / {task.model_name} (seeds per optimizer: {', '.join(map(str, seeds))})")
    return fig


def label_colors(labels: Sequence[str]) -> dict[str, Color]:
    """One colour per optimizer label, the same in every figure."""
    tab20 = colormaps["tab20"].colors
    palette = tab20[0::2] + tab20[1::2]  # ten strong colours, then their light shades
    return {label: palette[i % len(palette)] for i, label in enumerate(ordered(labels, LABEL_ORDER))}


def save(fig: Figure, path: Path, pdf: bool) -> list[Path]:
    """``path`` as PNG (through matplotlib's Agg renderer), and beside it a PDF when asked."""
    written = [path.with_suffix(".png")] + ([path.with_suffix(".pdf")] if pdf else [])
    for target in written:
        fig.savefig(target, dpi=150)
    return written


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description="The paper's training curves per task from run records.")
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("multirun"), Path("outputs")],
                        metavar="RUN_ROOT",
                        help="directories searched for run records (default: multirun outputs)")
    parser.add_argument("--out", type=Path, default=Path("outputs/plots"),
                        help="default: outputs/plots (ignored by git; the committed plots: --out results/mini/plots)")
    parser.add_argument("--pdf", action="store_true", help="also write a PDF of every figure")
    parser.add_argument("--beta", type=float, default=BETA,
                        help=f"EMA weight of the loss curve (default {BETA})")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="plot runs of any status, not only finished ones")
    args = parser.parse_args(argv)
    if not 0 <= args.beta < 1:
        parser.error(f"--beta must be in [0, 1), got {args.beta}")
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_args(argv)
    try:
        runs = counted_runs(read_run_dirs(args.roots), args.include_unfinished)
    except RecordError as error:
        parser.error(str(error))
    if not runs:
        parser.error(f"no {'' if args.include_unfinished else 'finished '}runs in {sources_text(args.roots)}")
    args.out.mkdir(parents=True, exist_ok=True)
    colors = label_colors([run.label for run in runs])
    for task in task_order(run.task for run in runs):
        fig = task_figure(task, [run for run in runs if run.task == task], colors, args.beta)
        for path in save(fig, args.out / f"{task.slug}_curves", args.pdf):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
