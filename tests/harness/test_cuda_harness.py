"""The harness on a CUDA device: every model family trains a few steps, bf16 autocast, a
``torch.compile``d model, a resume that continues the CUDA random stream, and NCCL (one rank, in
this process and through ``torchrun main.py``).

Marked ``cuda``: ``python -m pytest -m cuda`` selects them; without a CUDA device they are
skipped (``tests/conftest.py``). ``CUDA_TESTS_ON_CPU=1`` runs what does not need a GPU on the
CPU as a dry run of the tests' own logic (``tests/cuda_utils.py``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from experiments import distributed
from experiments.checkpoint import list_checkpoints
from experiments.training import Callback, Trainer
from optim._evaluation import host_floats, rank_mean

from cuda_utils import device, require_bf16, require_real_cuda
from harness_utils import CONF, crash_then_resume, logged_rows, run_config
from ranks import free_port
from test_data_cifar import cifar10_dir  # noqa: F401  (fixtures)
from test_data_glue import save_glue, tokenizer_dir  # noqa: F401
from test_data_lm_text import owt_dir  # noqa: F401

pytestmark = pytest.mark.cuda
DEVICE = device()
ROOT = CONF.parent
ON_DEVICE = [f"trainer.device={DEVICE.type}"]  # after harness_utils.FAST's trainer.device=cpu: wins
LINE_SEARCH = ["optimizer=salsa", "trainer.batch_size=2", "trainer.max_steps=3", "trainer.eval_interval=3"]
TORCHRUN_TIMEOUT_S = 240.0


class ForwardWatch(Callback):
    """What the trained module saw while the trainer ran, from a forward hook: the devices of its
    parameters and outputs, its output dtypes, and its forwards by kind (with gradients: the first
    evaluations; in train mode without: the line search's trials; in eval mode)."""

    def __init__(self) -> None:
        self.seen: dict = {"param_devices": set(), "output_devices": set(), "output_dtypes": set(),
                           "grad_forwards": 0, "trial_forwards": 0, "eval_forwards": 0}

    def on_fit_start(self, trainer: Trainer) -> None:
        self.handle = trainer.model.register_forward_hook(self._hook)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.handle.remove()

    def _hook(self, module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        seen = self.seen
        seen["param_devices"] |= {p.device.type for p in module.parameters()}
        seen["output_devices"].add(output.device.type)
        seen["output_dtypes"].add(output.dtype)
        if torch.is_grad_enabled():
            seen["grad_forwards"] += 1
        else:
            seen["trial_forwards" if module.training else "eval_forwards"] += 1


@pytest.fixture
def watched() -> ForwardWatch:
    return ForwardWatch()


def assert_trained_on_device(summary: dict, seen: dict, steps: int, metric: str) -> None:
    assert summary["status"] == "finished" and summary["steps"] == steps
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary[metric])
    assert seen["param_devices"] == {DEVICE.type} and seen["output_devices"] == {DEVICE.type}
    assert seen["grad_forwards"] == steps  # one first evaluation per step
    # Every trial point the search counted was evaluated by the module on the device.
    assert seen["trial_forwards"] == summary["forwards"] - steps > 0
    assert seen["eval_forwards"] > 0


# -- every model family ---------------------------------------------------------------------------


def test_glue_with_small_bert(tmp_path, tokenizer_dir, watched):  # noqa: F811
    save_glue(tmp_path / "data", "sst2")
    summary = run_config(
        ["dataset=sst2", "model=small_bert", f"model.tokenizer={tokenizer_dir}",
         f"data_dir={tmp_path / 'data'}", "trainer=paper_nlp", *LINE_SEARCH, *ON_DEVICE],
        tmp_path / "run", callbacks=[watched],
    )
    assert_trained_on_device(summary, watched.seen, 3, "final_val_accuracy")


def test_openwebtext_with_small_gpt2(tmp_path, owt_dir, watched):  # noqa: F811
    summary = run_config(
        ["dataset=openwebtext", "model=gpt2", f"data_dir={owt_dir}", "dataset.build.block_size=16",
         "dataset.build.token_budget=256", "dataset.build.val_fraction=0.2", "model.build.n_layer=1",
         "model.build.n_head=2", "model.build.n_embd=16", "model.build.block_size=16", *LINE_SEARCH,
         *ON_DEVICE],
        tmp_path / "run", callbacks=[watched],
    )
    assert_trained_on_device(summary, watched.seen, 3, "final_val_perplexity")
    assert summary["final_val_perplexity"] == pytest.approx(math.exp(summary["final_val_loss"]))


def test_cifar10_with_resnet34(tmp_path, cifar10_dir, watched):  # noqa: F811
    summary = run_config(
        ["dataset=cifar10", "model=resnet34_cifar", f"data_dir={cifar10_dir}", *LINE_SEARCH,
         "optimizer.build.speed_up=false", *ON_DEVICE],
        tmp_path / "run", callbacks=[watched],
    )
    assert_trained_on_device(summary, watched.seen, 3, "final_val_accuracy")


def test_digits_with_small_cnn_in_bf16_tracks_fp32(tmp_path, watched):
    require_bf16()
    runs = {}
    for precision in ("bf16", "fp32"):
        watched.seen["output_dtypes"].clear()
        runs[precision] = run_config([f"trainer.precision={precision}", "trainer.epochs=2", *ON_DEVICE],
                                     tmp_path / precision, callbacks=[watched])
        # The forward ran under autocast (bf16 logits) or in full precision.
        assert watched.seen["output_dtypes"] == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert watched.seen["param_devices"] == {DEVICE.type}
    assert runs["bf16"]["status"] == "finished" and runs["bf16"]["bad_steps"] == 0
    assert runs["bf16"]["final_val_accuracy"] > 0.5  # chance is 0.1
    assert runs["bf16"]["final_val_loss"] == pytest.approx(runs["fp32"]["final_val_loss"], rel=0.2)


def test_gradient_accumulation_replays_both_micro_batches_on_the_device(tmp_path, watched):
    summary = run_config(
        ["model=mlp", "model.build.dropout=0.2", "trainer.batch_size=16", "trainer.accumulation_steps=2",
         "trainer.max_steps=6", "trainer.eval_interval=6", *ON_DEVICE],
        tmp_path, callbacks=[watched],
    )
    seen = watched.seen
    assert summary["status"] == "finished" and summary["steps"] == 6 and summary["bad_steps"] == 0
    assert seen["param_devices"] == {DEVICE.type} and seen["output_devices"] == {DEVICE.type}
    assert seen["grad_forwards"] == 2 * 6  # both micro-batches of every step, with gradients
    # The optimizer counts the caller's L0 as one forward; each trial evaluates both micro-batches.
    assert seen["trial_forwards"] == 2 * (summary["forwards"] - 6) > 0


def test_a_compiled_model_trains_like_the_eager_one(tmp_path, monkeypatch):
    """``trainer.compile=true``: the closure calls the compiled module (counted through the
    inductor backend it compiles with); its first loss, before any step, is the eager model's."""
    from torch._inductor.compile_fx import compile_fx

    graphs: list[object] = []
    compile_ = torch.compile

    def counting_compile(model, **kwargs):
        def inductor(gm, example_inputs):
            graphs.append(gm)
            return compile_fx(gm, example_inputs)

        return compile_(model, backend=inductor)

    # An MLP: float32 matmuls (no TF32 by default) in both; inductor may lay convolutions out
    # differently, and TF32 convolutions of another algorithm differ by ~1e-3.
    common = ["model=mlp", "trainer.max_steps=8", "trainer.eval_interval=8", *ON_DEVICE]
    eager = run_config(common, tmp_path / "eager")
    monkeypatch.setattr(torch, "compile", counting_compile)
    torch._dynamo.reset()
    try:
        compiled = run_config([*common, "trainer.compile=true"], tmp_path / "compiled")
    finally:
        torch._dynamo.reset()
    assert compiled["status"] == "finished" and compiled["forwards"] > compiled["steps"] == 8
    # With gradients (first evaluations) and without (trials, evaluation): at least two graphs.
    assert len(graphs) >= 2
    rows = {name: _rows(tmp_path / name) for name in ("eager", "compiled")}
    assert [r["step"] for r in rows["compiled"]] == [r["step"] for r in rows["eager"]] == list(range(1, 9))
    # The same function of the same weights: float32 kernels that round differently (inductor's
    # fused ones against eager's) move the losses by ~1e-6, far from any accept/reject margin, so
    # the searches decide alike and the step sizes, host arithmetic on those decisions, agree.
    assert [r["step_size"] for r in rows["compiled"]] == [r["step_size"] for r in rows["eager"]]
    assert [r["forwards"] for r in rows["compiled"]] == [r["forwards"] for r in rows["eager"]]
    losses = {name: [r["loss"] for r in rows[name]] for name in rows}
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert compiled["final_val_loss"] == pytest.approx(eager["final_val_loss"], rel=1e-4)


def _rows(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_resume_continues_the_cuda_random_stream(tmp_path):
    """A run killed at step 10 and resumed from its step-8 checkpoint logs the straight run's
    rows: the dropout masks after the resume come from the restored CUDA generator state."""
    common = ["model=mlp", "model.build.dropout=0.2", "trainer.max_steps=14", "trainer.checkpoint_interval=4",
              "trainer.eval_interval=7", *ON_DEVICE]
    straight = run_config(common, tmp_path / "straight")
    resumed = crash_then_resume(common, tmp_path / "resumed", 10)
    assert resumed["status"] == "finished"
    assert logged_rows(tmp_path / "resumed") == logged_rows(tmp_path / "straight")
    assert resumed["final_loss"] == straight["final_loss"]
    a, b = (torch.load(list_checkpoints(tmp_path / run)[-1], weights_only=True)
            for run in ("straight", "resumed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    if DEVICE.type == "cuda":
        assert len(a["rng"]["cuda"]) == torch.cuda.device_count()  # the CUDA generators were saved


# -- NCCL -------------------------------------------------------------------------------------------


@pytest.fixture
def nccl_world(monkeypatch: pytest.MonkeyPatch):
    """This process as rank 0 of 1, joined through the harness's own setup (as under torchrun)."""
    require_real_cuda("NCCL")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    environ = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    process = distributed.setup(torch.device("cuda"), environ=environ)
    try:
        yield process
    finally:
        distributed.teardown()


def test_one_rank_nccl_group_from_the_harness_setup(nccl_world):
    assert dist.get_backend() == "nccl"  # a CUDA run joins with NCCL, not gloo
    assert nccl_world.device == torch.device("cuda", 0) and torch.cuda.current_device() == 0
    assert (nccl_world.rank, nccl_world.world_size, nccl_world.is_main) == (0, 1, True)
    distributed.barrier()
    assert distributed.broadcast_from_main("run dir") == "run dir"
    values = torch.tensor([1.5, -2.0], device="cuda")
    assert distributed.mean_over_ranks(values) is values  # one rank: nothing to average
    # The optimizer's reduction, over the NCCL group given explicitly (its default, the world, is
    # not reduced over on one rank): an all_reduce on the device, then one read.
    assert rank_mean(values, dist.group.WORLD).tolist() == [1.5, -2.0]
    assert host_floats([values[0], values[1]], dist.group.WORLD) == [1.5, -2.0]


# A loss given as a float (step(closure, loss=0.75)) becomes a CPU tensor; the decision values are
# reduced on the accelerator all the same (NCCL reduces device tensors only).
def test_a_loss_given_as_a_float_is_reduced_under_nccl(nccl_world):
    given_loss = torch.tensor(0.75, dtype=torch.float64)  # what LossEvaluator.first makes of loss=0.75
    grad_sq = torch.tensor(4.0, device="cuda")
    assert host_floats([given_loss, grad_sq], dist.group.WORLD) == [0.75, 4.0]


def test_one_rank_nccl_run_through_torchrun(tmp_path):
    require_real_cuda("NCCL")
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "main.py", "trainer.max_steps=6", "trainer.eval_interval=6", "trainer.progress=false",
        "trainer.device=cuda", "model.build.dropout=0.2", f"hydra.run.dir={run_dir}",
    ]
    # NCCL prints "NCCL version ..." when it creates a communicator: proof that NCCL, not gloo,
    # carried the run's collectives (the barrier and broadcast of the run directory).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NCCL_DEBUG": "VERSION"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except BaseException as error:  # a hang, or the run stopped (gpu_check.sh's time limit: SIGINT)
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its rank, in their own session
        process.communicate()
        if isinstance(error, subprocess.TimeoutExpired):
            pytest.fail(f"torchrun did not finish within {TORCHRUN_TIMEOUT_S} s (hang?)")
        raise
    assert process.returncode == 0, stderr[-4000:]
    assert f"record: {run_dir}" in stdout.splitlines()
    assert "NCCL version" in stdout + stderr, (stdout + stderr)[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 1 and summary["steps"] == 6
    assert math.isfinite(summary["final_loss"]) and summary["forwards"] > 6
    assert [r["step"] for r in _rows(run_dir)] == list(range(1, 7))
    (checkpoint,) = list_checkpoints(run_dir)
    model = torch.load(checkpoint, weights_only=True)["model"]
    assert not any(key.startswith("module.") for key in model)  # one rank: no DDP wrapper
