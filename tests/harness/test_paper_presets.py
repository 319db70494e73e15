"""Every column of every paper task, as `run_multiple.py` composes it, carries the authors' settings.

The line searches' settings are read from the composed config (what a run records in its
``config.yaml``), which lists every value a column runs with.

The expected values are read from the authors' code, not from our configs:
* NLP: ``test/run_multiple.py`` (c 0.3, beta 0.99, speed_up True, batch 32, 5 epochs),
  ``test/embedder.py`` (which ``AdamSLS`` arguments each column passes; Adam/SGD learning rates
  and the cosine schedule with 10 % warm-up), ``salsa/adam_sls.py`` + ``sls_base.py`` (the
  defaults the columns inherit: init eta 0.1, backtrack 0.9, gamma 2 over 500 batches, 200 trials).
* Images: ``test/image_classifier.py`` and ``test/run_multiple_img.py`` (batch 128, the line
  searches built without speed_up, Adam 1e-3 / SGD 0.1 flat).
* GPT-2: the line-search columns are the NLP presets (the fork builds none of them); the ADAM and
  SGD columns, the model and the pipeline are pinned against the fork in ``test_gpt2_fork.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.runner import build
from optim.presets import paper_optimizer
from sweep_utils import commands, compose, dry_run, job_overrides

GROWTH = 2.0 ** (1.0 / 500)  # AdamSLS: gamma 2, n_batches_per_epoch 500, reset_option 1

# Column -> the AdamSLS settings it ran with: (c, smoothing beta, search direction, step along,
# gradient term root). Unsmoothed columns (smooth=False) have beta 0.
LINE_SEARCHES = {
    "salsa": (0.3, 0.99, "adam", "momentum", False),  # adamsls
    "salsa_sgd": (0.3, 0.99, "sgd", "search", True),  # sgdsls: base_opt scalar, term ||g||
    "sls_adam": (0.1, 0.0, "adam", "momentum", False),  # oladamsls
    "sls": (0.1, 0.0, "sgd", "search", True),  # olsgdsls
}
NLP_SPEED_UP = {"salsa": True, "salsa_sgd": False, "sls_adam": False, "sls": False}


def composed(capsys, tmp_path, grid: str, task: str, column: str):
    out = dry_run(capsys, grid, "--tasks", task, "--columns", column, "--seeds", "1", "--root", str(tmp_path))
    (cmd,) = commands(out)
    return compose(job_overrides(cmd))


def built_optimizer(cfg) -> torch.optim.Optimizer:
    return build(cfg, "optimizer", params=[nn.Parameter(torch.zeros(3))])


def as_run(build_cfg: dict) -> dict:
    """What a column's config makes the search do, in AdamSLS's terms, read from the config."""
    smoothed = build_cfg["preset"] in ("adamsls", "sgdsls")  # SaLSA; the others are SLS
    if smoothed:
        smoothing, growth, cap, failed_step = build_cfg["betas"][2], build_cfg["growth"], math.inf, None
    else:
        assert build_cfg["reset_option"] == 1  # grow by gamma^(1 / n_batches_per_epoch) per step
        smoothing, cap, failed_step = 0.0, build_cfg["eta_max"], build_cfg["failed_step"]
        growth = build_cfg["gamma"] ** (1.0 / build_cfg["n_batches_per_epoch"])
        assert build_cfg["guard"] == "loss_and_term"  # AdamSLS's guard, not the SLS reference's
    return dict(
        c=build_cfg["c"], smoothing=smoothing, direction=build_cfg["direction"],
        step_along=build_cfg["step_along"], root=build_cfg["grad_term"] == "norm", growth=growth,
        backtrack=build_cfg["backtrack"], max_trials=build_cfg["max_trials"], cap=cap,
        failed_step=failed_step, ties=build_cfg.get("accept_ties", False), speed_up=build_cfg["speed_up"],
        init_step_size=build_cfg["init_step_size"], adam_betas=tuple(build_cfg["betas"][:2]),
        weight_decay=build_cfg["weight_decay"],
    )


def check_line_search(cfg, column: str, speed_up: bool) -> None:
    """The authors' values, read from the column's config as the run records it; the optimizer
    built from it runs with exactly those values (its param groups)."""
    c, beta, direction, step_along, root = LINE_SEARCHES[column]
    build_cfg = OmegaConf.to_container(cfg.optimizer.build)
    assert as_run(build_cfg) == dict(
        c=c, smoothing=beta, direction=direction, step_along=step_along, root=root, growth=GROWTH,
        backtrack=0.9, max_trials=200, cap=math.inf, failed_step=None, ties=False, speed_up=speed_up,
        init_step_size=0.1,  # AdamSLS's init_step_size
        adam_betas=(0.9, 0.999),  # AdamSLS momentum, beta (unused along g)
        weight_decay=0.0,
    )
    opt = built_optimizer(cfg)
    settings = {k: v for k, v in build_cfg.items() if k not in ("_target_", "preset")}
    group = opt.param_groups[0]
    assert settings.keys() == opt.defaults.keys() - {"lr"}  # every hyperparameter is listed
    assert {k: group[k] for k in settings} == {
        k: tuple(v) if k == "betas" else v for k, v in settings.items()
    }
    assert opt.diagnostics.step_size == 0.1


@pytest.mark.parametrize("column", sorted(LINE_SEARCHES))
def test_each_column_config_lists_the_values_of_its_python_preset(column):
    """conf/optimizer/<column>.yaml and optim.presets hold the same preset: built through
    paper_optimizer with and without the config's values, the groups hold the same settings."""
    cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "optimizer" / f"{column}.yaml")
    from_config = built_optimizer(OmegaConf.create({"optimizer": cfg}))
    from_python = paper_optimizer(cfg.build.preset, [nn.Parameter(torch.zeros(3))])
    assert type(from_config) is type(from_python)
    assert [{k: v for k, v in g.items() if k != "params"} for g in from_config.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in from_python.param_groups]


@pytest.mark.parametrize("task", ["mnli", "qnli", "mrpc", "sst2"])
def test_nlp_columns(capsys, tmp_path, task):
    for column in LINE_SEARCHES:
        cfg = composed(capsys, tmp_path, "nlp", task, column)
        check_line_search(cfg, column, NLP_SPEED_UP[column])
        assert cfg.optimizer.schedule is None
    for column, (target, lr) in {"adam": ("torch.optim.Adam", 2e-5), "sgd": ("torch.optim.SGD", 2e-3)}.items():
        cfg = composed(capsys, tmp_path, "nlp", task, column)
        assert (cfg.optimizer.build._target_, cfg.optimizer.build.lr) == (target, lr)
        assert cfg.optimizer.build.get("momentum", 0.0) == 0.0
        assert OmegaConf.to_container(cfg.optimizer.schedule) == {
            "warmup_fraction": 0.1, "warmup_steps": None, "cosine_after_warmup": False, "final_factor": 0.0
        }
    trainer, data, model = cfg.trainer, cfg.dataset.build, cfg.model
    assert (trainer.batch_size, trainer.accumulation_steps, trainer.epochs, trainer.shuffle) == (32, 1, 5, False)
    assert (data.task, data.max_length, data.order) == (task, 256, "tfds")
    assert (model.name, model.build.keep_dropout, trainer.log_interval) == ("bert", False, 1)


@pytest.mark.parametrize("task", ["cifar10", "cifar100", "imagenet"])
def test_image_columns(capsys, tmp_path, task):
    for column in LINE_SEARCHES:  # image_classifier.py builds all four without speed_up
        check_line_search(composed(capsys, tmp_path, "image", task, column), column, speed_up=False)
    for column, lr in {"adam": 1e-3, "sgd": 0.1}.items():
        cfg = composed(capsys, tmp_path, "image", task, column)
        assert cfg.optimizer.build.lr == lr and cfg.optimizer.schedule is None
    trainer = cfg.trainer
    assert (trainer.batch_size, trainer.log_interval, trainer.compile) == (128, 1, True)
    assert trainer.num_workers > 0
    if task != "imagenet":
        assert cfg.model.build.init == "pytorch"


def test_gpt2_line_search_columns(capsys, tmp_path):
    for column in LINE_SEARCHES:  # the NLP presets (the row's version is not recorded)
        check_line_search(composed(capsys, tmp_path, "gpt2", "openwebtext", column), column, NLP_SPEED_UP[column])


def test_a_run_records_every_value_of_its_column_and_an_override_reaches_the_groups(tmp_path):
    from experiments.checkpoint import list_checkpoints
    from harness_utils import CONF, run_config

    summary = run_config(["optimizer=salsa", "optimizer.build.c=0.2", "trainer.max_steps=2"], tmp_path)
    assert summary["status"] == "finished"
    recorded = OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml").optimizer.build)
    column = OmegaConf.to_container(OmegaConf.load(CONF / "optimizer" / "salsa.yaml").build)
    assert recorded == {**column, "c": 0.2}
    groups = torch.load(list_checkpoints(tmp_path)[-1], weights_only=True)["optimizer"]["param_groups"]
    assert {group["c"] for group in groups} == {0.2}
    assert {group["max_trials"] for group in groups} == {column["max_trials"]}


@pytest.mark.parametrize("column", ["adam", "sgd"])
def test_the_baseline_columns_list_every_hyperparameter_of_their_class(column):
    """Every positional hyperparameter of the torch optimizer (the keyword-only ones are
    implementation switches, maximize and Adam's decoupled_weight_decay, left at their defaults)."""
    import inspect

    from hydra.utils import get_object

    build_cfg = OmegaConf.load(Path(__file__).parents[2] / "conf" / "optimizer" / f"{column}.yaml").build
    parameters = inspect.signature(get_object(build_cfg._target_)).parameters
    positional = {name for name, p in parameters.items()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "params"}
    assert set(build_cfg) - {"_target_"} == positional
