"""conf/model: one file per model, each building through Hydra with the runner's call."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from experiments.data import DataSpec

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
IMAGE_MODELS = ["mlp", "small_cnn", "resnet34_cifar", "resnet50"]
TEXT_MODELS = ["small_bert", "bert", "roberta", "gpt2", "small_gpt2"]


def load(name: str):
    return OmegaConf.load(CONF / f"{name}.yaml")


def test_one_file_per_model():
    assert sorted(path.stem for path in CONF.glob("*.yaml")) == sorted(IMAGE_MODELS + TEXT_MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS + TEXT_MODELS)
def test_each_file_names_itself_a_tokenizer_and_a_builder_that_takes_its_keys(name):
    cfg = load(name)
    assert set(cfg) == {"name", "tokenizer", "build"} and cfg.name == name
    builder = get_object(cfg.build._target_)
    parameters = inspect.signature(builder).parameters
    assert next(iter(parameters)) == "spec"
    assert {key for key in cfg.build if not key.startswith("_")} <= set(parameters) - {"spec"}
    typing.get_type_hints(builder)  # resolvable: the runner checks the build keys' types with them


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_have_no_tokenizer(name):
    assert load(name).tokenizer is None


def test_small_bert_requires_a_tokenizer_and_gpt2_uses_the_offline_bpe():
    assert OmegaConf.is_missing(load("small_bert"), "tokenizer")
    assert load("gpt2").tokenizer == "gpt2-offline"


@pytest.mark.parametrize(
    ("name", "spec", "batch"),
    [
        (
            "mlp",
            DataSpec("classification", num_classes=10, input_shape=(1, 8, 8)),
            {"inputs": torch.randn(2, 1, 8, 8)},
        ),
        (
            "small_cnn",
            DataSpec("classification", num_classes=10, input_shape=(1, 8, 8)),
            {"inputs": torch.randn(2, 1, 8, 8)},
        ),
        (
            "small_bert",
            DataSpec("classification", num_classes=2, vocab_size=30, pad_token_id=0),
            {"input_ids": torch.randint(1, 30, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)},
        ),
    ],
)
def test_the_small_models_build_and_run_from_their_conf(name, spec, batch):
    model = instantiate(load(name).build, spec=spec)
    assert model(batch).shape == (2, spec.num_classes)


def test_the_gpt2_conf_builds_nanogpts_124m():
    with torch.device("meta"):
        model = instantiate(load("gpt2").build, spec=DataSpec("language_modeling", vocab_size=50257))
    assert model.model.config.vocab_size == 50304
    assert 124e6 < sum(p.numel() for p in model.parameters()) < 125e6
