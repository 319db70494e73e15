"""Every conf/dataset file names a builder that accepts exactly its keys."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from experiments.data import DataBundle

DATASET_CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
EXPECTED = {"digits", "sst2", "mrpc", "qnli", "mnli", "cifar10", "cifar100", "imagenet", "openwebtext"}


def resolved(path: Path) -> dict:
    """The dataset config at ``path`` with the run-level keys it interpolates filled in."""
    run = OmegaConf.create({"model": {"tokenizer": "some-tokenizer"}, "data_dir": "/data", "seed": 0})
    run.dataset = OmegaConf.load(path)
    return OmegaConf.to_container(run.dataset, resolve=True)


def test_every_dataset_choice_has_a_config():
    assert EXPECTED <= {path.stem for path in DATASET_CONF.glob("*.yaml")}


@pytest.mark.parametrize("path", sorted(DATASET_CONF.glob("*.yaml")), ids=lambda path: path.stem)
def test_config_keys_bind_to_its_builder(path):
    config = resolved(path)
    assert config["name"] == path.stem
    build = config["build"]
    builder = get_method(build.pop("_target_"))
    inspect.signature(builder).bind(**build)  # raises TypeError on a key the builder lacks


def test_default_dataset_instantiates():
    bundle = instantiate(OmegaConf.load(DATASET_CONF / "digits.yaml").build)
    assert isinstance(bundle, DataBundle) and bundle.name == "digits"
