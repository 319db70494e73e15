"""Bad inputs to ``main.py``, among them those that used to run silently, be taken for something
else, or fail late in a library's words: each ends it before any work with exit status 2 and one
line on stderr that names the key, the value and what is allowed, and writes nothing (the run
directory that Hydra made for the run is removed again). What Hydra itself finds (unknown keys
without ``+``, interpolations, run directories it cannot make) and the numbers and names the
checks refuse: ``test_preflight.py``."""

from __future__ import annotations

import json

import pytest

from harness_utils import CONF, main_in_process

pytestmark = pytest.mark.reliability

ROOT = CONF.parent
MISSING = "/nonexistent/data"

# (overrides, what the one line must say: the key, the value, what is allowed)
CASES = [
    # Keys added with `+` that the schema does not have (Hydra's own advice after a typo).
    (["+trainer.batchsize=3"], ["trainer.batchsize=3 is not a setting", "did you mean trainer.batch_size?"]),
    (["+sed=3"], ["sed=3 is not a setting", "did you mean seed?"]),
    (["+trainer.accumulate=2"], ["trainer.accumulate=2 is not a setting", "trainer.accumulation_steps"]),
    (["+optimizer.lr=0.1"], ["optimizer.lr=0.1 is not a setting", "optimizer has: name, label, build"]),
    (["+logger.mode=offline"], ["logger.mode=offline is not a setting", "logger has: wandb"]),
    # Strings for booleans, numbers for the wrong kind of number, lists of the wrong shape.
    (["optimizer.build.speed_up=maybe"], ["optimizer.build.speed_up must be bool, got str 'maybe'"]),
    (["optimizer=salsa_class", "+optimizer.build.speed_up=maybe"],
     ["optimizer.build.speed_up must be bool, got str 'maybe'"]),
    (["optimizer=sls", "optimizer.build.speed_up=1"], ["optimizer.build.speed_up must be bool, got int 1"]),
    (["optimizer.build.c=abc"], ["optimizer.build.c must be float, got str 'abc'"]),  # the column lists c
    (["optimizer=salsa_class", "+optimizer.build.max_trials=2.5"],
     ["optimizer.build.max_trials must be int, got float 2.5"]),
    (["optimizer=salsa_class", "+optimizer.build.betas=[0.9,0.999]"],
     ["optimizer.build.betas must be a list of 3 (float, float, float), got list [0.9, 0.999]"]),
    (["optimizer=salsa_class", "+optimizer.build.grad_term=cube"],
     ["optimizer.build.grad_term must be 'squared' or 'norm', got str 'cube'"]),
    (["optimizer=adam", "optimizer.build.betas=[0.9,fast]"],
     ["optimizer.build.betas must be a list of 2 (float, float), got list [0.9, 'fast']"]),
    (["optimizer=adam", "optimizer.build.amsgrad=yes"],
     ["optimizer.build.amsgrad must be bool, got str 'yes'"]),
    (["optimizer=sgd", "optimizer.build.momentum=[0.9]"],
     ["optimizer.build.momentum must be float, got list [0.9]"]),
    (["optimizer=l4_adam", "optimizer.build.tau=long"], ["optimizer.build.tau must be float, got str 'long'"]),
    # Keys a factory hands on (the paper's presets) are checked against the class they reach.
    (["+optimizer.build.cc=0.3"],
     ["optimizer.build.cc: SaLSA (which optim.presets.paper_optimizer passes it to)", "no parameter 'cc'"]),
    (["optimizer.build.preset=adamslss"], ["optimizer.build.preset must be", "'adamsls'", "got 'adamslss'"]),
    # Values the optimizer's constructor rejects: caught on a stand-in before the data is built.
    (["optimizer=adam", "optimizer.build.lr=-1"],
     ["optimizer.build.lr=-1 is rejected by torch.optim.Adam: Invalid learning rate: -1"]),
    (["optimizer=sgd", "optimizer.build.momentum=-0.5"],
     ["optimizer.build.momentum=-0.5 is rejected by torch.optim.SGD: Invalid momentum value: -0.5"]),
    (["optimizer=salsa_class", "+optimizer.build.c=1.5"],
     ["optimizer.build.c=1.5 is rejected by optim.SaLSA: c must be in (0, 1)"]),
    # Out of the range a library would catch late, in its own words.
    (["seed=-1"], ["seed must be in [0, 4294967295] (numpy's seeds), got -1"]),
    (["seed=4294967296"], ["seed must be in [0, 4294967295] (numpy's seeds), got 4294967296"]),
    (["dataset.build.val_fraction=1.5"], ["dataset.build.val_fraction must be in (0, 1), got float 1.5"]),
    (["dataset.build.val_fraction=0"], ["dataset.build.val_fraction must be in (0, 1), got int 0"]),
    (["dataset.build.seed=-3"], ["dataset.build.seed must be in [0, 4294967295], got int -3"]),
    (["dataset.build.val_fraction=most"], ["dataset.build.val_fraction must be float, got str 'most'"]),
    (["model.build.dropout=1.5"], ["model.build.dropout must be in [0, 1], got float 1.5"]),
    (["model.build.batch_norm=maybe"], ["model.build.batch_norm must be bool, got str 'maybe'"]),
    (["model.build.channels=[16,wide]"],
     ["model.build.channels must be a list of int, got list [16, 'wide']"]),
    # A value the schema's enums do not hold (Hydra's merge names them).
    (["trainer.precision=fp8"],
     ["trainer.precision=fp8", "Invalid value 'fp8', expected one of [fp32, bf16, fp16]"]),
    (["trainer.device=tpu"],
     ["trainer.device=tpu", "Invalid value 'tpu', expected one of [auto, cpu, cuda]"]),
    # The trainer's counts and fractions out of their range.
    (["trainer.epochs=0"], ["trainer.epochs must be positive, got 0"]),
    (["trainer.max_steps=-1"], ["trainer.max_steps must be positive, got -1"]),
    (["trainer.loss_smoothing=1.5"], ["trainer.loss_smoothing must be in [0, 1), got 1.5"]),
    (["trainer.eval_interval=-1"], ["trainer.eval_interval must be >= 0, got -1"]),
    (["trainer.max_bad_steps=0"], ["trainer.max_bad_steps must be positive, got 0"]),
    # A build block against its class: an unknown key, a string for a float, a class that is not there.
    (["optimizer=salsa_class", "+optimizer.build.cc=0.3"],
     ["optimizer.build.cc: optim.SaLSA has no parameter 'cc'; did you mean optimizer.build.c?"]),
    (["optimizer=adam", "optimizer.build.lr=fast"], ["optimizer.build.lr must be float, got str 'fast'"]),
    (["optimizer.build._target_=optim.Nope"], ["optimizer.build._target_: cannot import 'optim.Nope'"]),
    # A line search given the baselines' schedule.
    (["optimizer=adam", "+experiment/optimizers/nlp=adam", "optimizer.build._target_=optim.SaLSA",
      "~optimizer.build.lr", "~optimizer.build.betas", "~optimizer.build.amsgrad"],
     ["chooses its own step size; set optimizer.schedule=null"]),
    # What the run needs and does not find: data, a tokenizer's vocabulary, wandb's credentials, a GPU.
    (["dataset=cifar10", f"data_dir={MISSING}"], [f"dataset 'cifar10' not found in {MISSING}"]),
    (["dataset=imagenet", f"data_dir={MISSING}"], [f"dataset 'imagenet' not found in {MISSING}"]),
    (["model=small_bert", "model.tokenizer=x"], ["this model needs DataSpec.vocab_size"]),
    (["logger=wandb", "logger.wandb.mode=online"],
     ["logger.wandb.mode=online needs credentials: run `wandb login` or set WANDB_API_KEY"]),
    (["trainer.device=cuda"], ["trainer.device=cuda but no CUDA device is available"]),
]


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main_in_process(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("overrides", "says"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_naming_key_value_and_what_is_allowed(overrides, says, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with wandb credentials
    if "trainer.device=cuda" in overrides:
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("a GPU is present")
    run_dir = tmp_path / "run"
    code, lines = run_main([*overrides, "trainer.progress=false", f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(text in lines[0] for text in says), lines[0]
    assert not run_dir.exists()  # Hydra made it for this run; the refused run removes it again


# (overrides, what the message names): refused before training with exit 2, but not in one line yet
# (OmegaConf's text of a missing mandatory value spans three lines).
NOT_ONE_LINE = [
    (["dataset=sst2", "model=small_bert"], "model.tokenizer", 2),
]


@pytest.mark.parametrize(("overrides", "message", "code"), NOT_ONE_LINE,
                         ids=[" ".join(c[0]) for c in NOT_ONE_LINE])
def test_bad_input_fails_before_training(overrides, message, code, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    exit_code = main_in_process([*overrides, "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}"])
    stderr = capsys.readouterr().err
    assert exit_code == code
    assert message in stderr
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] != "finished"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no training happened


def test_the_table_keeps_every_case():
    assert len(CASES) == 46


def test_a_directory_that_was_there_before_is_left_in_place(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    existing = tmp_path / "mine"
    existing.mkdir()
    code, _ = run_main(["seed=-1", f"hydra.run.dir={existing}"], capsys)
    assert code == 2 and existing.is_dir() and not any(existing.iterdir())


def test_an_empty_run_dir_is_refused_and_the_working_directory_stays_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # main.py finds conf/ beside itself, not in the working directory
    code, lines = run_main(["trainer.max_steps=1", "hydra.run.dir="], capsys)
    assert code == 2
    assert lines == ["error: hydra.run.dir is empty: the record would be written into the working "
                     "directory; give a folder, e.g. hydra.run.dir=outputs/<name>"]
    assert not any(tmp_path.iterdir())


def test_wandb_mode_from_the_environment_is_what_is_checked_and_what_runs(tmp_path, capsys, monkeypatch):
    """WANDB_MODE=offline used to pass the credential check and then run online (the config's
    mode went to wandb.init) and fail after the data was built; now it runs offline."""
    pytest.importorskip("wandb")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "offline"
    argv = ["logger=wandb", "logger.wandb.mode=online", "trainer.max_steps=2", "trainer.progress=false",
            "trainer.device=cpu", f"hydra.run.dir={run_dir}"]
    assert run_main(argv, capsys)[0] == 0
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1

    monkeypatch.setenv("WANDB_MODE", "online")
    code, lines = run_main([*argv[:-1], f"hydra.run.dir={tmp_path / 'online'}"], capsys)
    assert code == 2 and "WANDB_MODE=online needs credentials" in lines[0] and len(lines) == 1
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    code, lines = run_main([*argv[:-1], f"hydra.run.dir={tmp_path / 'odd'}"], capsys)
    assert code == 2 and "WANDB_MODE='sometimes' in the environment: must be one of" in lines[0]
    assert not (tmp_path / "online").exists() and not (tmp_path / "odd").exists()
