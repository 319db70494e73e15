"""Every column of every paper task, as `run_multiple.py` composes it, carries the authors' settings.

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

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.runner import build
from test_run_multiple import commands, compose, dry_run, job_overrides

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


def check_line_search(cfg, column: str, speed_up: bool) -> None:
    c, beta, direction, step_along, root = LINE_SEARCHES[column]
    opt = built_optimizer(cfg)
    rule = opt.rule
    assert (rule.c, rule.smoothing, rule.growth, rule.backtrack, rule.max_trials) == pytest.approx(
        (c, beta, GROWTH, 0.9, 200)
    )
    assert opt.defaults["direction"] == direction
    assert (rule.step_along, rule.grad_term_root, rule.speed_up) == (step_along, root, speed_up)
    assert rule.eta_max == math.inf and rule.failed_step is None and not rule.accept_ties
    assert opt.diagnostics["step_size"] == 0.1  # AdamSLS's init_step_size
    if direction == "adam":
        assert tuple(opt.defaults["betas"][:2]) == (0.9, 0.999)  # AdamSLS momentum, beta


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
