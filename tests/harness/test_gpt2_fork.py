"""The GPT-2 row against the authors' nanoGPT fork (github.com/TheMody/nanoGPTSLS), file by file.

The expected values are read from the fork's code, at the commits named below:

* ``train.py`` at 003004c (2023-10-23, the last 2023 revision): the line searches' pipeline
  (``dtype = 'float32'``, ``grad_clip = 1.0``, ``torch.backends.cuda.matmul.allow_tf32 = True``,
  ``torch.backends.cudnn.allow_tf32 = True``, ``bias = False``, ``learning_rate = 6e-4``,
  ``warmup_iters = 0``, ``min_lr = 6e-5``, a commented ``SGD(model.parameters(), lr=learning_rate)``)
  and ``config/train_gpt2.py`` at 2b271ee (``batch_size = 18``, ``gradient_accumulation_steps = 28``,
  ``max_iters = lr_decay_iters = 600000``).
* ``train_old.py`` at 90c8870 (its last revision; deleted in 2b271ee): the fork's AdamW loop
  (``warmup_iters = 2000``, ``dtype = 'float16'`` with the GradScaler calls commented out,
  ``gradient_accumulation_steps *= 8`` without DDP, the loss never divided by the accumulation
  steps, ``get_lr``: ``learning_rate * it / warmup_iters`` during the warm-up, then
  ``min_lr + 0.5 (1 + cos(pi (it - warmup_iters) / (lr_decay_iters - warmup_iters))) (learning_rate
  - min_lr)``), with ``config/train_gpt2.py`` of its time (a5045f6: ``batch_size = 12``,
  ``gradient_accumulation_steps = 5``).
* ``model.py`` at 003004c: ``new_gelu`` (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))),
  ``bias=config.bias`` in every Linear and LayerNorm, and ``configure_optimizers``: the weights of
  ``torch.nn.Linear`` decay, biases, LayerNorm and Embedding weights do not, and the output layer
  tied to ``wte`` is taken out of the decayed set (``decay.remove('lm_head.weight')``).
* ``sls/Ken_sls.py`` and ``sls/ken_base.py`` at 003004c: ``KenSLS(..., c = 0.3, clip_grad = True)``:
  ``init_step_size=0.1``, ``beta=0.999``, ``momentum=0.9``, ``beta_b=0.9``, 100 trials, a
  smoothing of 0.99 on both sides, each search from the previous step size / 0.999, the gradient
  clipped to 0.25.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.config import DecayScope, Precision
from experiments.data import DataSpec
from experiments.errors import ConfigError
from experiments.param_groups import parameter_groups
from experiments.runner import build
from experiments.training.schedule import cosine_warmup

from harness_utils import run_config
from sweep_utils import commands, compose, dry_run, job_overrides

pytest.importorskip("transformers")

LEARNING_RATE, MIN_LR, MAX_ITERS = 6e-4, 6e-5, 600_000  # train.py and train_old.py; config/train_gpt2.py


def column(capsys, tmp_path, name: str, *extra: str):
    """The run of GPT-2 column ``name`` as ``run_multiple.py gpt2`` composes it (plus ``extra``)."""
    out = dry_run(capsys, "gpt2", "--columns", name, "--seeds", "1", "--root", str(tmp_path))
    (cmd,) = commands(out)
    return compose([*job_overrides(cmd), *extra])


def nanogpt_lr(it: int, warmup_iters: int) -> float:
    """train_old.py's get_lr (90c8870), with the fork's learning_rate, min_lr and lr_decay_iters."""
    if it < warmup_iters:
        return LEARNING_RATE * it / warmup_iters
    if it > MAX_ITERS:
        return MIN_LR
    ratio = (it - warmup_iters) / (MAX_ITERS - warmup_iters)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LR)


def schedule_lr(cfg, it: int) -> float:
    schedule = cfg.optimizer.schedule
    factor = cosine_warmup(schedule.warmup_fraction, schedule.final_factor, cfg.trainer.max_steps,
                           schedule.warmup_steps, schedule.cosine_after_warmup)
    return cfg.optimizer.build.lr * factor(it)


STEPS = [0, 1, 999, 1999, 2000, 2001, 150_000, 300_000, 599_999, 600_000]


def test_adam_column_is_train_old(capsys, tmp_path):
    cfg = column(capsys, tmp_path, "adam")
    build_cfg = cfg.optimizer.build
    assert (build_cfg._target_, build_cfg.lr, list(build_cfg.betas), build_cfg.weight_decay) == (
        "torch.optim.AdamW", LEARNING_RATE, [0.9, 0.95], 0.1
    )
    assert cfg.optimizer.weight_decay_on.name == "linear"
    for it in STEPS:
        assert schedule_lr(cfg, it) == pytest.approx(nanogpt_lr(it, warmup_iters=2000), rel=1e-12, abs=1e-15)
    trainer = cfg.trainer
    assert (trainer.batch_size, trainer.accumulation_steps) == (12, 5 * 8)  # 491,520 tokens per step
    assert trainer.accumulation_sum is True
    assert (trainer.precision, trainer.tf32, trainer.max_grad_norm) == (Precision.fp16, True, 1.0)
    assert (trainer.max_steps, cfg.dataset.build.block_size) == (MAX_ITERS, 1024)


def test_adam_in_train_py_pipeline_is_kept_as_an_option(capsys, tmp_path):
    cfg = compose(["+experiment=paper/gpt2_openwebtext", "optimizer=adam",
                   "+experiment/optimizers/gpt2=adam_train_py"])
    assert (cfg.optimizer.build._target_, cfg.optimizer.weight_decay_on.name) == ("torch.optim.AdamW", "linear")
    for it in STEPS:
        assert schedule_lr(cfg, it) == pytest.approx(nanogpt_lr(it, warmup_iters=0), rel=1e-12, abs=1e-15)
    trainer = cfg.trainer
    assert (trainer.batch_size, trainer.accumulation_steps, trainer.accumulation_sum) == (18, 28, False)
    assert (trainer.precision, trainer.tf32) == (Precision.fp32, True)


def test_line_search_pipeline_is_train_py(capsys, tmp_path):
    for name in ("salsa", "sls", "sgd"):
        trainer = column(capsys, tmp_path, name).trainer
        assert (trainer.batch_size, trainer.accumulation_steps, trainer.accumulation_sum) == (18, 28, False)
        assert (trainer.precision, trainer.tf32, trainer.max_grad_norm) == (Precision.fp32, True, 1.0)
        assert (trainer.max_steps, trainer.compile) == (MAX_ITERS, True)


def test_sgd_column_takes_the_commented_line_at_its_word(capsys, tmp_path):
    cfg = column(capsys, tmp_path, "sgd")
    assert (cfg.optimizer.build.lr, cfg.optimizer.build.momentum) == (LEARNING_RATE, 0.0)
    for it in STEPS:
        assert schedule_lr(cfg, it) == pytest.approx(nanogpt_lr(it, warmup_iters=0), rel=1e-12, abs=1e-15)


def test_kensls_option(capsys, tmp_path):
    cfg = compose(["+experiment=paper/gpt2_openwebtext", "optimizer=salsa_class",
                   "+experiment/optimizers/gpt2=kensls"])
    opt = build(cfg, "optimizer", params=[nn.Parameter(torch.zeros(3))])
    group = opt.param_groups[0]  # the one home of the hyperparameters
    assert (group["c"], group["betas"][2], group["backtrack"], group["max_trials"]) == pytest.approx((0.3, 0.99, 0.9, 100))
    assert group["growth"] == pytest.approx(1 / 0.999, rel=1e-15)
    # use_mv: trials along the momentum direction; step_along "search": the step goes along it too.
    assert (group["use_mv"], group["step_along"], group["speed_up"]) == (True, "search", False)
    assert opt.diagnostics["step_size"] == 0.1
    assert cfg.trainer.max_grad_norm == 0.25  # clip 1.0 in the closure, then 0.25 in KenSLS.step


def gpt2_model(cfg, tokens: int = 50257, **overrides):
    """The run's model, with ``overrides`` to its build block, for a tokenizer of ``tokens`` ids."""
    build_cfg = OmegaConf.merge(cfg.model.build, overrides)
    return build(OmegaConf.create({"model": {"build": build_cfg}}), "model",
                 spec=DataSpec("language_modeling", vocab_size=tokens))


TINY_GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": None}


def test_model_has_no_biases_and_the_tanh_gelu(capsys, tmp_path):
    cfg = compose(["+experiment=paper/gpt2_openwebtext"])
    with torch.device("meta"):
        full = gpt2_model(cfg)
    # nanoGPT's GPT-2 124M with bias=False: 124,475,904 - 102,144 biases.
    assert sum(p.numel() for p in full.parameters()) == 124_373_760
    model = gpt2_model(cfg, 64, **TINY_GPT2)
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert not [name for name in model.state_dict() if name.endswith(".bias")]
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layer_norms) == 2 * 2 + 1 and all(m.bias is None for m in layer_norms)
    x = torch.linspace(-6, 6, 101)
    new_gelu = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    activation = model.model.transformer.h[0].mlp.act
    torch.testing.assert_close(activation(x), new_gelu, rtol=0, atol=0)
    assert not torch.allclose(activation(x), nn.functional.gelu(x))


def test_decayed_parameters_are_nanogpts(capsys, tmp_path):
    cfg = column(capsys, tmp_path, "adam")
    model = gpt2_model(cfg, 64, **TINY_GPT2)
    names = {id(p): name.removeprefix("model.") for name, p in model.named_parameters()}
    decayed, kept = parameter_groups(model, DecayScope(cfg.optimizer.weight_decay_on))
    per_layer = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
    assert sorted(names[id(p)] for p in decayed["params"]) == sorted(
        f"transformer.h.{i}.{suffix}" for i in range(2) for suffix in per_layer
    )
    assert sorted(names[id(p)] for p in kept["params"]) == sorted(
        ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"]
        + [f"transformer.h.{i}.{norm}.weight" for i in range(2) for norm in ("ln_1", "ln_2")]
    )
    assert model.model.lm_head.weight is model.model.transformer.wte.weight  # tied, and not decayed
    opt = build(cfg, "optimizer", params=parameter_groups(model, DecayScope.linear))
    assert [group["weight_decay"] for group in opt.param_groups] == [0.1, 0.0]


DIGITS = ["model=mlp", "trainer.max_steps=1", "trainer.batch_size=16", "trainer.accumulation_steps=4",
          "trainer.eval_interval=1"]


def final_parameters(run_dir) -> list[torch.Tensor]:
    from experiments.checkpoint import PAYLOAD_KEYS, load_latest_checkpoint

    return list(load_latest_checkpoint(run_dir, PAYLOAD_KEYS)["model"].values())


def test_summed_micro_batch_gradients(tmp_path):
    """train_old.py: the gradient of the summed micro-batch losses; for SGD at step size eta that is
    the mean's gradient at 4 eta (4 micro-batches of equal size)."""
    summed = run_config(["optimizer=sgd", "optimizer.build.lr=0.01", "trainer.accumulation_sum=true", *DIGITS],
                        tmp_path / "sum")
    mean = run_config(["optimizer=sgd", "optimizer.build.lr=0.04", *DIGITS], tmp_path / "mean")
    assert summed["final_loss"] == pytest.approx(mean["final_loss"], rel=1e-6)  # the logged loss is the mean
    for a, b in zip(final_parameters(tmp_path / "sum"), final_parameters(tmp_path / "mean")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="accumulation_sum"):
        run_config(["optimizer=salsa", "trainer.accumulation_sum=true", *DIGITS], tmp_path / "salsa")


def test_tf32_is_set_before_the_model_and_recorded(tmp_path, monkeypatch):
    seen = {}
    original = build

    def spying_build(cfg, group, **objects):
        if group == "model":
            seen["tf32"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        return original(cfg, group, **objects)

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    monkeypatch.setattr("experiments.runner.build", spying_build)
    try:
        summary = run_config(["trainer.tf32=true", "trainer.max_steps=1", "trainer.eval_interval=1"], tmp_path)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen["tf32"] == (True, True)
    assert summary["tf32"] == {"matmul": True, "cudnn": True}
