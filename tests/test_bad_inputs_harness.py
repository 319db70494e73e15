"""A table of bad inputs to ``main.py``: each fails before training with one clear message
naming what is wrong, a non-zero exit code, and no run record claiming success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness_utils import CONF, main_in_process

ROOT = CONF.parent
MISSING = "/nonexistent/data"

CASES = [
    # (overrides, what the message names, exit code: 2 = a bad input, found by Hydra or by our checks)
    (["trainer.batchsize=3"], "batchsize", 2),
    (["trainer.batch_size=many"], "batch_size", 2),
    (["trainer.precision=fp8"], "precision", 2),
    (["trainer.device=tpu"], "device", 2),
    (["optimizer=foo"], "foo", 2),
    (["seeds=3"], "seeds", 2),
    (["trainer.batch_size=0"], "trainer.batch_size must be positive", 2),
    (["trainer.batch_size=-4"], "trainer.batch_size must be positive", 2),
    (["trainer.epochs=0"], "trainer.epochs must be positive", 2),
    (["trainer.max_steps=-1"], "trainer.max_steps must be positive", 2),
    (["trainer.loss_smoothing=1.5"], "trainer.loss_smoothing", 2),
    (["trainer.eval_interval=-1"], "trainer.eval_interval", 2),
    (["trainer.max_bad_steps=0"], "trainer.max_bad_steps", 2),
    (["optimizer=salsa_class", "+optimizer.build.c=1.5"], "c must be in (0, 1)", 2),
    (["optimizer=salsa_class", "+optimizer.build.backtrack=0"], "backtrack must be in (0, 1)", 2),
    (["optimizer=salsa_class", "+optimizer.build.init_step_size=-1"], "init_step_size must be positive", 2),
    (["optimizer=salsa_class", "+optimizer.build.direction=lion"], "direction must be 'adam' or 'sgd'", 2),
    (["optimizer=salsa_class", "+optimizer.build.cc=0.3"], "optimizer.build.cc", 2),
    (["optimizer=adam", "optimizer.build.lr=fast"], "optimizer.build.lr must be float", 2),
    (["optimizer.build._target_=optim.Nope"], "cannot import 'optim.Nope'", 2),
    (["optimizer=adam", "+experiment/optimizers/nlp=adam", "optimizer.build._target_=optim.SaLSA",
      "~optimizer.build.lr", "~optimizer.build.betas", "~optimizer.build.amsgrad"],
     "optimizer.schedule=null", 2),
    (["dataset=cifar10", f"data_dir={MISSING}"], f"'cifar10' not found in {MISSING}", 2),
    (["dataset=imagenet", f"data_dir={MISSING}"], "'imagenet' not found", 2),
    (["dataset=sst2", "model=small_bert"], "model.tokenizer", 2),
    (["model=small_bert", "model.tokenizer=x"], "vocab_size", 2),
    (["logger=wandb", "logger.wandb.mode=online"], "needs credentials", 2),
    (["trainer.device=cuda"], "no CUDA device", 2),
]


def run_main(overrides: list[str], run_dir: Path, capsys) -> tuple[int, str]:
    code = main_in_process([*overrides, "trainer.progress=false", f"hydra.run.dir={run_dir}"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "message", "code"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_fails_before_training(overrides, message, code, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with wandb credentials
    if "trainer.device=cuda" in overrides:
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("a GPU is present")
    exit_code, stderr = run_main(overrides, tmp_path / "run", capsys)
    assert exit_code == code
    assert message in stderr
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] != "finished"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no training happened


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_a_fresh_run_does_not_overwrite_an_existing_record(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert run_main(["trainer.max_steps=2"], tmp_path, capsys)[0] == 0
    before = (tmp_path / "summary.json").read_text()
    code, stderr = run_main(["trainer.max_steps=2"], tmp_path, capsys)
    assert code == 2 and "already holds a run record" in stderr
    assert (tmp_path / "summary.json").read_text() == before
