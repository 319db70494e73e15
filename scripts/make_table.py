"""The paper's table from run records: rows = tasks, columns = optimizers.

A cell is the mean (± the sample standard deviation over seeds) of the paper's metric, the final
training loss, over the finished runs of that task and optimizer (one per seed, the latest of
reruns; ``experiments/results.py`` says which runs are reruns). Rows and columns print in the
order of ``experiments/grid.py``. Below the tasks: the "log average"
(geometric mean over tasks) and the "average rank". The best cell of every row is in bold. A cell
without runs is shown as missing (–), never filled; a row, column or summary row that would be all
missing is left out, and so is a table that no run recorded (each said on stderr or in a note).

The final training loss is read off a smoothed curve (docs/protocol.md, "The table's metric"):

* ``--smoothing last1pct`` (default): the mean of the per-batch training loss over the last 1 %
  of logged training rows, at least one row (``max(1, n // 100)`` of ``n``). Non-finite losses -
  steps the trainer skipped - are left out, as the trainer's own EMA does.
* ``--smoothing ema``: the trainer's bias-corrected EMA at the last step (``final_smoothed_loss``
  in ``summary.json``, β = ``trainer.loss_smoothing``).
* ``--smoothing authors``: the authors' ``exp_smoothing`` (``plot.py`` of their development
  repository SLSforDifferentLayers, 4311114): an EMA with β 0.99 started at the first logged loss,
  without bias correction, at the last row. They apply it to the mean curve over seeds; an EMA is
  linear, so the mean over seeds of each run's EMA is the same number for runs of equal length.

Summary rows:

* log average: per optimizer, exp(mean over tasks of log(cell mean)); shown only for optimizers
  with every task present.
* average rank: per task, the optimizers present for *every* task are ranked (1 = best; ties
  share the mean of their ranks, e.g. 1.5 and 1.5); the ranks are averaged over tasks. Ranking
  only complete columns keeps every average over the same tasks, so the averages are comparable.

Other tables (``--metrics``): final validation accuracy, final validation perplexity and training
time (wall-clock time of the training steps, summed over resumes). ``--paper`` adds the paper's
printed losses (``results/paper/``) side by side, and its printed summary rows.

Outputs ``table.md``, ``table.tex`` and ``table.png`` in ``--out`` (default: ``outputs/table/`` of
the working directory, which git ignores; the committed mini-table is regenerated only by asking
for it, ``--out results/mini``), the Markdown on stdout and the path of every file written on stderr.

Usage::

    python scripts/make_table.py [RUN_ROOT ...] [--wandb ENTITY/PROJECT] [--paper]
        [--smoothing last1pct|ema|authors] [--metrics loss,accuracy,perplexity,time] [--out outputs/table]

RUN_ROOT defaults to ``multirun outputs`` (without ``--wandb``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.extras import require

# Checked before the imports below, so that a missing extra is one line naming it, not a traceback.
require("make_table.py", "pandas", "matplotlib", "tabulate", "omegaconf")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend

from experiments.errors import RecordError  # noqa: E402
from experiments.grid import column_order, task_order  # noqa: E402
from experiments.paths import REPO  # noqa: E402
from experiments.results import (  # noqa: E402
    RecordedRun, counted_runs, read_run_dirs, read_wandb, sources_text,
)

PAPER_DIR = REPO / "results" / "paper"
MISSING = "–"
INDEX = ["task", "model"]


@dataclass(frozen=True)
class Metric:
    """A quantity per run, and how to read it."""

    key: str
    title: str
    definition: str  # the footnote that says what a number in the table is
    higher_is_better: bool
    value: Callable[[RecordedRun], float | None]  # None: the run did not record it


def last_percent_loss(run: RecordedRun) -> float | None:
    """Mean training loss over the last 1 % of logged training rows (at least one row), leaving
    out non-finite losses (skipped steps); NaN if every loss in that window is non-finite."""
    if run.train.empty:
        return None
    losses = run.train["loss"].to_numpy(dtype=float)
    window = losses[-max(1, len(losses) // 100):]
    finite = window[np.isfinite(window)]
    return float(finite.mean()) if finite.size else math.nan


def authors_ema_loss(run: RecordedRun, beta: float = 0.99) -> float | None:
    """The authors' ``exp_smoothing`` at the last logged row: s_0 = L_0, s_i = beta s_(i-1) +
    (1 - beta) L_i. Non-finite losses (skipped steps) are left out, as in ``last_percent_loss``."""
    if run.train.empty:
        return None
    losses = run.train["loss"].to_numpy(dtype=float)
    losses = losses[np.isfinite(losses)]
    if not losses.size:
        return math.nan
    weights = (1 - beta) * beta ** np.arange(losses.size - 1, -1, -1, dtype=float)
    weights[0] = beta ** (losses.size - 1)  # the first loss starts the average with weight 1
    return float(weights @ losses)


LOSS_DEFINITIONS = {
    "last1pct": "Final training loss: mean of the per-batch training loss over the last 1 % of logged "
    "training rows (at least one row; non-finite losses of skipped steps left out).",
    "ema": "Final training loss: the trainer's bias-corrected EMA of the per-batch training loss at "
    "the last step (β = trainer.loss_smoothing; summary's final_smoothed_loss).",
    "authors": "Final training loss: the authors' smoothing (plot.py's exp_smoothing): an EMA with "
    "β 0.99 of the per-batch training loss, started at the first logged loss, at the last row.",
}
LOSS_VALUES: dict[str, Callable[[RecordedRun], float | None]] = {
    "last1pct": last_percent_loss,
    "ema": lambda r: r.final("final_smoothed_loss"),
    "authors": authors_ema_loss,
}


def summary_value(field: str) -> Callable[[RecordedRun], float | None]:
    """Reads the number ``field`` of a run's summary."""
    return lambda run: run.final(field)


# The tables of values the summary records: a new one is an entry here.
SUMMARY_METRICS = {
    metric.key: metric for metric in (
        Metric("accuracy", "Final validation accuracy", "Validation accuracy at the last evaluation "
               "(summary's final_val_accuracy).", True, summary_value("final_val_accuracy")),
        Metric("perplexity", "Final validation perplexity", "Validation perplexity at the last evaluation "
               "(summary's final_val_perplexity).", False, summary_value("final_val_perplexity")),
        Metric("time", "Training time (s)", "Wall-clock seconds of the training steps, summed over "
               "resumes (summary's train_time).", False, summary_value("train_time")),
    )
}
METRIC_KEYS = ("loss", *SUMMARY_METRICS)


def metric(key: str, smoothing: str) -> Metric:
    """The metric ``key`` (one of METRIC_KEYS); ``smoothing`` picks the loss's."""
    if key == "loss":
        return Metric("loss", "Final training loss", LOSS_DEFINITIONS[smoothing], False, LOSS_VALUES[smoothing])
    if key in SUMMARY_METRICS:
        return SUMMARY_METRICS[key]
    raise ValueError(f"unknown metric {key!r}; choose from {', '.join(METRIC_KEYS)}")


@dataclass(frozen=True)
class Table:
    """One metric over tasks (rows, indexed by task and model) and optimizers (columns)."""

    metric: Metric
    mean: pd.DataFrame  # NaN where a cell has no run
    std: pd.DataFrame  # sample standard deviation (n - 1) over seeds; NaN for a single run
    n: pd.DataFrame  # runs per cell; 0 where none


def build_table(runs: Sequence[RecordedRun], metric: Metric) -> Table:
    """Mean, standard deviation and count of ``metric`` per (task, optimizer) over ``runs``.
    A task or optimizer gets a row or column when at least one of its runs recorded the metric (a
    row of dashes says nothing: the accuracy of a language model, the perplexity of a classifier)."""
    tasks = task_order(run.task for run in runs)
    index = pd.MultiIndex.from_tuples([(t.label, t.model_label) for t in tasks], names=INDEX)
    columns = column_order(run.label for run in runs)
    values = pd.DataFrame(
        [(r.task.label, r.task.model_label, r.label, v) for r in runs if (v := metric.value(r)) is not None],
        columns=[*INDEX, "label", "value"],
    )
    # NaN values are kept (a diverged run makes its cell NaN), hence numpy's mean, not pandas'.
    stats = values.groupby([*INDEX, "label"])["value"].agg(
        mean=lambda v: v.to_numpy().mean(),
        std=lambda v: v.to_numpy().std(ddof=1) if len(v) > 1 else math.nan,
        n="size",
    )

    def wide(column: str) -> pd.DataFrame:
        return stats[column].unstack("label").reindex(index=index, columns=columns)

    n = wide("n").fillna(0).astype(int)
    rows, cols = n.index[n.sum(axis=1) > 0], n.columns[n.sum(axis=0) > 0]
    return Table(metric, wide("mean").loc[rows, cols], wide("std").loc[rows, cols], n.loc[rows, cols])


def log_average(means: pd.DataFrame) -> pd.Series:
    """Geometric mean over rows per column; NaN for a column with a missing (or NaN) cell."""
    complete = means.notna().all()
    return np.exp(np.log(means).mean()).where(complete)


def average_rank(means: pd.DataFrame, higher_is_better: bool) -> pd.Series:
    """Mean over rows of the per-row rank (1 = best, ties averaged) among the columns present in
    every row; NaN for the other columns."""
    complete = means.columns[means.notna().all()]
    ranks = means[complete].rank(axis=1, ascending=not higher_is_better, method="average")
    return ranks.mean().reindex(means.columns)


def summary_rows(means: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """The "log average" and "average rank" rows, indexed like ``means``'s rows; none for a single
    task (they would repeat its row) or when no optimizer has every task (they would be all dashes)."""
    rows = pd.DataFrame({
        ("log average", ""): log_average(means),
        ("average rank", ""): average_rank(means, higher_is_better),
    }, index=means.columns).T
    rows.index = pd.MultiIndex.from_tuples(rows.index, names=INDEX)
    return rows[rows.notna().any(axis=1)] if len(means) > 1 else rows.iloc[:0]


def number(value: float) -> str:
    return f"{value:.4g}"


def best_mask(values: pd.DataFrame, higher_is_better: pd.Series) -> pd.DataFrame:
    """True where a cell is the best of its row (the highest where ``higher_is_better``, else the
    lowest; ties all best)."""
    extreme = values.max(axis=1).where(higher_is_better, values.min(axis=1))
    return values.eq(extreme, axis=0)


@dataclass(frozen=True)
class Section:
    """A table ready to render: plain-text cells with the row labels as the first
    ``label_columns`` columns, where to set bold, and the footnotes."""

    title: str
    body: pd.DataFrame
    bold: pd.DataFrame  # the shape of ``body``
    label_columns: int
    notes: list[str]


def make_section(title: str, cells: pd.DataFrame, bold: pd.DataFrame | None, notes: list[str]) -> Section:
    """A section from ``cells`` indexed by row labels; ``bold`` like ``cells`` (None: nothing bold)."""
    body = cells.reset_index()
    mask = pd.DataFrame(False, index=body.index, columns=body.columns)
    if bold is not None:
        mask[list(cells.columns)] = bold.to_numpy()
    return Section(title, body, mask, cells.index.nlevels, notes)


def cell_texts(table: Table, typical_n: int) -> pd.DataFrame:
    """"mean ± std" per cell, with "(n=k)" where k differs from ``typical_n``; – without runs."""

    def text(mean: float, std: float, n: int) -> str:
        if n == 0:
            return MISSING
        spread = f" ± {std:.2g}" if n > 1 else ""
        count = f" (n={n})" if n != typical_n else ""
        return number(mean) + spread + count

    return pd.DataFrame(
        [[text(*cell) for cell in zip(*row)]
         for row in zip(table.mean.values, table.std.values, table.n.values)],
        index=table.mean.index, columns=table.mean.columns,
    )


def numbers(values: pd.DataFrame) -> pd.DataFrame:
    return values.map(lambda v: MISSING if math.isnan(v) else number(v))


def table_section(table: Table, runs_note: str) -> Section:
    """One metric: the task rows, the two summary rows, bold on the best of each row, footnotes."""
    present = table.n.values[table.n.values > 0]
    typical_n = int(pd.Series(present).mode().min()) if present.size else 0
    summary = summary_rows(table.mean, table.metric.higher_is_better)
    values = pd.concat([table.mean, summary])
    higher = pd.Series(table.metric.higher_is_better, index=values.index)
    if ("average rank", "") in higher.index:
        higher[("average rank", "")] = False  # rank 1 is the best, whatever the metric
    best = "highest" if table.metric.higher_is_better else "lowest"
    counts = f"; n = {typical_n} runs per cell unless marked (n=k)" if typical_n else ""
    notes = [
        table.metric.definition,
        f"Cell: mean ± sample standard deviation over seeds{counts}; {MISSING}: no run recorded it. "
        f"{runs_note}",
    ]
    if summary.empty:
        why = "a single task" if len(table.mean) == 1 else "no optimizer has a value for every task"
        notes.append(f"No log average or average rank: {why}.")
    else:
        notes += [
            f"log average: geometric mean over the tasks ({len(table.mean)}), for optimizers with every task "
            "present.",
            f"average rank: per task, the optimizers present for every task are ranked (1 = {best}; ties "
            "share the mean of their ranks), then averaged over tasks.",
        ]
    notes.append("Bold: the best of its row.")
    cells = pd.concat([cell_texts(table, typical_n), numbers(summary)])
    return make_section(table.metric.title, cells, best_mask(values, higher), notes)


def read_paper_table(path: Path) -> pd.DataFrame:
    """The paper's printed final training losses, indexed by (task, model)."""
    return pd.read_csv(path).set_index(INDEX)


def read_printed_summary(readme: Path) -> pd.DataFrame:
    """The paper's printed summary rows as printed (text): the Markdown table of ``readme`` whose
    header starts with ``| row |``, indexed by its first column."""
    lines = [line.strip() for line in readme.read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
    block = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    header, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block[:1] + block[2:]]
    return pd.DataFrame([row[1:] for row in rows], index=pd.Index([row[0] for row in rows], name="row"),
                        columns=header[1:])


def comparison_section(table: Table, paper: pd.DataFrame) -> Section | None:
    """"ours / paper" for the tasks and optimizers in both, with the summary rows of each
    computed on those cells alone; None when they share nothing."""
    rows = [row for row in table.mean.index if row in paper.index]
    columns = [column for column in table.mean.columns if column in paper.columns]
    if not rows or not columns:
        return None
    ours, theirs = table.mean.loc[rows, columns], paper.loc[rows, columns]
    ours = pd.concat([ours, summary_rows(ours, higher_is_better=False)])
    theirs = pd.concat([theirs, summary_rows(theirs, higher_is_better=False)])
    notes = [
        "Cell: our mean over seeds / the paper's printed value (results/paper/), for the tasks and "
        "optimizers in both.",
        table.metric.definition,
        "log average and average rank: on these cells only, for our numbers and the paper's alike.",
    ]
    cells = numbers(ours) + " / " + numbers(theirs)
    return make_section("Final training loss: ours / paper", cells, None, notes)


def printed_section(paper: pd.DataFrame, printed: pd.DataFrame) -> Section:
    """The paper's printed summary rows beside the same rows recomputed from its printed losses."""
    recomputed = summary_rows(paper, higher_is_better=False)
    recomputed.index = pd.Index([f"{name} (recomputed)" for name, _ in recomputed.index], name="row")
    rows = pd.concat([printed, numbers(recomputed)]).reindex(columns=paper.columns, fill_value=MISSING)
    notes = ["printed: the paper's summary rows as printed (results/paper/README.md); recomputed: the same "
             f"rows computed here from its {len(paper)} printed task rows."]
    return make_section("The paper's summary rows", rows, None, notes)


LATEX_CHARS = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "–": "--", "β": r"$\beta$",
})


def to_markdown(section: Section) -> str:
    body = section.body.astype(str)
    cells = body.mask(section.bold, "**" + body + "**")
    notes = "\n".join(f"- {note}" for note in section.notes)
    # disable_numparse: tabulate would otherwise reformat the numbers (1.000 -> 1).
    return f"## {section.title}\n\n{cells.to_markdown(index=False, disable_numparse=True)}\n\n{notes}\n"


def to_latex(section: Section) -> str:
    body = section.body.astype(str).map(lambda text: text.translate(LATEX_CHARS))
    cells = body.mask(section.bold, r"\textbf{" + body + "}")
    cells.columns = [str(column).translate(LATEX_CHARS) for column in cells.columns]
    values = len(cells.columns) - section.label_columns
    alignment = "l" * section.label_columns + "r" * values
    tabular = cells.to_latex(index=False, escape=False, column_format=alignment)
    notes = "\n\n".join(note.translate(LATEX_CHARS) for note in section.notes)
    return (f"\\begin{{table}}[ht]\n\\centering\n\\caption{{{section.title.translate(LATEX_CHARS)}}}\n"
            f"{tabular}\\par\\medskip\\footnotesize\n{notes}\n\\end{{table}}\n")


def text_widths(body: pd.DataFrame) -> list[int]:
    """The longest text of each column, header included, in characters."""
    return [max(map(len, [str(column), *body[column].astype(str)])) for column in body.columns]


def to_png(sections: Sequence[Section], path: Path) -> None:
    """The sections as matplotlib tables one under the other, bold where bold, notes below each."""
    notes = [[line for note in s.notes for line in textwrap.wrap(note, 150)] for s in sections]
    heights = [len(s.body) + 2 + 0.7 * len(lines) for s, lines in zip(sections, notes)]  # in table rows
    width = max(8.0, *(0.09 * sum(text_widths(s.body)) + 1 for s in sections))  # ~0.09 in per character
    fig = Figure(figsize=(width, 0.3 * sum(heights)))
    axes = fig.subplots(len(sections), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, sec, lines, height in zip(axes[:, 0], sections, notes, heights):
        ax.axis("off")
        ax.set_title(sec.title, loc="left", fontweight="bold")
        top = (len(sec.body) + 1) / height  # the axes fraction the table takes, from the top
        widths = text_widths(sec.body)
        drawn = ax.table(cellText=sec.body.values, colLabels=list(sec.body.columns),
                         bbox=[0, 1 - top, 1, top],
                         colWidths=[w / sum(widths) for w in widths], cellLoc="center")
        drawn.auto_set_font_size(False)
        drawn.set_fontsize(8)
        for (row, column), cell in drawn.get_celld().items():
            if row > 0 and sec.bold.iat[row - 1, column]:
                cell.get_text().set_fontweight("bold")
        ax.text(0, 1 - top - 0.3 / height, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7)
    fig.savefig(path, dpi=150, bbox_inches="tight")  # PNG through matplotlib's Agg renderer


def write_outputs(sections: Sequence[Section], out: Path) -> tuple[str, list[Path]]:
    """``table.md``, ``table.tex`` and ``table.png`` in ``out``; returns the Markdown and the
    paths written."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join(to_markdown(s) for s in sections)
    (out / "table.md").write_text(markdown)
    latex = "\n".join(to_latex(s) for s in sections)
    (out / "table.tex").write_text("% needs \\usepackage{booktabs}\n" + latex)
    to_png(sections, out / "table.png")
    return markdown, [out / "table.md", out / "table.tex", out / "table.png"]


def paper_sections(loss: Table) -> list[Section]:
    """The comparison of ``loss`` with the paper's printed table (when they share a cell) and the
    paper's printed summary rows."""
    paper = read_paper_table(PAPER_DIR / "table_final_loss.csv")
    compared = comparison_section(loss, paper)
    if compared is None:
        print("--paper: no task and optimizer in common with the paper's table", file=sys.stderr)
    printed = printed_section(paper, read_printed_summary(PAPER_DIR / "README.md"))
    return [printed] if compared is None else [compared, printed]


def metric_keys(text: str) -> list[str]:
    """``--metrics``: comma-separated keys among METRIC_KEYS."""
    keys = [key.strip() for key in text.split(",")]
    unknown = [key for key in keys if key not in METRIC_KEYS]
    if unknown:
        choices = ", ".join(METRIC_KEYS)
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {choices}")
    return keys


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="The paper's table (final training loss per task and optimizer) from run records.")
    parser.add_argument("roots", nargs="*", type=Path, metavar="RUN_ROOT",
                        help="directories searched for run records "
                        "(default: multirun outputs, without --wandb)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs of this wandb project")
    parser.add_argument("--smoothing", choices=sorted(LOSS_DEFINITIONS), default="last1pct",
                        help="how the final training loss is read off the curve (default: last1pct)")
    parser.add_argument("--metrics", type=metric_keys, default=["loss"],
                        help=f"comma-separated tables among {', '.join(METRIC_KEYS)} (default: loss)")
    parser.add_argument("--paper", action="store_true", help="add the paper's printed numbers side by side")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="count runs of any status, not only finished ones")
    parser.add_argument("--out", type=Path, default=Path("outputs/table"),
                        help="output directory (default: outputs/table, in the working directory)")
    args = parser.parse_args(argv)
    if not args.roots and not args.wandb:
        args.roots = [Path("multirun"), Path("outputs")]
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_args(argv)
    keys = args.metrics + (["loss"] if args.paper and "loss" not in args.metrics else [])
    try:  # reading: run records, and wandb histories as the tables first need them
        found = read_run_dirs(args.roots) + (read_wandb(args.wandb) if args.wandb else [])
        runs = counted_runs(found, args.include_unfinished)
        if not runs:
            parser.error(f"no {'' if args.include_unfinished else 'finished '}runs in "
                         f"{sources_text(args.roots, args.wandb)}")
        tables = {key: build_table(runs, metric(key, args.smoothing)) for key in keys}
    except RecordError as error:
        parser.error(str(error))
    runs_note = ("Runs of any status count" if args.include_unfinished else "Only finished runs count") + \
        "; of reruns, the latest."
    empty = [key for key in args.metrics if tables[key].n.empty]  # a table of dashes says nothing
    for key in empty:
        print(f"no run recorded the {tables[key].metric.title.lower()}: that table is left out", file=sys.stderr)
    sections = [table_section(tables[key], runs_note) for key in args.metrics if key not in empty]
    if not sections and not args.paper:
        parser.error(f"no run recorded any of {', '.join(args.metrics)}")
    if args.paper:
        sections += paper_sections(tables["loss"])
    markdown, written = write_outputs(sections, args.out)
    print(markdown)
    # On stderr, so that stdout stays the Markdown (`make_table.py ... > table.md`).
    for path in written:
        print(f"wrote {path.resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
