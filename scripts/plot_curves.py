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

One line per optimizer: the mean over seeds at each step, and where two or more seeds logged that
step (their curves are aligned on the step) a band of ± one standard deviation across seeds, or,
on a log axis, from the lowest to the highest seed (a mean minus a standard deviation below 0 has
no place on it). Runs evaluated once (at the end) have no curve to draw: that panel shows one point
per optimizer, with its ± std, the optimizers along the x axis. Log axes fit the lines; a band
that reaches beyond them is cut at the edge. A run whose training loss diverged
(rose more than ``DIVERGED`` times above the highest starting loss) would set the log axes and
flatten every other curve: those axes are fitted to the other optimizers, and the legend names
the diverged one and its peak loss.
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

from experiments.errors import RecordError  # noqa: E402
from experiments.grid import Task, column_order, task_order  # noqa: E402
from experiments.results import RecordedRun, counted_runs, read_run_dirs, sources_text  # noqa: E402

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


def eval_column(runs: Sequence[RecordedRun]) -> str:
    """The evaluation metric the runs logged: val_accuracy, else val_perplexity, else val_loss."""
    logged = {column for run in runs for column in run.evals.columns}
    return next((c for c in ("val_accuracy", "val_perplexity") if c in logged), "val_loss")


@dataclass(frozen=True)
class Panel:
    """One quantity against the step: how to read it from a run, and its axis."""

    ylabel: str
    log: bool
    series: Callable[[RecordedRun], pd.Series]  # indexed by step; empty when the run did not log it
    falls: bool = False  # a training loss: curves that rise far above every start diverged


def column(rows: Callable[[RecordedRun], pd.DataFrame], name: str) -> Callable[[RecordedRun], pd.Series]:
    """Reads column ``name`` of a run's ``rows`` (its training or evaluation rows) by step."""

    def series(run: RecordedRun) -> pd.Series:
        frame = rows(run)
        if name not in frame.columns:
            return pd.Series(dtype=float)
        return frame.set_index("step")[name].astype(float)

    return series


def panels(runs: Sequence[RecordedRun], beta: float) -> list[Panel]:
    """The three panels of a task's figure."""
    evaluated = eval_column(runs)
    return [
        Panel(f"training loss (EMA, β = {beta})", True, lambda run: smoothed_loss(run.train, beta), falls=True),
        Panel(evaluated.replace("_", " "), evaluated != "val_accuracy",
              column(lambda run: run.evals, evaluated)),
        Panel("step size", True, column(lambda run: run.train, "step_size")),
    ]


SPARSE_POINTS = 1  # a curve of one point (one evaluation per run) is a point with an error bar
DIVERGED = 10.0  # a training loss this many times above the highest starting loss has diverged
HEADROOM = 1.3  # above the highest curve kept on the axis


def across_seeds(curves: Sequence[pd.Series]) -> pd.DataFrame:
    """Mean, sample standard deviation, lowest, highest and count per step of curves aligned on
    their step index."""
    aligned = pd.concat(curves, axis=1)
    return pd.DataFrame({"mean": aligned.mean(axis=1), "std": aligned.std(axis=1), "min": aligned.min(axis=1),
                         "max": aligned.max(axis=1), "n": aligned.count(axis=1)})


def statistics(panel: Panel, runs_by_label: dict[str, list[RecordedRun]]) -> dict[str, pd.DataFrame]:
    """Per optimizer that logged the panel's quantity: its mean, std and count over seeds by step."""
    found = {}
    for label, runs in runs_by_label.items():
        curves = [c for c in (panel.series(run) for run in runs) if not c.empty]
        if curves:
            stats = across_seeds(curves)
            if panel.log:
                stats[["mean", "min"]] = stats[["mean", "min"]].apply(positive)
            found[label] = stats
    return found


def diverged(stats: dict[str, pd.DataFrame]) -> dict[str, float]:
    """The peaks of the mean curves that rose ``DIVERGED`` times above the highest start of all of
    them, by label (empty when none did, or when all did: then there is nothing else to show)."""
    starts = [s["mean"].dropna().iloc[0] for s in stats.values() if s["mean"].notna().any()]
    if not starts:
        return {}
    bound = DIVERGED * max(starts)
    peaks = {label: float(s["mean"].max()) for label, s in stats.items() if s["mean"].max() > bound}
    return peaks if len(peaks) < len(stats) else {}


def draw(ax: Axes, panel: Panel, stats: dict[str, pd.DataFrame], colors: dict[str, Color],
         off_axis: dict[str, float]) -> None:
    """One line per optimizer (mean over seeds) with its band where two or more seeds; one point
    per optimizer where every optimizer has one value; a log axis fitted to the optimizers not in
    ``off_axis`` (those whose loss diverged; see the module's docstring)."""
    if stats and all(len(s) <= SPARSE_POINTS for s in stats.values()):
        return draw_once(ax, panel, stats, colors)
    for label, s in stats.items():
        shown = f"{label} (diverged: up to {off_axis[label]:.2g}, off the axis)" if label in off_axis else label
        if len(s) <= SPARSE_POINTS:  # a line of one point would not show
            ax.errorbar(s.index, s["mean"], yerr=s["std"].fillna(0.0), label=shown,
                        color=colors[label], marker="o", markersize=3, capsize=2, linewidth=1)
            continue
        ax.plot(s.index, s["mean"], label=shown, color=colors[label], linewidth=1)
        banded = s[s["n"] >= 2]
        if not banded.empty and label not in off_axis:  # a diverged run's spread only clutters
            low, high = ((banded["min"], banded["max"]) if panel.log
                         else (banded["mean"] - banded["std"], banded["mean"] + banded["std"]))
            ax.fill_between(banded.index, low, high, color=colors[label], alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    if panel.log:
        ax.set_yscale("log")
        # Fitted to the lines, not the bands: one seed whose step size collapsed to 1e-323 would
        # otherwise stretch the axis over 300 decades and flatten every line.
        kept = [s["mean"].dropna() for label, s in stats.items() if label not in off_axis]
        if any(not line.empty for line in kept):
            ax.set_ylim(min(line.min() for line in kept if not line.empty) / HEADROOM,
                        max(line.max() for line in kept if not line.empty) * HEADROOM)


def draw_once(ax: Axes, panel: Panel, stats: dict[str, pd.DataFrame], colors: dict[str, Color]) -> None:
    """Runs evaluated once: a point per optimizer with its ± std over seeds, the optimizers along
    the x axis (on a step axis every point would sit at the same step, a stack of error bars)."""
    labels = list(stats)
    for position, label in enumerate(labels):
        s = stats[label]
        ax.errorbar([position], s["mean"], yerr=s["std"].fillna(0.0), color=colors[label], marker="o",
                    markersize=5, capsize=4, linewidth=1.5, label=label)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    steps = sorted({int(step) for s in stats.values() for step in s.index})
    ax.set_xlabel(f"evaluated once, at step {steps[0]}" if len(steps) == 1 else "evaluated once, at the end of each run")
    ax.set_ylabel(panel.ylabel)
    if panel.log:
        ax.set_yscale("log")


def task_figure(task: Task, runs: Sequence[RecordedRun], colors: dict[str, Color],
                beta: float = BETA) -> Figure:
    """The figure of one task: the three panels, one line per optimizer label of ``runs``."""
    runs_by_label = {label: [r for r in runs if r.label == label]
                     for label in column_order(r.label for r in runs)}
    fig = Figure(figsize=(17, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    stats = [statistics(panel, runs_by_label) for panel in panels(runs, beta)]
    # A run whose loss diverged is off every log axis: its step sizes and perplexities went with it.
    off_axis = next((diverged(s) for panel, s in zip(panels(runs, beta), stats) if panel.falls), {})
    for ax, panel, panel_stats in zip(axes, panels(runs, beta), stats):
        draw(ax, panel, panel_stats, colors, off_axis)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)  # beside the panels, over no curve
    seeds = sorted({len(group) for group in runs_by_label.values()})
    fig.suptitle(f"{task.label} / {task.model_label} (seeds per optimizer: {', '.join(map(str, seeds))})")
    return fig


def label_colors(labels: Sequence[str]) -> dict[str, Color]:
    """One colour per optimizer label, the same in every figure."""
    tab20 = colormaps["tab20"].colors
    palette = tab20[0::2] + tab20[1::2]  # ten strong colours, then their light shades
    return {label: palette[i % len(palette)] for i, label in enumerate(column_order(labels))}


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
