"""Each model family end to end through the harness, on the local fixtures of the data tests:
GLUE with a small BERT, OpenWebText blocks with a small GPT-2, CIFAR-10 with the ResNet-34."""

from __future__ import annotations

import json
import math

import pytest

from harness_utils import run_config
from test_data_cifar import cifar10_dir  # noqa: F401  (fixtures)
from test_data_glue import save_glue, tokenizer_dir  # noqa: F401
from test_data_lm_text import owt_dir  # noqa: F401

pytest.importorskip("transformers")
LINE_SEARCH = ["optimizer=salsa", "trainer.batch_size=2", "trainer.max_steps=3", "trainer.eval_interval=3"]


def assert_finished(run_dir, metric: str) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 3
    assert math.isfinite(summary["final_loss"]) and metric in summary
    return summary


def test_glue_with_small_bert(tmp_path, tokenizer_dir):  # noqa: F811
    save_glue(tmp_path / "data", "sst2")
    run_config(
        ["dataset=sst2", "model=small_bert", f"model.tokenizer={tokenizer_dir}", f"data_dir={tmp_path / 'data'}",
         "trainer=paper_nlp", *LINE_SEARCH, "trainer.progress=false", "trainer.device=cpu"],
        tmp_path / "run",
    )
    summary = assert_finished(tmp_path / "run", "final_val_accuracy")
    assert summary["forwards"] > summary["steps"]  # the line search evaluated trial points


def test_openwebtext_with_small_gpt2(tmp_path, owt_dir):  # noqa: F811
    run_config(
        ["dataset=openwebtext", "model=gpt2", f"data_dir={owt_dir}", "dataset.build.block_size=16",
         "dataset.build.token_budget=256", "dataset.build.val_fraction=0.2", "model.build.n_layer=1",
         "model.build.n_head=2", "model.build.n_embd=16", "model.build.block_size=16", *LINE_SEARCH],
        tmp_path / "run",
    )
    summary = assert_finished(tmp_path / "run", "final_val_perplexity")
    assert summary["final_val_perplexity"] == pytest.approx(math.exp(summary["final_val_loss"]))


def test_cifar10_with_resnet34(tmp_path, cifar10_dir):  # noqa: F811
    run_config(
        ["dataset=cifar10", "model=resnet34_cifar", f"data_dir={cifar10_dir}", *LINE_SEARCH,
         "optimizer.build.speed_up=false"],
        tmp_path / "run",
    )
    assert_finished(tmp_path / "run", "final_val_accuracy")


def test_bf16_autocast_run_tracks_fp32(tmp_path):
    runs = {p: run_config([f"trainer.precision={p}", "trainer.epochs=2"], tmp_path / p) for p in ("bf16", "fp32")}
    assert runs["bf16"]["status"] == "finished"
    assert runs["bf16"]["final_val_accuracy"] > 0.5  # chance is 0.1
    assert runs["bf16"]["final_val_loss"] == pytest.approx(runs["fp32"]["final_val_loss"], rel=0.2)


@pytest.mark.slow
def test_compiled_model_run(tmp_path):
    summary = run_config(["trainer.compile=true", "trainer.max_steps=10"], tmp_path)
    assert summary["status"] == "finished" and math.isfinite(summary["final_loss"])
