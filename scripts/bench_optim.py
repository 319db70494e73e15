r"""Wall-clock cost of a step of SaLSA, SLS and L4 against fused Adam, and against the released SaLSA.

Method
------
Every optimizer trains its own copy of the same model (same initialisation, same fixed synthetic
batch) in one process. The optimizers run *interleaved* in blocks of ``--block`` steps: a block of
fused Adam, a block of SaLSA, a block of SLS, ..., then the next round, until each has taken
``--steps`` steps. The first round is a warm-up and is discarded. Drift of the machine (clock
boost, other load) therefore hits all optimizers alike, and each block of an optimizer is compared
with the fused-Adam block of its own round. ``--runs N`` repeats the whole interleaved run N times
on fresh copies and reports the median over runs.

The rows: ``torch.optim.Adam`` fused (``fused=True``, the baseline: what users compare a step
with), with foreach ops and at torch's default; SaLSA, the ``adamsls`` preset (the harness's
``optimizer=salsa``), SLS with the Adam direction and L4Adam each on the fused path
(``fused=True``, where the device has the kernels) and on the foreach path; SLS at its defaults
(SGD direction); the released SaLSA when installed.

Each step (``zero_grad`` included) is timed with ``time.perf_counter`` (after
``torch.cuda.synchronize()`` on CUDA). The line searches are driven through
``opt.step(closure)`` with ``closure(backwards: bool = False)``; the closure is wrapped so that
every call is counted (forwards per step) and every trial forward, i.e. every call with
``backwards=False``, is timed where it runs, inside the optimizer. Adam runs the usual loop
(zero_grad, forward, backward, step) through the same wrapper.

A line-search step cannot be cheaper than an Adam step plus its own trial forwards: one forward
and backward, a moment update, and the trials. What it costs beyond that is the *excess*::

    excess(block) = median over the block's steps of (step time - own trial-forward time)
                    - t_Adam,

with ``t_Adam`` the median step time of the fused-Adam block of the same round. The step time and its
trial-forward time are paired step by step before the median is taken, because with SaLSA's
speed-up rule a block mixes steps with and without a search: a median of step times and a
separate median of trial times would then come from different steps. When every step runs the
same trials, this is ``median(step) - (t_Adam + median(trial forwards))``. L4 runs no trials:
its excess is its step time minus ``t_Adam``. An optimizer's excess is the median over its
blocks, in ms and in % of ``t_Adam``. The limit assumes at least Adam's update work: SLS with
its default SGD direction keeps no moments and can come out below it (a negative excess).

Optimizer memory is what the optimizer holds between steps: the tensors in ``opt.state``
(walked recursively, each storage counted once) plus the scratch direction buffer of this
package's foreach path, also per parameter (Adam: 8 bytes for float32 parameters; the fused
path holds the moments alone). The report also says what the fused CPU kernel cost to load in
the process, or, with ``--cold-build``, to compile on first use.

Usage::

    python scripts/bench_optim.py [--device cpu|cuda] [--workloads mlp,cnn,transformer[,bert]]
        [--steps 300] [--block 20] [--runs 1] [--threads N] [--out outputs/bench] [--quick]
        [--attribute] [--optimizers "Adam (fused),SaLSA (fused)"] [--cold-build]

writes ``<out>/bench_optim_<device>.json`` (every per-step time, the per-block numbers, the
summary and the machine) and ``<out>/bench_optim_<device>.md`` (the table, also printed). The
default ``--out`` is ignored by git; the report the README quotes is regenerated only by asking for
it: ``--out bench_results``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import optim
from optim import _fused, _fused_cpu
from optim.directions import StepTensors, inner
from optim.presets import paper_optimizer

SEED = 0
BASELINE = "Adam (fused)"  # the default --baseline
OURS = "SaLSA (fused)"
OURS_FOREACH = "SaLSA (foreach)"
REFERENCE = "SaLSA (reference)"

Batch = tuple[Tensor, Tensor]
Sync = Callable[[], None]


# -- workloads ------------------------------------------------------------------------------------


class TransformerClassifier(nn.Module):
    """Token and position embeddings, a ``nn.TransformerEncoder`` and a mean-pooled linear head."""

    def __init__(
        self,
        vocab: int,
        seq_len: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        num_layers: int,
        activation: str = "relu",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.1, activation=activation, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = self.encoder(self.tokens(tokens) + self.positions(positions))
        return self.head(hidden.mean(dim=1))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 10),
    )


@dataclass(frozen=True)
class Workload:
    """A model and the recipe of its one fixed batch (inputs drawn from a seeded generator)."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Tensor]
    num_classes: int = 10

    def batch(self, device: torch.device) -> Batch:
        generator = torch.Generator().manual_seed(SEED)
        x = self.inputs(generator)
        y = torch.randint(self.num_classes, (x.shape[0],), generator=generator)
        return x.to(device), y.to(device)


WORKLOADS = {
    w.name: w
    for w in (
        Workload("mlp", mlp, lambda g: torch.randn(128, 784, generator=g)),
        Workload("cnn", small_cnn, lambda g: torch.randn(64, 3, 32, 32, generator=g)),
        Workload(
            "transformer",
            lambda: TransformerClassifier(
                1000, 128, d_model=256, nhead=4, dim_feedforward=1024, num_layers=4
            ),
            lambda g: torch.randint(1000, (16, 128), generator=g),
        ),
        Workload(
            "bert",  # BERT-base sized (about 110M parameters), randomly initialised
            lambda: TransformerClassifier(
                30522, 128, d_model=768, nhead=12, dim_feedforward=3072, num_layers=12, activation="gelu"
            ),
            lambda g: torch.randint(30522, (32, 128), generator=g),
        ),
    )
}
DEFAULT_WORKLOADS = "mlp,cnn,transformer"


# -- optimizers and how one step is driven --------------------------------------------------------


class TimedClosure:
    """The loss closure, counting its calls and timing the trial forwards (``backwards=False``)."""

    def __init__(self, model: nn.Module, batch: Batch, sync: Sync) -> None:
        self.model = model
        self.batch = batch
        self.sync = sync
        self.calls = 0
        self.trial_seconds = 0.0

    def reset(self) -> None:
        self.calls = 0
        self.trial_seconds = 0.0

    def loss(self, backwards: bool) -> Tensor:
        x, y = self.batch
        loss = F.cross_entropy(self.model(x), y)
        if backwards:
            loss.backward()
        return loss

    def __call__(self, backwards: bool = False) -> Tensor:
        self.calls += 1
        if backwards:
            return self.loss(backwards=True)
        self.sync()
        start = time.perf_counter()
        loss = self.loss(backwards=False)
        self.sync()
        self.trial_seconds += time.perf_counter() - start
        return loss


StepFn = Callable[[torch.optim.Optimizer, TimedClosure], Tensor]


def adam_step(opt: torch.optim.Optimizer, closure: TimedClosure) -> Tensor:
    opt.zero_grad()
    loss = closure(backwards=True)
    opt.step()
    return loss


def closure_step(opt: torch.optim.Optimizer, closure: TimedClosure) -> Tensor:
    opt.zero_grad()
    return opt.step(closure)


def quiet_closure_step(opt: torch.optim.Optimizer, closure: TimedClosure) -> Tensor:
    """The released SaLSA may print "had cancelation error ..." on a tie; keep stdout clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        return closure_step(opt, closure)


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    make: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    step: StepFn


def salsa_with_check_twice(params: Iterable[nn.Parameter]) -> optim.SaLSA:
    """SaLSA (fused) that takes the finiteness check of the gradient, ||g||^2, twice (see
    --attribute): the one pass over the gradient that the fused step makes beyond fused Adam's."""
    opt = optim.SaLSA(params, fused=True)
    step_tensors = opt._step_tensors

    def with_extra_check(step: int) -> StepTensors:
        tensors = step_tensors(step)
        inner(tensors.grads, tensors.grads)  # thrown away: only its cost counts
        return tensors

    opt._step_tensors = with_extra_check
    return opt


ATTRIBUTION = {f"{OURS}, finiteness check x2": salsa_with_check_twice}


def adam(cls: type[torch.optim.Optimizer] = torch.optim.Adam, **kwargs: Any) -> Callable[..., torch.optim.Optimizer]:
    return lambda params: cls(params, lr=1e-3, **kwargs)


# The Adam-direction searches, each on both paths: (name, builder of the optimizer given `fused`).
ADAM_SEARCHES: list[tuple[str, Callable[..., torch.optim.Optimizer]]] = [
    ("SaLSA", lambda params, fused: optim.SaLSA(params, fused=fused)),
    ("adamsls", lambda params, fused: paper_optimizer("adamsls", params, fused=fused)),
    ("SLS-Adam", lambda params, fused: optim.SLS(params, direction="adam", fused=fused)),
    ("L4Adam", lambda params, fused: optim.L4(params, fused=fused)),
]


def optimizer_specs(device: torch.device, attribute: bool = False) -> list[OptimizerSpec]:
    """Fused Adam (the default baseline, first in every round), fused AdamW (its weight decay at
    torch's default), Adam with foreach ops and at torch's default; the Adam-direction searches on the fused path (where ``device`` has the kernels)
    and on the foreach path; SLS at its defaults (SGD direction); when ``salsa-optimizer`` is
    installed, the released SaLSA. ``attribute`` adds SaLSA (fused) taking the finiteness check
    of the gradient twice: its excess minus SaLSA's is what that pass costs where it runs."""
    specs = [
        OptimizerSpec("Adam (fused)", adam(fused=True), adam_step),
        OptimizerSpec("AdamW (fused)", adam(torch.optim.AdamW, fused=True), adam_step),
        OptimizerSpec("Adam (foreach)", adam(foreach=True), adam_step),
        OptimizerSpec("Adam", adam(), adam_step),
    ]
    paths = [True, False] if _fused.unavailable_reason(device.type) is None else [False]
    for name, make in ADAM_SEARCHES:
        specs += [
            OptimizerSpec(f"{name} ({'fused' if fused else 'foreach'})", functools.partial(make, fused=fused),
                          closure_step)
            for fused in paths
        ]
    specs.append(OptimizerSpec("SLS", optim.SLS, closure_step))
    if attribute:
        specs += [OptimizerSpec(name, make, closure_step) for name, make in ATTRIBUTION.items()]
    try:
        from salsa.SaLSA import SaLSA as ReferenceSaLSA
    except ImportError:
        return specs
    return [*specs, OptimizerSpec(REFERENCE, ReferenceSaLSA, quiet_closure_step)]


@dataclass
class Contender:
    """One optimizer with its own copy of the model."""

    spec: OptimizerSpec
    opt: torch.optim.Optimizer
    closure: TimedClosure


def make_contender(spec: OptimizerSpec, model: nn.Module, batch: Batch, sync: Sync) -> Contender:
    own = copy.deepcopy(model)
    return Contender(spec, spec.make(own.parameters()), TimedClosure(own, batch, sync))


# -- the interleaved run --------------------------------------------------------------------------


@dataclass
class Block:
    """The raw numbers of one block: per step, its time, its trial-forward time and its calls."""

    round: int
    optimizer: str
    step_ms: list[float]
    trial_ms: list[float]
    forwards: list[int]
    last_loss: float


def run_block(contender: Contender, round_index: int, steps: int, sync: Sync) -> Block:
    block = Block(round_index, contender.spec.name, [], [], [], float("nan"))
    closure = contender.closure
    for _ in range(steps):
        closure.reset()
        sync()
        start = time.perf_counter()
        loss = contender.spec.step(contender.opt, closure)
        sync()
        block.step_ms.append(round(1e3 * (time.perf_counter() - start), 4))
        block.trial_ms.append(round(1e3 * closure.trial_seconds, 4))
        block.forwards.append(closure.calls)
    block.last_loss = float(loss.detach())
    return block


def run_interleaved(contenders: list[Contender], steps: int, block: int, sync: Sync) -> list[Block]:
    """Rounds of one block per contender until each has taken ``steps`` steps. The order rotates
    from round to round: a block runs measurably faster or slower depending on the block before
    it (the memory the previous optimizer allocated and freed), and a fixed order would bias
    every comparison the same way."""
    rounds = enumerate(range(0, steps, block))
    return [
        run_block(contender, round_index, min(block, steps - start), sync)
        for round_index, start in rounds
        for contender in contenders[round_index % len(contenders):] + contenders[: round_index % len(contenders)]
    ]


# -- statistics -----------------------------------------------------------------------------------


def block_stats(block: Block, baseline: Block) -> dict[str, float]:
    """The block's numbers against the Adam block of its round (see the module docstring)."""
    t_adam = statistics.median(baseline.step_ms)
    beyond_trials = [step - trial for step, trial in zip(block.step_ms, block.trial_ms)]
    excess = statistics.median(beyond_trials) - t_adam
    return {
        "t_adam_ms": t_adam,
        "median_step_ms": statistics.median(block.step_ms),
        "mean_trial_ms": statistics.fmean(block.trial_ms),
        "excess_ms": excess,
        "excess_pct": 100.0 * excess / t_adam,
    }


def tensor_bytes(roots: Iterable[object]) -> int:
    """Bytes of the tensors reachable through dicts, lists and tuples, each storage once."""
    sizes: dict[int, int] = {}
    pending = list(roots)
    while pending:
        obj = pending.pop()
        if isinstance(obj, Tensor):
            sizes[obj.data_ptr()] = max(sizes.get(obj.data_ptr(), 0), obj.numel() * obj.element_size())
        elif isinstance(obj, dict):
            pending.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            pending.extend(obj)
    return sum(sizes.values())


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """``opt.state`` plus the direction buffer that this package's optimizers keep outside it
    (in ``opt.direction``)."""
    scratch = getattr(getattr(opt, "direction", None), "_buffer", [])
    return tensor_bytes([*opt.state.values(), scratch])


def summarise(
    contender: Contender, blocks: list[dict[str, float]], raw: list[Block], param_bytes: int, n_params: int
) -> dict:
    """One optimizer over its measured blocks (``blocks``: their stats, ``raw``: their steps)."""
    steps = [ms for block in raw for ms in block.step_ms]
    memory = optimizer_bytes(contender.opt)
    return {
        "ms_per_step": statistics.median(steps),
        "forwards_per_step": statistics.fmean(n for block in raw for n in block.forwards),
        "trial_fwd_ms_per_step": statistics.fmean(ms for block in raw for ms in block.trial_ms),
        "t_adam_ms": statistics.median(block["t_adam_ms"] for block in blocks),
        "excess_ms": statistics.median(block["excess_ms"] for block in blocks),
        "excess_pct": statistics.median(block["excess_pct"] for block in blocks),
        "memory_mb": memory / 2**20,
        "memory_x_params": memory / param_bytes,
        "state_bytes_per_param": memory / n_params,
        "final_loss": raw[-1].last_loss,
    }


# The numbers of a run that are taken as the median over runs (the others are the last run's).
PER_RUN = ("ms_per_step", "t_adam_ms", "excess_ms", "excess_pct")


def over_runs(summaries: list[dict[str, dict]]) -> dict[str, dict]:
    """The runs' summaries in one: the median over runs of :data:`PER_RUN` (each run's value
    kept under ``runs``), the other numbers from the last run."""
    combined = {}
    for name, last in summaries[-1].items():
        runs = [summary[name] for summary in summaries]
        combined[name] = {
            **last,
            **{key: statistics.median(run[key] for run in runs) for key in PER_RUN},
            "runs": [{key: run[key] for key in PER_RUN} for run in runs],
        }
    return combined


def versus_reference(summary: dict[str, dict]) -> dict[str, float | None] | None:
    """SaLSA against the released SaLSA: ratio of ms/step and reduction of the excess."""
    if REFERENCE not in summary:
        return None
    ours, reference = summary[OURS if OURS in summary else OURS_FOREACH], summary[REFERENCE]
    reduction = 100.0 * (1.0 - ours["excess_ms"] / reference["excess_ms"]) if reference["excess_ms"] else None
    return {
        "ms_per_step_ratio": ours["ms_per_step"] / reference["ms_per_step"],
        "excess_reduction_pct": reduction,
    }


# -- one workload ---------------------------------------------------------------------------------


def synchronizer(device: torch.device) -> Sync:
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def bench_workload(
    workload: Workload, specs: list[OptimizerSpec], device: torch.device, steps: int, block: int, runs: int,
    baseline: str = BASELINE,
) -> dict:
    """``runs`` interleaved runs of every contender, each from the same model on fresh copies;
    each block compared with the ``baseline`` block of its round."""
    torch.manual_seed(SEED)
    model = workload.build().to(device).train()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    sync = synchronizer(device)
    batch = workload.batch(device)
    summaries, all_blocks = [], []
    for run in range(runs):
        contenders = [make_contender(spec, model, batch, sync) for spec in specs]
        blocks = run_interleaved(contenders, steps, block, sync)
        baselines = {b.round: b for b in blocks if b.optimizer == baseline}
        measured = [b for b in blocks if b.round > 0]  # round 0 is the warm-up
        stats = {(b.round, b.optimizer): block_stats(b, baselines[b.round]) for b in measured}
        summary = {}
        for contender in contenders:
            raw = [b for b in measured if b.optimizer == contender.spec.name]
            own_stats = [stats[b.round, b.optimizer] for b in raw]
            summary[contender.spec.name] = summarise(contender, own_stats, raw, param_bytes, n_params)
        summaries.append(summary)
        all_blocks += [{"run": run, **asdict(b), **stats.get((b.round, b.optimizer), {})} for b in blocks]
    summary = over_runs(summaries)
    return {
        "parameters": n_params,
        "param_bytes": param_bytes,
        "blocks": all_blocks,
        "summary": summary,
        "salsa_vs_reference": versus_reference(summary),
    }


# -- report ---------------------------------------------------------------------------------------


COLUMNS = (
    "workload",
    "optimizer",
    "ms/step",
    "forwards/step",
    "trial fwd ms/step",
    "excess ms",
    "excess % of t_Adam",
    "memory (x params)",
    "state B/param",
)


def table_row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown(results: dict[str, dict], meta: dict[str, Any]) -> str:
    baseline = meta.get("baseline", BASELINE)
    runs = meta.get("runs", 1)
    setting = (
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['steps']} steps per optimizer in "
        f"interleaved blocks of {meta['block']} (order rotated every round, first round discarded)"
        + (f", {runs} such runs in one process (medians over runs; each run's excess in brackets)" if runs > 1 else "")
        + f", {meta['date']}, load average {meta['load_average'][0]:.2f} at the start, "
        f"{meta['load_average_end'][0]:.2f} at the end."
    )
    kernel = meta.get("fused_kernel")
    if kernel:
        setting += " " + kernel_sentence(kernel)
    if meta.get("allocator"):
        # Adam allocates parameter-sized temporaries every step; whether glibc serves them from
        # the heap or from fresh (page-faulting) mappings moves t_Adam by several percent.
        setting += " Allocator settings: " + ", ".join(f"{k}={v}" for k, v in meta["allocator"].items()) + "."
    definition = (
        "Excess: median over blocks of [median over steps of (step time - own trial forwards) - t_Adam], "
        f"t_Adam = median {baseline} step time of the same round."
    )
    lines = [
        f"# Optimizer step cost on {meta['device']} ({meta['device_name']})",
        "",
        setting,
        definition,
        "",
        table_row(COLUMNS),
        table_row(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)),
    ]
    for workload, result in results.items():
        for name, s in result["summary"].items():
            per_run = (
                " (" + ", ".join(f"{run['excess_pct']:.1f}" for run in s["runs"]) + ")"
                if len(s.get("runs", [])) > 1 else ""
            )
            excess_cells = (
                ["baseline"] * 2 if name == baseline
                else [f"{s['excess_ms']:.2f}", f"{s['excess_pct']:.1f}%{per_run}"]
            )
            memory = f"{s['memory_mb']:.1f} MB ({s['memory_x_params']:.2f}x)"
            lines.append(
                table_row(
                    [
                        workload,
                        name,
                        f"{s['ms_per_step']:.2f}",
                        f"{s['forwards_per_step']:.2f}",
                        f"{s['trial_fwd_ms_per_step']:.2f}",
                        *excess_cells,
                        memory,
                        f"{s['state_bytes_per_param']:.1f}",
                    ]
                )
            )
    comparisons = {w: r["salsa_vs_reference"] for w, r in results.items() if r["salsa_vs_reference"]}
    if comparisons:
        ours = OURS if any(OURS in r["summary"] for r in results.values()) else OURS_FOREACH
        lines += ["", table_row(["workload", f"ms/step {ours} / reference", "excess reduction vs reference"])]
        lines.append(table_row(["---", "---:", "---:"]))
        for workload, c in comparisons.items():
            reduction = "n/a" if c["excess_reduction_pct"] is None else f"{c['excess_reduction_pct']:.0f}%"
            lines.append(table_row([workload, f"{c['ms_per_step_ratio']:.3f}", reduction]))
    return "\n".join(lines) + "\n"


def kernel_meta(device: torch.device) -> dict[str, Any]:
    """Whether ``device`` has the fused kernels and, on CPU, what loading (or building) the
    extension cost in this process."""
    reason = _fused.unavailable_reason(device.type)
    info: dict[str, Any] = {"available": reason is None, "reason": reason}
    if reason is None and device.type == "cpu":
        build = _fused_cpu.build()
        info.update(compiled=build.compiled, seconds=round(build.seconds, 3), library=str(build.library))
    return info


def kernel_sentence(kernel: dict[str, Any]) -> str:
    if not kernel["available"]:
        return f"No fused kernel here ({kernel['reason']}): foreach rows only."
    if "compiled" not in kernel:
        return "Fused kernels available."
    if kernel["compiled"]:
        return f"The fused CPU kernel was compiled by this run (first use on this machine): {kernel['seconds']:.1f} s."
    return f"The fused CPU kernel was loaded from an earlier build in {1e3 * kernel['seconds']:.1f} ms (--cold-build times its compilation)."


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# -- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--workloads", default=DEFAULT_WORKLOADS, help=f"comma-separated, of {','.join(WORKLOADS)}"
    )
    parser.add_argument("--steps", type=int, default=300, help="steps per optimizer, warm-up round included")
    parser.add_argument("--block", type=int, default=20, help="steps per block")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"),
                        help="default: outputs/bench (the committed report: --out bench_results)")
    parser.add_argument("--quick", action="store_true", help="smoke run: --steps 60 --block 10")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="add SaLSA (fused) taking ||g||^2 (the finiteness check) twice, to measure what that "
        "pass costs where it runs",
    )
    parser.add_argument("--runs", type=int, default=1, help="interleaved runs per workload (medians over runs)")
    parser.add_argument(
        "--optimizers", help="comma-separated names of the rows to run (the baseline always runs; default: all)"
    )
    parser.add_argument("--baseline", default=BASELINE, help=f"the row excesses are measured from ({BASELINE})")
    parser.add_argument(
        "--cold-build", action="store_true",
        help="compile the fused CPU kernel into a fresh directory first, to time its first use",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.block = 60, 10
    args.workloads = args.workloads.split(",")
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.block < 1 or args.steps <= args.block:
        parser.error("need 1 <= --block < --steps: the first round of blocks is a discarded warm-up")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def write_report(out: Path, meta: dict[str, Any], results: dict[str, dict]) -> str:
    """Write ``bench_optim_<device>.json`` and ``.md`` under ``out``; return the Markdown."""
    table = markdown(results, meta)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_optim_{meta['device']}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table)
    return table


@contextlib.contextmanager
def reported(label: str) -> Iterator[None]:
    """Progress on stderr (stdout carries the table)."""
    start = time.perf_counter()
    print(f"{label} ...", file=sys.stderr, flush=True)
    yield
    print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cold_build:  # before anything loads the kernel in this process
        os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="bench_optim_build_")
    device = torch.device(args.device)
    with reported("the fused kernel (built on first use on this machine)"):
        kernel = kernel_meta(device)
    specs = optimizer_specs(device, args.attribute)
    wanted = {args.baseline, *(args.optimizers.split(",") if args.optimizers else [])}
    missing = wanted - {spec.name for spec in specs}
    no_kernel = {name for name in missing if name.endswith(" (fused)") and name != args.baseline
                 and any(name == f"{search} (fused)" for search, _ in ADAM_SEARCHES)}
    if missing - no_kernel:
        sys.exit(f"bench_optim: unknown optimizers {sorted(missing - no_kernel)}; "
                 f"choose from {[spec.name for spec in specs]}")
    if no_kernel:
        print(f"bench_optim: left out {sorted(no_kernel)}: {kernel['reason']}", file=sys.stderr)
    if args.optimizers:
        specs = [spec for spec in specs if spec.name in wanted]
    specs.sort(key=lambda spec: spec.name != args.baseline)  # the baseline first in the first round
    meta = {
        "torch": torch.__version__,
        "device": args.device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "block": args.block,
        "runs": args.runs,
        "baseline": args.baseline,
        "searches": [name for name, _ in ADAM_SEARCHES],  # each a "(fused)" and a "(foreach)" row
        "fused_kernel": kernel,
        "optimizers": [spec.name for spec in specs],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "allocator": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    }
    results: dict[str, dict] = {}
    for name in args.workloads:
        with reported(f"{name}: {args.runs} x {args.steps} steps x {len(specs)} optimizers"):
            results[name] = bench_workload(
                WORKLOADS[name], specs, device, args.steps, args.block, args.runs, args.baseline
            )
        meta["load_average_end"] = os.getloadavg()
        table = write_report(args.out, meta, results)  # after every workload: a long run may be cut short
    print(table)


if __name__ == "__main__":
    main()
