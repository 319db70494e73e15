"""Every config composes and builds; a key its builder does not take fails before any work, naming
it. (Bad overrides through ``main.py``: ``test_bad_inputs.py`` and ``test_preflight.py``.)"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from experiments.data import DataSpec
from experiments.errors import ConfigError
from experiments.preflight import check_build_blocks, check_values

from harness_utils import CONF, compose_run_config



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
    ("overrides", "key"),
    [
        (["model.build.channels=[8]", "+model.build.widht=3"], "model.build.widht"),
    ],
)
def test_bad_values_fail_before_building_naming_the_key(overrides, key):
    cfg = compose_run_config(overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_values(cfg)
        check_build_blocks(cfg)


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
