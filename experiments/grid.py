"""The tables this project reproduces: their rows, columns, labels and seeds, in printed order.

A grid is tasks x columns x seeds. A task (a row of a table) is a dataset trained with a model;
the grid names, for each of its tasks, the experiment preset that sets it up
(``conf/experiment/<preset>.yaml``: model, dataset, trainer and the task group whose optimizer
settings the composition merges). A column is an optimizer config, ``conf/optimizer/<name>.yaml``,
whose ``label`` heads the column in the tables: the label is defined there alone.

Tables print the tasks in the order the grids below list them, and the columns in the order of
:data:`PAPER_COLUMNS` and then :data:`EXTRA_COLUMNS`; tasks and columns that no grid lists follow
in order of appearance. ``run_multiple.py`` plans its sweeps from here; ``scripts/make_table.py``
and ``scripts/plot_curves.py`` take their row names and orders from here.

Imports neither torch nor Hydra.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .paths import CONF

# The paper's table, in its column order: ADAM, SGD, ADAM-SLS, SGD-SLS, ADAM-SaLSa, SGD-SaLSa.
PAPER_COLUMNS = ("adam", "sgd", "sls_adam", "sls", "salsa", "salsa_sgd")
# What users pick instead: L4 and the learning-rate-free optimizers at their documented defaults.
EXTRA_COLUMNS = ("l4_adam", "l4_mom", "prodigy", "dadapt_adam", "schedulefree_adamw")

# The names the paper prints for datasets and models; others print as their config name.
DATASET_LABELS = {
    "mnli": "MNLI", "qnli": "QNLI", "mrpc": "MRPC", "sst2": "SST2", "openwebtext": "GPT-2",
    "cifar10": "CIFAR10", "cifar100": "CIFAR100", "imagenet": "ImageNet",
}
MODEL_LABELS = {
    "bert": "BERT", "roberta": "RoBERTa", "gpt2": "GPT-2", "resnet34_cifar": "ResNet34",
    "resnet50": "ResNet50",
}


@dataclass(frozen=True)
class Task:
    """A row of a table: a dataset trained with a model (their config names)."""

    dataset: str
    model: str

    @property
    def label(self) -> str:
        """The row's name in a table: the paper's name of the dataset, e.g. ``SST2``."""
        return DATASET_LABELS.get(self.dataset, self.dataset)

    @property
    def model_label(self) -> str:
        return MODEL_LABELS.get(self.model, self.model)

    @property
    def slug(self) -> str:
        """A file-name-safe identifier, e.g. ``sst2_bert``."""
        return f"{self.dataset}_{self.model}"


@dataclass(frozen=True)
class Grid:
    """A table: its tasks (each with its experiment preset), default columns and seeds, and the
    threads per run process."""

    name: str
    presets: Mapping[Task, str]  # task -> conf/experiment/<preset>.yaml, in the table's row order
    columns: tuple[str, ...]
    seeds: int
    threads: int | None = None  # trainer.threads of each run; None: the sweep decides (sweep_plan.py)
    paper: bool = True  # one of the paper's tables (`run_multiple.py all` runs these)

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(self.presets)


def _tasks(datasets: Iterable[str], model: str, preset: str) -> dict[Task, str]:
    return {Task(dataset, model): preset for dataset in datasets}


# In the order their rows print (the paper's: GLUE, GPT-2, images), the CPU mini-table last.
GRIDS = {
    grid.name: grid
    for grid in (
        Grid("nlp", _tasks(("mnli", "qnli", "mrpc", "sst2"), "bert", "paper/glue_bert"), PAPER_COLUMNS,
             seeds=5),
        # docs/protocol.md records no seed count for GPT-2 either; a 124M model on OpenWebText gets
        # one per column.
        Grid("gpt2", _tasks(("openwebtext",), "gpt2", "paper/gpt2_openwebtext"), PAPER_COLUMNS, seeds=1),
        # docs/protocol.md: the image seed count is not recorded (the figures show bands). Three is the
        # fewest that gives a mean and a spread, at 60 % of the cost of the NLP table's five.
        Grid("image", {**_tasks(("cifar10", "cifar100"), "resnet34_cifar", "paper/cifar_resnet34"),
                       **_tasks(("imagenet",), "resnet50", "paper/imagenet_resnet50")},
             PAPER_COLUMNS, seeds=3),
        # Tiny models: one thread per process. On a busy 2-core machine 200 digits steps took 0.7 s
        # with one thread and 46 s with two (the OpenMP threads wait for each other).
        Grid("mini", {Task("digits", "small_cnn"): "mini/digits_cnn",
                      Task("rotten_tomatoes", "small_bert"): "mini/rotten_tomatoes_bert",
                      Task("rotten_tomatoes_lm", "small_gpt2"): "mini/rotten_tomatoes_gpt2"},
             PAPER_COLUMNS + EXTRA_COLUMNS, seeds=3, threads=1, paper=False),
    )
}
PAPER_GRIDS = tuple(name for name, grid in GRIDS.items() if grid.paper)


def ordered(names: Iterable[str], canonical: Sequence[str]) -> list[str]:
    """``names`` without repeats: those in ``canonical`` in its order, then the others in order
    of appearance."""
    unique = list(dict.fromkeys(names))
    return [n for n in canonical if n in unique] + [n for n in unique if n not in canonical]


def task_order(tasks: Iterable[Task]) -> list[Task]:
    """``tasks`` without repeats, in the grids' row order (a task ranks with the first grid row of
    its dataset), then the others in order of appearance."""
    rows = [task.dataset for grid in GRIDS.values() for task in grid.tasks]
    rank = {dataset: i for i, dataset in reversed(list(enumerate(rows)))}
    return sorted(dict.fromkeys(tasks), key=lambda t: rank.get(t.dataset, len(rank)))  # stable


@functools.cache
def column_labels() -> tuple[str, ...]:
    """The labels of the grids' columns, in table order, as their configs define them."""
    from omegaconf import OmegaConf

    return tuple(OmegaConf.load(CONF / "optimizer" / f"{name}.yaml").label
                 for name in PAPER_COLUMNS + EXTRA_COLUMNS)


def column_order(labels: Iterable[str]) -> list[str]:
    """Column labels without repeats, in table order (see the module's docstring)."""
    return ordered(labels, column_labels())
