"""The optimizers on a CUDA device: the CPU trajectory, the dropout replay of the trials, host
syncs per step, mixed precision, ``torch.compile`` and memory against Adam.

Marked ``cuda``: ``python -m pytest -m cuda`` selects them; without a CUDA device they are
skipped (``tests/conftest.py``). ``CUDA_TESTS_ON_CPU=1`` runs them on the CPU as a dry run of
their logic (``tests/cuda_utils.py``).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from optim import L4, SLS, RNGSnapshot, SaLSA
from optim._evaluation import LossEvaluator
from optim.presets import paper_optimizer

from conftest import classification_batch, model_closure, small_mlp
from precision_utils import ScaledClosure, batch, fp32_loss, mlp
from cuda_utils import SyncCounter, device, require_bf16, require_real_cuda

pytestmark = pytest.mark.cuda
DEVICE = device()

Make = Callable[..., torch.optim.Optimizer]


def on_device(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(t.to(DEVICE) for t in tensors)


def rng_indices() -> list[int]:
    """The CUDA devices whose generator a test forks (none in a dry run: the CPU's is always)."""
    return [torch.cuda.current_device()] if DEVICE.type == "cuda" else []


# -- (a) the CPU trajectory, in float64 -----------------------------------------------------------

OPTIMIZERS: dict[str, Make] = {
    "salsa": SaLSA,
    "salsa_sgd": lambda params: SaLSA(params, direction="sgd"),
    "salsa_use_mv_wd": lambda params: SaLSA(params, use_mv=True, weight_decay=0.01),
    "salsa_released": lambda params: SaLSA(params, as_released=True),
    "adamsls": lambda params: paper_optimizer("adamsls", params),
    "sls": SLS,
    "sls_adam": lambda params: SLS(params, direction="adam"),
    "l4_adam": L4,
    "l4_mom": lambda params: L4(params, direction="momentum"),
}
STEPS = 14  # SaLSA's ten forced searches, then its speed-up rule decides
# float64 kernels on the GPU (cuBLAS dgemm, CUDA's tanh and log-softmax) round differently from
# the CPU's by a few ulp. On the CPU, perturbing the initial parameters by 1e-15 (relative) moves
# these 14-step trajectories by at most 3e-11 (element-wise relative, adamsls) and changes no
# accept/reject decision; 1e-11 changes none either. RTOL leaves 300x room over the former and is
# still ~1e7 tighter than float32 arithmetic would be.
RTOL, ATOL = 1e-8, 1e-11


def trajectory(make: Make, on: torch.device, steps: int = STEPS, wrap=lambda model: model) -> list[dict]:
    """``steps`` steps of ``make`` on ``on`` from the same float64 MLP, a new batch each step;
    the loss, the diagnostics and the parameters (copied to the CPU) after every step."""
    model = small_mlp(seed=0, dtype=torch.float64).to(on)
    forward = wrap(model)
    opt = make(model.parameters())
    out = []
    for i in range(steps):
        x, y = classification_batch(seed=i, dtype=torch.float64)
        opt.zero_grad()
        loss = opt.step(model_closure(forward, x.to(on), y.to(on)))
        out.append({
            "loss": loss.item(), "diagnostics": dict(opt.diagnostics),
            "params": [p.detach().to("cpu", copy=True) for p in model.parameters()],
        })
    return out


def assert_same_trajectory(got: list[dict], reference: list[dict], exact_step_size: bool) -> None:
    assert len(got) == len(reference)
    for step, (g, r) in enumerate(zip(got, reference), 1):
        counters = sorted(k for k in r["diagnostics"] if k.startswith("n_"))
        # The same decisions: every trial accepted or rejected alike, every step searched alike.
        assert {k: g["diagnostics"][k] for k in counters} == {k: r["diagnostics"][k] for k in counters}, step
        if exact_step_size:
            # A line search's eta is host arithmetic on constants (growth, backtrack) driven by
            # those decisions: the same float, bit for bit.
            assert g["diagnostics"]["step_size"] == r["diagnostics"]["step_size"], step
        else:  # L4's eta is computed from the loss and an inner product taken on the device
            assert g["diagnostics"]["step_size"] == pytest.approx(r["diagnostics"]["step_size"], rel=RTOL)
        assert g["loss"] == pytest.approx(r["loss"], rel=RTOL, abs=ATOL), step
        for p, q in zip(g["params"], r["params"]):
            torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL, msg=lambda m: f"step {step}: {m}")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_on_cuda_equals_the_cpu_one(name: str) -> None:
    reference = trajectory(OPTIMIZERS[name], torch.device("cpu"))
    got = trajectory(OPTIMIZERS[name], DEVICE)
    assert_same_trajectory(got, reference, exact_step_size=not name.startswith("l4"))
    final = reference[-1]["diagnostics"]
    assert final["n_steps"] == STEPS and final["n_skipped"] == 0
    if not name.startswith("l4"):
        assert final["n_forwards"] > STEPS  # the searches evaluated trial points


# -- (b) trials replay the first evaluation's dropout masks from the CUDA generator ----------------


def test_a_trial_at_eta_zero_reproduces_l0_with_dropout() -> None:
    model = small_mlp(dropout=0.5).to(DEVICE)
    x, y = on_device(*classification_batch())
    evaluate = LossEvaluator(model_closure(model, x, y), list(model.parameters()), None)
    # The snapshot holds the generator of the device the parameters live on.
    assert (evaluate.rng.device_type, evaluate.rng.device_indices) == (
        ("cuda", rng_indices()) if DEVICE.type == "cuda" else (None, [])
    )
    l0 = evaluate.first()
    # The parameters have not moved: a trial is a trial at eta = 0, and must give L0 bit for bit.
    assert torch.equal(evaluate.trial(), l0)
    assert torch.equal(evaluate.trial(), l0)
    # Without the replay the next masks differ, and so does the loss.
    with torch.no_grad():
        assert not torch.equal(model_closure(model, x, y)(), l0)


def test_trials_replay_the_masks_of_micro_batches_the_caller_ran() -> None:
    """``step(closure, loss=L0, rng=RNGSnapshot(params))`` as a gradient-accumulation loop uses
    it: L0 summed over micro-batches by the caller, trials over the same micro-batches."""
    model = small_mlp(dropout=0.5).to(DEVICE)
    parts = [on_device(*classification_batch(seed=s, n=32)) for s in (1, 2)]

    def micro_losses() -> list[Tensor]:
        return [0.5 * F.cross_entropy(model(x), y) for x, y in parts]

    rng = RNGSnapshot(model.parameters())  # just before the first forward
    loss = torch.zeros((), device=DEVICE)
    for part in micro_losses():
        part.backward()
        loss += part.detach()

    def closure(backwards: bool = False) -> Tensor:
        total = torch.zeros((), device=DEVICE)
        for part in micro_losses():
            total += part
        return total

    evaluate = LossEvaluator(closure, list(model.parameters()), None, loss=loss, rng=rng)
    assert torch.equal(evaluate.first(), loss)
    assert torch.equal(evaluate.trial(), loss)  # same masks in both micro-batches
    with torch.no_grad():
        assert not torch.equal(closure(), loss)
    before = [p.detach().clone() for p in model.parameters()]
    opt = SLS(model.parameters(), init_step_size=10.0)
    opt.step(closure, loss=loss, rng=rng)
    assert opt.diagnostics["n_forwards"] > 2 and opt.diagnostics["n_backwards"] == 1
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_every_evaluation_of_a_step_sees_the_first_ones_masks_and_trials_draw_nothing() -> None:
    masks: list[Tensor] = []
    theta = nn.Parameter(torch.ones(64, device=DEVICE))

    def closure(backwards: bool = False) -> Tensor:
        mask = F.dropout(torch.ones(64, device=DEVICE), 0.5)
        masks.append(mask)
        value = ((theta * mask - 3.0) ** 2).mean()
        if backwards:
            value.backward()
        return value

    # fork_rng restores the CPU and CUDA generators afterwards: the test leaves no trace in them.
    with torch.random.fork_rng(devices=rng_indices(), device_type="cuda"):
        torch.manual_seed(7)  # seeds the CUDA generators too
        opt = SLS([theta], init_step_size=100.0)  # far too large: several trials
        opt.zero_grad()
        opt.step(closure)
        first_step = list(masks)
        masks.clear()
        opt.zero_grad()
        opt.step(closure)
        # The stream goes on as if only the first evaluation had drawn: replay it by hand.
        torch.manual_seed(7)
        expected = [F.dropout(torch.ones(64, device=DEVICE), 0.5) for _ in range(2)]
    assert len(first_step) > 2
    assert all(torch.equal(m, first_step[0]) for m in first_step)
    assert all(torch.equal(m, masks[0]) for m in masks)
    assert torch.equal(first_step[0], expected[0])
    assert torch.equal(masks[0], expected[1])
    assert not torch.equal(masks[0], first_step[0])


# -- (c) host syncs per step ----------------------------------------------------------------------
#
# The design allows one host sync per evaluated loss (optim/_base.py, optim/line_search.py):
#   * the first evaluation: L0 and ||g||^2 read together (ClosureOptimizer._first_evaluation,
#     host_floats of both),
#   * the gradient term <g, d> when a search is due (LineSearchOptimizer.step, host_floats), except
#     along the gradient, where <g, d> = ||g||^2 was read with L0,
#   * one per trial (LineSearchOptimizer._backtrack, host_floats of the trial loss),
# so a step with a search of k trials makes 2 + k syncs (1 + k along the gradient), a step the
# speed-up rule skips 1, and an L4 step 2 (L0 with ||g||^2, then <v, g_hat>). Nothing else may sync: not the RNG snapshot and
# replay, the foreach arithmetic, the GradScaler's unscale_ or the closure (checked to be sync-free).


def _fp16_closure(model: nn.Module, x: Tensor, y: Tensor, scaler: torch.amp.GradScaler):
    def closure(backwards: bool = False) -> Tensor:
        with torch.autocast(DEVICE.type, dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        if backwards:
            scaler.scale(loss).backward()
        return loss

    return closure


SYNC_CASES: dict[str, tuple[Make, str]] = {
    # name: (optimizer, how the step is driven)
    # (init_step_size far too large: step 1 backtracks several times)
    "salsa": (lambda params: _salsa(params), "closure"),
    "salsa_sgd": (lambda params: _salsa(params, direction="sgd"), "closure"),
    "sls": (lambda params: SLS(params, init_step_size=50.0), "closure"),
    "sls_adam": (lambda params: SLS(params, direction="adam", init_step_size=10.0), "closure"),
    "l4": (L4, "closure"),
    "salsa_fp16_grad_scaler": (lambda params: _salsa(params), "scaler"),
    "salsa_given_loss": (lambda params: _salsa(params), "given_loss"),
}


def _salsa(params, **kwargs) -> SaLSA:
    return SaLSA(params, init_step_size=10.0, forced_searches=2, **kwargs)


@pytest.mark.parametrize("name", list(SYNC_CASES))
def test_a_step_syncs_once_per_evaluated_loss_and_once_for_the_gradient_term(name: str) -> None:
    SyncCounter.calibrate()
    make, drive = SYNC_CASES[name]
    model = small_mlp(dropout=0.1).to(DEVICE)  # float32, with dropout: the RNG replay runs
    x, y = on_device(*classification_batch(n=128))
    scaler = torch.amp.GradScaler(DEVICE.type) if drive == "scaler" else None
    closure = model_closure(model, x, y) if scaler is None else _fp16_closure(model, x, y, scaler)
    # Warm-up outside the count (cuBLAS handles and workspaces, the scaler's lazy scale tensor),
    # and the closure's own syncs: none, so every sync counted below is the optimizer's.
    throwaway = make(model.parameters())
    for _ in range(2):
        throwaway.zero_grad()
        throwaway.step(closure, grad_scaler=scaler) if scaler else throwaway.step(closure)
        if scaler:
            scaler.update()
    model.zero_grad()
    assert SyncCounter.count_in(lambda: closure(backwards=True)) == 0
    with torch.no_grad():
        assert SyncCounter.count_in(closure) == 0

    opt = make(model.parameters())

    def step() -> None:
        if drive == "scaler":
            opt.step(closure, grad_scaler=scaler)
        elif drive == "given_loss":
            rng = RNGSnapshot(model.parameters())
            opt.step(closure, loss=closure(backwards=True).detach(), rng=rng)
        else:
            opt.step(closure)

    seen = []
    for i in range(10):
        group = opt.param_groups[0]
        if i == 5 and group.get("speed_up"):
            # Accepted step sizes settled (fast EMA = slow EMA): the next steps skip the search.
            group["avg_step_size_fast"] = group["avg_step_size_slow"]
        before = dict(opt.diagnostics)
        opt.zero_grad()
        counter = SyncCounter()
        with counter.counting():
            step()
        after = opt.diagnostics
        if scaler is not None:
            scaler.update()
        assert after["n_skipped"] == before["n_skipped"] and after["n_steps"] == before["n_steps"] + 1
        trials = after["n_forwards"] - before["n_forwards"] - 1
        if isinstance(opt, L4):
            expected = 2
        else:
            searched = after["n_searches"] - before["n_searches"]
            assert searched or not trials  # no guard blocked a due search (L0 and g are far from 0)
            # Along the gradient, <g, d> = ||g||^2 was read with L0: no read of its own.
            term_reads = searched if opt.param_groups[0]["direction"] == "adam" else 0
            expected = 1 + term_reads + trials
        assert counter.count == expected, f"step {i + 1}: {counter.count} syncs, the design allows {expected}"
        seen.append(trials)
    if isinstance(opt, L4):
        return
    assert max(seen) >= 2, "no step backtracked"  # at least 2 trials
    if opt.param_groups[0]["speed_up"]:
        assert 0 in seen, "no step skipped its search"


# -- (d) mixed precision --------------------------------------------------------------------------

MIXED: dict[str, Make] = {
    "salsa": SaLSA,
    "salsa_sgd": lambda params: SaLSA(params, direction="sgd"),
    "sls": SLS,
    "sls_adam": lambda params: SLS(params, direction="adam"),
    "l4": L4,
}


def _train_bf16(
    name: str, steps: int, precision: torch.dtype | None
) -> tuple[nn.Module, torch.optim.Optimizer, set]:
    model = mlp(DEVICE)
    x, y = batch(device=DEVICE)
    opt = MIXED[name](model.parameters())
    output_dtypes: set[torch.dtype] = set()

    def closure(backwards: bool = False) -> Tensor:
        with torch.autocast(DEVICE.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
            out = model(x)
            output_dtypes.add(out.dtype)
            loss = F.cross_entropy(out, y)
        if backwards:
            loss.backward()
        return loss

    for _ in range(steps):
        opt.zero_grad()
        assert torch.isfinite(opt.step(closure))
    return model, opt, output_dtypes


@pytest.mark.parametrize("name", ["salsa", "sls"])
def test_bf16_autocast_trains_and_tracks_fp32(name: str) -> None:
    require_bf16()
    x, y = batch(device=DEVICE)
    initial = fp32_loss(mlp(DEVICE), x, y)
    steps = 30
    model, opt, output_dtypes = _train_bf16(name, steps, torch.bfloat16)
    fp32_model, _, fp32_dtypes = _train_bf16(name, steps, None)
    assert output_dtypes == {torch.bfloat16} and fp32_dtypes == {torch.float32}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    final, final_fp32 = fp32_loss(model, x, y), fp32_loss(fp32_model, x, y)
    assert final < 0.5 * initial, (initial, final)
    # bf16 keeps 8 bits of mantissa: the search sees noisier losses, not a different problem.
    assert abs(final - final_fp32) < 0.15 * initial, (initial, final, final_fp32)
    diag = opt.diagnostics
    assert (diag["n_steps"], diag["n_backwards"], diag["n_skipped"]) == (steps, steps, 0)
    assert diag["n_forwards"] > steps and diag["n_searches"] > 0


@pytest.mark.parametrize("name", list(MIXED))
def test_fp16_with_a_grad_scaler_trains_on_unscaled_gradients(name: str) -> None:
    model = mlp(DEVICE)
    x, y = batch(device=DEVICE)
    # The gradients the optimizer must see: those of the same fp16 forward without a scaler.
    ScaledClosure(model, x, y, None)(backwards=True)
    unscaled = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    opt = MIXED[name](model.parameters())
    scaler = torch.amp.GradScaler(DEVICE.type)
    scale = scaler.get_scale()
    assert scale > 1.0
    closure = ScaledClosure(model, x, y, scaler)
    initial = fp32_loss(model, x, y)
    opt.step(closure, grad_scaler=scaler)
    for g, reference in zip((p.grad for p in model.parameters()), unscaled):
        # Scaling by a power of two is exact in fp16 when nothing overflows: the same gradients.
        torch.testing.assert_close(g, reference, rtol=1e-3, atol=1e-6)
    scaler.update()  # the optimizer's unscale_ recorded its inf check: update() works, keeps the scale
    steps = 30
    for _ in range(steps - 1):
        opt.zero_grad()
        loss = opt.step(closure, grad_scaler=scaler)
        assert 0.0 < loss.item() < 2.0  # the closure's unscaled loss comes back
        scaler.update()
    assert closure.output_dtypes == {torch.float16}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert fp32_loss(model, x, y) < 0.7 * initial  # L4, the slowest here, reaches ~0.6 on the CPU
    assert opt.diagnostics["n_skipped"] == 0 and opt.diagnostics["n_steps"] == steps
    assert scaler.get_scale() == scale  # no overflow, no back-off (growth only after 2000 steps)


def _per_param_state(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [v.clone() for g in opt.param_groups for p in g["params"] for v in opt.state[p].values()
            if isinstance(v, Tensor)]


@pytest.mark.parametrize("name", ["salsa", "sls_adam", "l4"])
def test_fp16_overflow_from_a_too_large_scale_is_skipped_and_the_scale_backs_off(name: str) -> None:
    """A real fp16 overflow, not an injected one: with the loss scaled by 2^30 the gradient of the
    fp16 logits (at least 2^30 (2/3) / 128 for the true class at the start) exceeds 65504."""
    model = mlp(DEVICE)
    x, y = batch(device=DEVICE)
    opt = MIXED[name](model.parameters())
    init_scale = 2.0**30
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=init_scale)
    closure = ScaledClosure(model, x, y, scaler)
    initial = fp32_loss(model, x, y)
    skipped_at = []
    for i in range(40):
        params, state = [p.detach().clone() for p in model.parameters()], _per_param_state(opt)
        diag_before, scale_before = dict(opt.diagnostics), scaler.get_scale()
        opt.zero_grad()
        opt.step(closure, grad_scaler=scaler)
        scaler.update()
        diag = opt.diagnostics
        if diag["n_skipped"] > diag_before["n_skipped"]:
            skipped_at.append(i)
            assert all(torch.equal(a, b) for a, b in zip(params, model.parameters())), "params moved"
            after = _per_param_state(opt)
            assert len(after) == len(state) and all(torch.equal(a, b) for a, b in zip(state, after))
            assert diag["n_steps"] == diag_before["n_steps"]
            assert diag["step_size"] == diag_before["step_size"] or diag["n_steps"] == 0  # L4: nan
            assert scaler.get_scale() == 0.5 * scale_before  # GradScaler's backoff_factor
        else:
            assert diag["n_steps"] == diag_before["n_steps"] + 1
            assert scaler.get_scale() == scale_before
            assert any(not torch.equal(a, b) for a, b in zip(params, model.parameters())), "no step"
    assert skipped_at[:1] == [0]  # the first step overflows for certain
    assert skipped_at[-1] < 30, skipped_at  # the scale came down far enough for training to go on
    assert scaler.get_scale() == init_scale * 0.5 ** len(skipped_at)
    assert opt.diagnostics["n_skipped"] == len(skipped_at)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert fp32_loss(model, x, y) < initial


# -- (e) a torch.compile'd model in the closure -------------------------------------------------


def test_a_compiled_model_follows_the_eager_trajectory_without_recompiling() -> None:
    from torch._inductor.compile_fx import compile_fx  # what backend="inductor" calls

    graphs: list[object] = []

    def inductor(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    after_each_step: list[int] = []

    class Counting(SaLSA):
        def step(self, *args, **kwargs):
            loss = super().step(*args, **kwargs)
            after_each_step.append(len(graphs))
            return loss

    torch._dynamo.reset()
    try:
        compiled = trajectory(Counting, DEVICE, steps=6, wrap=lambda m: torch.compile(m, backend=inductor))
    finally:
        torch._dynamo.reset()
    eager = trajectory(SaLSA, DEVICE, steps=6)
    assert_same_trajectory(compiled, eager, exact_step_size=True)
    assert compiled[-1]["diagnostics"]["n_forwards"] > 6  # the trials ran the compiled model too
    # One graph with gradients (the first evaluation) and one under no_grad (the trials), both
    # compiled during step 1; the parameters moving in place recompiles nothing.
    assert after_each_step == [2] * 6, after_each_step


# -- (f) memory: at most Adam's plus one parameter-sized buffer -----------------------------------


def _memory_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def _adam_step(opt: torch.optim.Optimizer, model: nn.Module, x: Tensor, y: Tensor) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _closure_step(opt: torch.optim.Optimizer, model: nn.Module, x: Tensor, y: Tensor) -> None:
    opt.zero_grad()
    opt.step(model_closure(model, x, y))


def _peak_bytes(make: Make, step) -> int:
    """The peak of CUDA memory allocated while building the model and taking 6 steps, above
    what was allocated before (``max_memory_allocated`` after ``reset_peak_memory_stats``)."""
    gc.collect()
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = _memory_model().to(DEVICE)
    g = torch.Generator().manual_seed(0)
    x, y = on_device(torch.randn(256, 512, generator=g), torch.randint(10, (256,), generator=g))
    opt = make(model.parameters())
    for _ in range(6):
        step(opt, model, x, y)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start
    del opt, model, x, y
    gc.collect()
    return peak


def test_peak_memory_is_at_most_adams_plus_one_parameter_sized_buffer() -> None:
    require_real_cuda("the CUDA caching allocator's peak statistics")
    params = list(_memory_model().parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    # The allocator rounds every block up to 512 bytes; the searches' scalars (per-tensor dots,
    # stacked losses) are a few such blocks. Far below one parameter-sized buffer (6.3 MB).
    slack = 64 * 1024
    adam = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    # First once each, uncounted: cuBLAS and cuBLASLt workspaces are allocated on first use and
    # kept, and would be charged to whichever optimizer ran first.
    _peak_bytes(adam, _adam_step)
    _peak_bytes(SaLSA, _closure_step)
    adam_peak = _peak_bytes(adam, _adam_step)
    # Adam keeps exp_avg and exp_avg_sq (2 x params) and its step allocates a temporary sqrt(v).
    assert adam_peak >= 4 * param_bytes  # params, grads, the moments
    ours = {
        "salsa": SaLSA, "salsa_use_mv": lambda p: SaLSA(p, use_mv=True),
        "salsa_step_along_momentum": lambda p: SaLSA(p, step_along="momentum"),
        "sls_adam": lambda p: SLS(p, direction="adam"), "l4": L4,
    }
    for name, make in ours.items():
        peak = _peak_bytes(make, _closure_step)
        assert peak <= adam_peak + param_bytes + slack, (name, peak, adam_peak, param_bytes)
    # Plain SLS keeps no moments at all: at least Adam's two fewer.
    peak = _peak_bytes(SLS, _closure_step)
    assert peak <= adam_peak - 2 * param_bytes + slack, ("sls", peak, adam_peak, param_bytes)
