"""The same command gives the same record, bit for bit, with the harness as of
:data:`BASELINE_COMMIT` and with the harness as it is now.

The baseline is taken from git (``git archive``) into a temporary folder; each tree runs the same
``main.py`` commands with its own ``main.py`` and its own modules first on ``PYTHONPATH``, in the
same environment (one thread, the CPU). The records are then compared: every row of
``metrics.jsonl`` but its wall time, ``summary.json`` but its times, paths and versions, and
every checkpoint, each tensor with ``torch.equal`` (the trainer's position in it but its wall
time). A refactoring of the harness keeps this test green; a change that means to alter a
record moves :data:`BASELINE_COMMIT` past itself and says so. Nothing is stored: both trees run
here, so the test holds on any machine whose git history has the baseline.

Each tree's commands run one after another in one Python process (as a Hydra multirun runs its
jobs), which spares an interpreter start and a torch import per command; the two trees run side
by side.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from experiments.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

# The harness whose records the current one must reproduce.
BASELINE_COMMIT = "2846ab7c8e34"
ROOT = Path(__file__).resolve().parents[2]
FIXED = ["trainer.device=cpu", "trainer.threads=1", "trainer.progress=false"]
# Wall-clock fields, and those that name this machine's paths and libraries.
UNCOMPARED_ROW_KEYS = {"time"}
UNCOMPARED_SUMMARY_KEYS = {"run_dir", "wall_time", "train_time", "timing", "harness_overhead", "versions",
                           "forward_backward_seconds", "notes"}
UNCOMPARED_TRAINER_KEYS = {"elapsed", "timing"}
TEXT_TASK_RUNS = all(importlib.util.find_spec(name) for name in ("transformers", "tokenizers"))  # the nlp extra

# Runs (name, arguments of main.py) pairs in their order with the tree's main.py, and prints the
# exit code of each by name.
DRIVER = """
import json, runpy, sys
import experiments
print("experiments from", experiments.__file__, flush=True)
codes = {}
for name, argv in json.loads(sys.argv[1]):
    sys.argv = ["main.py", *argv]
    try:
        runpy.run_path("main.py", run_name="__main__")
        codes[name] = 0
    except SystemExit as exit_:
        codes[name] = exit_.code
print("exit codes", json.dumps(codes), flush=True)
"""


def optimizers_runnable_offline(names: list[str]) -> list[str]:
    """The optimizer configs among ``names`` whose class this environment can import (the
    learning-rate-free baselines are an extra)."""
    runnable = []
    for name in names:
        target = OmegaConf.load(ROOT / "conf" / "optimizer" / f"{name}.yaml").build._target_
        if importlib.util.find_spec(target.split(".")[0]) is not None:
            runnable.append(name)
    return runnable


def write_text_task(folder: Path) -> list[str]:
    """A small language-modelling task that needs no download: a word-level tokenizer with an
    end-of-text token and a few hundred sentences in the place of the Rotten Tomatoes ones; the
    overrides that run it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a film is good bad not very funny dull long short plot actors story ends".split()
    vocabulary = {word: i for i, word in enumerate(["[UNK]", "[EOS]", *words])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]")
    tokenizer.save_pretrained(folder / "tokenizer")
    prepared = folder / "data" / "rotten_tomatoes" / "sentences.jsonl"  # as experiments.data.rotten_tomatoes has it
    prepared.parent.mkdir(parents=True)
    sentences = [" ".join(words[(7 * i + k * (i % 5 + 1)) % len(words)] for k in range(5 + i % 9))
                 for i in range(400)]
    lines = [json.dumps({"id": i + 1, "score": 0.5, "sentence": text}) for i, text in enumerate(sentences)]
    prepared.write_text("\n".join(lines) + "\n")
    return ["dataset=rotten_tomatoes_lm", "model=small_gpt2", f"model.tokenizer={folder / 'tokenizer'}",
            f"data_dir={folder / 'data'}", "dataset.build.block_size=16", "dataset.build.vocab_size=null",
            "trainer.batch_size=8"]


def commands(out: Path, baseline: Path, text_task: list[str] | None) -> list[tuple[str, list[str]]]:
    """What each tree runs: (the record's folder, the arguments of main.py); ``text_task``: the
    overrides of the language-modelling task (``None``: this environment cannot run it)."""
    in_both = sorted({p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml")}
                     & {p.stem for p in (baseline / "conf" / "optimizer").glob("*.yaml")})
    every_optimizer = ",".join(optimizers_runnable_offline(in_both))
    # One of each kind of step: a line search, a torch optimizer, Schedule-Free's train/eval switch.
    kinds = ",".join(optimizers_runnable_offline(["salsa", "adam", "schedulefree_adamw"]))

    def single(name: str, *overrides: str) -> tuple[str, list[str]]:
        return name, [*FIXED, *overrides, f"hydra.run.dir={out / name}"]

    def multirun(name: str, *overrides: str) -> tuple[str, list[str]]:
        return name, ["-m", *FIXED, *overrides, f"hydra.sweep.dir={out / name}"]

    language_model = [] if text_task is None else [
        multirun("language_model", f"optimizer={kinds}", *text_task, "trainer.accumulation_steps=2",
                 "trainer.max_steps=12", "trainer.eval_interval=6"),
    ]
    return [
        single("default", "trainer.epochs=2"),  # python main.py, two of its ten epochs
        multirun("optimizers", f"optimizer={every_optimizer}", "trainer.max_steps=8", "trainer.eval_interval=4"),
        multirun("accumulated", f"optimizer={kinds}", "trainer.accumulation_steps=2", "trainer.max_steps=10",
                 "trainer.eval_interval=5"),
        # Stopped mid-epoch (its final evaluation and checkpoint at step 20), then continued.
        multirun("resumed", f"optimizer={kinds}", "trainer.max_steps=20"),
        ("resumed (continued)", multirun("resumed", f"optimizer={kinds}", "trainer.max_steps=40",
                                         "trainer.resume=true")[1]),
        multirun("intervals", f"optimizer={kinds}", "trainer.max_steps=30", "trainer.eval_interval=7",
                 "trainer.checkpoint_interval=5", "trainer.log_interval=4", "trainer.keep_checkpoints=10",
                 "model.build.dropout=0.2"),
        *language_model,
    ]


def start(tree: Path, argv: list[tuple[str, list[str]]]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(argv)], cwd=tree,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_finished(process: subprocess.Popen, tree: Path) -> None:
    """Wait for the driver; it must have run every command, with ``tree``'s modules, to exit 0."""
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    assert f"experiments from {tree / 'experiments' / '__init__.py'}" in output, output[:2000]
    codes = json.loads(output.rsplit("exit codes ", 1)[1].splitlines()[0])
    assert set(codes.values()) == {0}, f"{codes}\n{output[-4000:]}"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> tuple[Path, Path]:
    """The output folders of the baseline's and the current tree's runs."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BASELINE_COMMIT}^{{commit}}"],
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"the baseline commit {BASELINE_COMMIT} is not in this repository (a shallow clone, or "
                    "no git history): fetch it to compare the records")
    tmp = tmp_path_factory.mktemp("same_records")
    baseline = tmp / "baseline"
    baseline.mkdir()
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", BASELINE_COMMIT], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(baseline)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0
    text_task = write_text_task(tmp / "text") if TEXT_TASK_RUNS else None
    runs = {"baseline": (baseline, tmp / "baseline_runs"), "current": (ROOT, tmp / "current_runs")}
    started = {name: start(tree, commands(out, baseline, text_task)) for name, (tree, out) in runs.items()}
    for name, process in started.items():
        check_finished(process, runs[name][0])
    return runs["baseline"][1], runs["current"][1]


def differences(a: Any, b: Any, where: str) -> list[str]:
    """Where ``a`` and ``b`` differ: tensors by ``torch.equal`` (and dtype), NaN equal to NaN."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"]
        return [line for key in a for line in differences(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items against {len(b)}"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if type(a) is type(b) and a == b else [f"{where}: {a!r} against {b!r}"]


def rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in UNCOMPARED_ROW_KEYS} for line in lines]


def summary(run_dir: Path) -> dict[str, Any]:
    recorded = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in recorded.items() if k not in UNCOMPARED_SUMMARY_KEYS}


def checkpoint(path: Path) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["trainer"] = {k: v for k, v in payload["trainer"].items() if k not in UNCOMPARED_TRAINER_KEYS}
    return payload


def record_differences(baseline: Path, current: Path) -> list[str]:
    found = differences(rows(baseline), rows(current), "metrics.jsonl")
    found += differences(summary(baseline), summary(current), "summary.json")
    names = [[p.name for p in list_checkpoints(run_dir)] for run_dir in (baseline, current)]
    found += differences(*names, "checkpoints")
    if not found:
        for path in list_checkpoints(baseline):
            found += differences(checkpoint(path), checkpoint(current / path.relative_to(baseline)), path.name)
    return found


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent.relative_to(out) for p in out.rglob("summary.json"))


@pytest.mark.parametrize("command", ["default", "optimizers", "accumulated", "resumed", "intervals",
                                     "language_model"])
def test_the_same_command_gives_the_same_record(records, command):
    if command == "language_model" and not TEXT_TASK_RUNS:
        pytest.skip("the language-modelling task needs the nlp extra (transformers, tokenizers)")
    baseline, current = (out / command for out in records)
    assert run_dirs(current) == run_dirs(baseline)
    assert run_dirs(baseline), f"no run of {command!r} left a record"
    for run_dir in run_dirs(baseline):
        assert json.loads((baseline / run_dir / "summary.json").read_text())["status"] == "finished"
        found = record_differences(baseline / run_dir, current / run_dir)
        assert not found, f"{command}/{run_dir} differs from the baseline's:\n" + "\n".join(found[:20])
