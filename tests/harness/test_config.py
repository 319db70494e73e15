"""Every config composes and builds; bad overrides fail before any work, naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from experiments.data import DataSpec
from experiments.errors import ConfigError
from experiments.preflight import check_build_blocks, check_values

from harness_utils import CONF, compose_run_config

ROOT = CONF.parent


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("optimizer", choices("optimizer"))
def test_every_optimizer_config_composes_and_builds(optimizer):
    cfg = compose_run_config([f"optimizer={optimizer}"])
    check_values(cfg)
    check_build_blocks(cfg)
    model = torch.nn.Linear(3, 2)
    opt = instantiate(cfg.optimizer.build, _partial_=True, _convert_="all")(params=model.parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    assert cfg.optimizer.label


@pytest.mark.parametrize("model", choices("model"))
def test_every_model_config_composes(model):
    overrides = [f"model={model}"]
    if model == "small_bert":
        overrides.append("model.tokenizer=some/tokenizer/dir")  # mandatory for this model
    cfg = compose_run_config(overrides)
    check_build_blocks(cfg)
    assert cfg.model.build["_target_"].startswith("experiments.models.")


@pytest.mark.parametrize("dataset", choices("dataset"))
def test_every_dataset_config_composes(dataset):
    model = "small_bert" if dataset in ("sst2", "mrpc", "qnli", "mnli") else "small_cnn"
    overrides = [f"dataset={dataset}", f"model={model}", "model.tokenizer=some/dir"] if model == "small_bert" else [f"dataset={dataset}"]
    cfg = compose_run_config(overrides)
    check_build_blocks(cfg)
    assert cfg.dataset.build["_target_"].startswith("experiments.data.")


def test_small_models_build_offline():
    for model, spec in (
        ("small_cnn", DataSpec("classification", num_classes=10, input_shape=(1, 8, 8))),
        ("mlp", DataSpec("classification", num_classes=10, input_shape=(1, 8, 8))),
    ):
        cfg = compose_run_config([f"model={model}"])
        net = instantiate(cfg.model.build, _partial_=True, _convert_="all")(spec=spec)
        logits = net({"inputs": torch.zeros(4, 1, 8, 8)})
        assert logits.shape == (4, 10)


@pytest.mark.parametrize(
    ("override", "exception", "key"),
    [
        ("trainer.batchsize=3", ConfigCompositionException, "batchsize"),
        ("trainer.batch_size=many", ConfigCompositionException, "batch_size"),
        ("trainer.precision=fp8", ConfigCompositionException, "precision"),
        ("optimizer=foo", ConfigCompositionException, "foo"),
        ("seeds=3", ConfigCompositionException, "seeds"),
    ],
)
def test_bad_overrides_fail_at_composition_naming_the_key(override, exception, key):
    with pytest.raises(exception) as error:
        compose_run_config([override])
    text = str(error.value) + str(error.value.__cause__ or "")
    assert key in text


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.batch_size=-1"], "trainer.batch_size"),
        (["trainer.loss_smoothing=1.5"], "trainer.loss_smoothing"),
        (["+optimizer.build.cc=0.3", "optimizer=l4_adam"], "optimizer.build.cc"),
        (["optimizer=adam", "optimizer.build.lr=fast"], "optimizer.build.lr"),
        (["optimizer=salsa_class", "+optimizer.build.foo=1"], "optimizer.build.foo"),
        (["optimizer.build._target_=optim.Nope"], "optimizer.build._target_"),
        (["model.build.channels=[8]", "+model.build.widht=3"], "model.build.widht"),
    ],
)
def test_bad_values_fail_before_building_naming_the_key(overrides, key):
    cfg = compose_run_config(overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_values(cfg)
        check_build_blocks(cfg)


def test_main_exits_nonzero_with_a_clear_message_and_no_success_record(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", "trainer.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "trainer.batch_size must be positive" in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from experiments.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3
