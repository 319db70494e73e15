"""The fused path of the Adam-direction searches against the foreach path, its reference.

Every variant and preset is trained twice from the same start, ``fused=True`` and
``fused=False``: the decisions (step sizes, forwards, backtracks, searches, skips) must be
exactly equal step for step and the parameters equal to float rounding. The kernels themselves
are checked against the maths written out with torch ops (``reference_first_pass``). The CPU
kernel is built once per machine (torch's extensions cache) and once per test session at most.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from optim import L4, SLS, SaLSA, _fused, _fused_cpu
from optim.directions import AdamDirection, FusedAdamDirection
from optim.line_search import SearchRule
from optim.presets import paper_optimizer

from conftest import classification_batch, model_closure, small_mlp



@pytest.fixture(autouse=True)
def cpu_kernel() -> None:
    """Skip where the CPU kernel cannot be built (no compiler): checked when a test runs, so that
    collecting this module (``pytest -m cuda``, say) builds nothing."""
    reason = _fused.unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"no fused CPU kernel here: {reason}")


DTYPES = [torch.float32, torch.float64, torch.bfloat16]
DOTS = [None, ("grad", "grad"), ("grad", "exp_avg"), ("exp_avg", "grad"), ("exp_avg", "exp_avg")]


# -- the kernels ----------------------------------------------------------------------------------


def reference_first_pass(p, g, m, v, *, decay, beta1, beta2, eps_hat, alpha_grad, alpha_avg, dot):
    """The interface's maths with torch ops, in float64, on copies; returns (p, m, v, dot)."""
    p, g, m, v = (x.double() for x in (p, g, m, v))
    m = m + (1 - beta1) * (g - m)
    v = beta2 * v + (1 - beta2) * g * g
    den = v.sqrt() + eps_hat
    p = p * decay + (alpha_grad * g + alpha_avg * m) / den
    vectors = {"grad": g, "exp_avg": m}
    value = None if dot is None else (vectors[dot[0]] * vectors[dot[1]] / den).sum()
    return p, m, v, value


def kernel_inputs(dtype, shapes=((33, 17), (5,), (1000,), (0,), (3, 4, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda scale: [(scale * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for s in shapes]  # noqa: E731
    return make(1.0), make(1.0), make(0.3), [x.abs() for x in make(0.1)]


TOLERANCES = {torch.float32: (2e-6, 1e-6), torch.float64: (1e-13, 1e-14), torch.bfloat16: (1e-2, 1e-2)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dot", DOTS, ids=str)
def test_first_pass_is_the_interfaces_maths(dtype, dot):
    params, grads, exp_avgs, exp_avg_sqs = kernel_inputs(dtype)
    decays = [1.0, 0.99, 0.5, 1.0, 0.9]
    coefficients = dict(beta1=0.9, beta2=0.999, eps_hat=1e-8 * math.sqrt(0.3), alpha_grad=-0.01, alpha_avg=0.02)
    expected = [
        reference_first_pass(p, g, m, v, decay=d, dot=dot, **coefficients)
        for p, g, m, v, d in zip(params, grads, exp_avgs, exp_avg_sqs, decays)
    ]
    result = _fused.first_pass(params, grads, exp_avgs, exp_avg_sqs, decays=decays, dot=dot, **coefficients)
    rtol, atol = TOLERANCES[dtype]
    for p, m, v, (p_ref, m_ref, v_ref, _) in zip(params, exp_avgs, exp_avg_sqs, expected):
        torch.testing.assert_close(m.double(), m_ref, rtol=rtol, atol=atol)
        torch.testing.assert_close(v.double(), v_ref, rtol=rtol, atol=atol)
        torch.testing.assert_close(p.double(), p_ref, rtol=rtol, atol=atol)
    if dot is None:
        assert result is None
    else:
        assert result.dim() == 0 and result.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        # In bfloat16 the reference takes its direction from the unrounded moments.
        total = sum(e[3] for e in expected).item()
        assert result.item() == pytest.approx(total, rel=2e-2 if dtype == torch.bfloat16 else 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_move_there_and_back_returns_to_the_start_up_to_the_rounding_of_p(dtype):
    params, grads, exp_avgs, exp_avg_sqs = kernel_inputs(dtype, seed=1)
    exp_avg_sqs = [(v.double() + 0.5).to(dtype) for v in exp_avg_sqs]  # moves of about |p|: rounding of p alone
    start = [p.clone() for p in params]
    for alpha_grad, alpha_avg in ((0.3, 0.0), (0.0, -0.2), (0.1, 0.4)):
        expected = [
            p.double() + (alpha_grad * g.double() + alpha_avg * m.double()) / (v.double().sqrt() + 1e-8)
            for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs)
        ]
        _fused.move(params, grads, exp_avgs, exp_avg_sqs, eps_hat=1e-8, alpha_grad=alpha_grad, alpha_avg=alpha_avg)
        rtol, atol = TOLERANCES[dtype]
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.double(), e, rtol=rtol, atol=atol)
        _fused.move(params, grads, exp_avgs, exp_avg_sqs, eps_hat=1e-8, alpha_grad=-alpha_grad, alpha_avg=-alpha_avg)
        for p, p0 in zip(params, start):
            torch.testing.assert_close(p, p0, rtol=rtol, atol=atol)


def test_non_contiguous_and_channels_last_tensors_are_written_in_place():
    base = torch.randn(4, 6, dtype=torch.float64)
    p = base.t()  # a non-contiguous view of base: the kernel must write through it
    g, m, v = torch.randn(6, 4, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.float64), torch.ones(6, 4, dtype=torch.float64)
    expected = reference_first_pass(p, g, m, v, decay=1.0, beta1=0.9, beta2=0.99, eps_hat=1e-8, alpha_grad=-0.5,
                                    alpha_avg=0.0, dot=("grad", "grad"))
    dot = _fused.first_pass([p], [g], [m], [v], decays=[1.0], beta1=0.9, beta2=0.99, eps_hat=1e-8, alpha_grad=-0.5,
                            alpha_avg=0.0, dot=("grad", "grad"))
    torch.testing.assert_close(base.t(), expected[0])
    torch.testing.assert_close(m, expected[1])
    assert dot.item() == pytest.approx(expected[3].item())
    conv = [torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last) for _ in range(4)]
    conv[3] = conv[3].abs()
    before = conv[0].clone()
    _fused.move(*[[x] for x in conv], eps_hat=1e-8, alpha_grad=1.0, alpha_avg=0.0)
    torch.testing.assert_close(conv[0], before + conv[1] / (conv[3].sqrt() + 1e-8))
    assert conv[0].is_contiguous(memory_format=torch.channels_last)


def test_the_inner_product_does_not_depend_on_the_thread_count():
    params, grads, exp_avgs, exp_avg_sqs = kernel_inputs(torch.float32, shapes=((300_000,), (70_000,)), seed=2)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            copies = [[x.clone() for x in xs] for xs in (params, grads, exp_avgs, exp_avg_sqs)]
            results.append(_fused.first_pass(*copies, decays=[1.0, 1.0], beta1=0.9, beta2=0.999, eps_hat=1e-8,
                                             alpha_grad=-1e-3, alpha_avg=0.0, dot=("grad", "grad")).item())
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1] == results[2]


# -- the dispatcher -------------------------------------------------------------------------------


def test_devices_without_kernels_of_this_package_say_so():
    assert "cpu and cuda" in _fused.unavailable_reason("mps")


def test_without_the_triton_module_cuda_has_no_kernel_and_says_why(monkeypatch):
    """``optim/_fused_triton.py`` (or Triton) missing: a reason, not an error."""
    monkeypatch.setitem(sys.modules, "optim._fused_triton", None)  # import raises ImportError
    _fused._load.cache_clear()
    try:
        reason = _fused.unavailable_reason("cuda")
    finally:
        _fused._load.cache_clear()
    assert reason is not None and "_fused_triton" in reason


@pytest.fixture
def failing_build(monkeypatch):
    """The CPU kernel's build fails as it does without a compiler."""

    def fail() -> None:
        raise RuntimeError("Error building extension 'optim_fused_search': c++: command not found")

    monkeypatch.setattr(_fused_cpu, "ready", fail)
    _fused._load.cache_clear()
    _fused._notice_once.cache_clear()
    yield
    _fused._load.cache_clear()
    _fused._notice_once.cache_clear()


def test_a_failed_build_falls_back_to_foreach_with_one_notice_and_fused_true_refuses(failing_build, caplog):
    theta = [nn.Parameter(torch.zeros(3))]
    with caplog.at_level(logging.WARNING, logger="optim._fused"):
        first = SaLSA(theta)
        second = paper_optimizer("adamsls", [nn.Parameter(torch.zeros(2))])
    assert isinstance(first.direction, AdamDirection) and isinstance(second.direction, AdamDirection)
    notices = [r.getMessage() for r in caplog.records if r.name == "optim._fused"]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "no fused kernel for cpu" in notices[0] and "command not found" in notices[0]
    with pytest.raises(RuntimeError, match="fused=True.*command not found"):
        SaLSA(theta, fused=True)
    assert type(SaLSA(theta, direction="sgd").direction).__name__ == "SGDDirection"  # nothing to fuse


def test_without_a_compiler_a_new_process_trains_on_foreach_after_one_line(tmp_path):
    """The real thing in a fresh process: no compiler, an empty extensions cache."""
    program = (
        "import torch, optim\n"
        "theta = torch.nn.Parameter(torch.tensor([1.0, -2.0]))\n"
        "opt = optim.SaLSA([theta])\n"
        "def closure(backwards=False):\n"
        "    loss = (theta ** 2).sum()\n"
        "    if backwards: loss.backward()\n"
        "    return loss\n"
        "for _ in range(3): opt.zero_grad(); opt.step(closure)\n"
        "optim.L4([torch.nn.Parameter(torch.zeros(2))])\n"
        "print(type(opt.direction).__name__, opt.diagnostics.n_steps)\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "CC": str(tmp_path / "no-such-compiler"),
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"), "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AdamDirection", "3"]
    notices = [line for line in done.stderr.splitlines() if "no fused kernel" in line]
    assert len(notices) == 1, done.stderr


@pytest.mark.slow
def test_processes_that_start_together_build_the_kernel_once(tmp_path):
    """Three processes (DDP ranks, say) on an empty extensions cache: one compiles, the others
    wait for it and load its build; a fourth, later, loads it without the compiler."""
    program = "from optim import _fused_cpu; print(_fused_cpu.build().compiled)"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}
    processes = [
        subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=900) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == ["False", "False", "True"]
    later = subprocess.run([sys.executable, "-c", program], env={**env, "CXX": str(tmp_path / "none")},
                           capture_output=True, text=True, timeout=300)
    assert later.stdout.strip() == "False", later.stderr


@pytest.mark.parametrize("make", [
    lambda p: SaLSA(p, as_released=True, fused=True),
    lambda p: SaLSA(p, direction="sgd", fused=True),
    lambda p: SLS(p, fused=True),
    lambda p: L4(p, direction="momentum", fused=True),
    lambda p: SaLSA(p, fused="yes"),
], ids=["as_released", "salsa_sgd", "sls_sgd", "l4_mom", "not_a_bool"])
def test_fused_true_without_a_fused_path_is_refused_at_construction(make):
    with pytest.raises(ValueError, match="fused"):
        make([nn.Parameter(torch.zeros(2))])


def test_fused_none_picks_the_kernels_and_foreach_where_there_is_nothing_to_fuse():
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(SaLSA(p).direction, FusedAdamDirection)
    assert isinstance(L4(p).direction, FusedAdamDirection)
    assert type(SaLSA(p, fused=False).direction) is AdamDirection
    assert type(SaLSA(p, as_released=True).direction).__name__ == "ReleasedAdamDirection"
    assert type(L4(p, direction="momentum").direction) is AdamDirection


def test_fused_must_be_the_same_in_every_group():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="fused"):
        SaLSA([{"params": [a]}, {"params": [b], "fused": False}])


# -- the optimizers: fused against foreach ----------------------------------------------------------


@dataclass
class Run:
    decisions: list[tuple]  # per step: step size and every counter
    params: list[Tensor]
    opt: torch.optim.Optimizer


def settle(opt: torch.optim.Optimizer) -> None:
    """Make the accepted step sizes look settled (fast EMA = slow EMA): SaLSA's speed-up rule then
    skips the searches of the next steps."""
    for group in opt.param_groups:
        group["avg_step_size_fast"] = group["avg_step_size_slow"]


def take_steps(opt, model, steps: range, dtype=torch.float64, closure_of=None) -> list[tuple]:
    """The steps ``steps`` of a run on changing batches; every fifth step's search state is
    settled (see :func:`settle`), so that the speed-up rule skips some searches. Returns the
    decisions after each step."""
    decisions = []
    for i in steps:
        x, y = classification_batch(seed=i % 7, dtype=dtype)
        closure = closure_of(model, x, y, i) if closure_of else model_closure(model, x, y)
        if i % 5 == 4 and "avg_step_size_fast" in opt.param_groups[0]:
            settle(opt)
        opt.zero_grad()
        opt.step(closure)
        d = opt.diagnostics
        decisions.append((d.step_size, d.n_forwards, d.n_backwards, d.n_skipped, getattr(d, "n_backtracks", 0),
                          getattr(d, "n_searches", 0), getattr(d, "n_failed_searches", 0)))
    return decisions


def train(make: Callable, fused: bool, steps: int = 30, dtype=torch.float64, closure_of=None) -> Run:
    """``steps`` steps of ``make``'s optimizer on a small MLP (see :func:`take_steps`)."""
    model = small_mlp(seed=1, dtype=dtype)
    opt = make(list(model.parameters()), fused)
    decisions = take_steps(opt, model, range(steps), dtype, closure_of)
    return Run(decisions, [p.detach().clone() for p in model.parameters()], opt)


def two_groups(make: Callable) -> Callable:
    """``make`` on two param groups with different weight decays."""
    return lambda params, fused: make(
        [{"params": params[:2], "weight_decay": 0.05}, {"params": params[2:], "weight_decay": 0.01}], fused
    )


VARIANTS: dict[str, Callable] = {
    "salsa": lambda p, fused: SaLSA(p, fused=fused),
    "salsa_skipping": lambda p, fused: SaLSA(p, forced_searches=2, fused=fused),  # skips more
    "salsa_use_mv": lambda p, fused: SaLSA(p, use_mv=True, fused=fused),
    "salsa_step_along_momentum": lambda p, fused: SaLSA(p, step_along="momentum", fused=fused),
    "salsa_weight_decay_groups": two_groups(lambda p, fused: SaLSA(p, forced_searches=4, fused=fused)),
    "adamsls": lambda p, fused: paper_optimizer("adamsls", p, fused=fused),
    "adamsls_weight_decay_groups": two_groups(lambda p, fused: paper_optimizer("adamsls", p, fused=fused)),
    "oladamsls": lambda p, fused: paper_optimizer("oladamsls", p, fused=fused),
    "sls_adam": lambda p, fused: SLS(p, direction="adam", fused=fused),
    "sls_adam_failing": lambda p, fused: SLS(p, direction="adam", c=0.9, max_trials=2, fused=fused),
}


# Parameters after tens of steps: float64 agrees to its rounding; float32's rounding differences
# grow along the way (each step's direction divides by sqrt(v)) but stay far below any decision.
PARAMS_CLOSE = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-3, atol=1e-4)}


def assert_same_run(fused: Run, foreach: Run) -> None:
    assert fused.decisions == foreach.decisions
    for a, b in zip(fused.params, foreach.params):
        torch.testing.assert_close(a, b, **PARAMS_CLOSE[a.dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fused_takes_the_foreach_paths_decisions_exactly(name, dtype):
    fused, foreach = train(VARIANTS[name], True, dtype=dtype), train(VARIANTS[name], False, dtype=dtype)
    assert isinstance(fused.opt.direction, FusedAdamDirection)
    assert type(foreach.opt.direction) is AdamDirection
    assert_same_run(fused, foreach)


def test_the_variants_cover_backtracks_skipped_and_failed_searches():
    """The premise of the test above: every path of a step is taken somewhere."""
    last = {name: train(make, False).decisions[-1] for name, make in VARIANTS.items()}
    assert last["salsa"][4] > 0 and last["adamsls"][4] > 0  # backtracks
    assert last["salsa"][5] < 30 and last["salsa_skipping"][5] < last["salsa"][5]  # skipped searches
    assert last["adamsls"][5] < 30 and last["salsa_weight_decay_groups"][5] < 30
    assert last["sls_adam_failing"][6] > 0  # failed searches


def tiny_loss_on_some_steps(model, x, y, i):
    """Every third step the loss is scaled below SaLSA's guard (L0 < 1e-8): the search is blocked
    and the step goes along the momentum, which is far from zero."""
    scale = 1e-10 if i % 3 == 2 else 1.0
    return model_closure(model, x, y, loss_fn=lambda out, target: scale * nn.functional.cross_entropy(out, target))


@pytest.mark.parametrize("name", ["salsa", "adamsls", "oladamsls"])
def test_guard_blocked_steps_leave_the_trial_point_for_the_momentum_step(name):
    fused = train(VARIANTS[name], True, steps=15, closure_of=tiny_loss_on_some_steps)
    foreach = train(VARIANTS[name], False, steps=15, closure_of=tiny_loss_on_some_steps)
    assert fused.decisions[-1][5] < 15  # the guard blocked searches
    assert_same_run(fused, foreach)


def test_a_non_finite_test_term_skips_the_step_with_theta_back_at_theta0(monkeypatch):
    """The fused first pass has moved theta (decay and first trial) before <g, Pg> is read."""
    smooth = SearchRule.smooth_grad_term
    overflow = {"now": False}
    monkeypatch.setattr(
        SearchRule, "smooth_grad_term",
        lambda self, avg, term: math.inf if overflow["now"] else smooth(self, avg, term),
    )
    make = two_groups(lambda p, fused: SaLSA(p, speed_up=False, fused=fused))
    runs = {}
    for fused in (True, False):
        model = small_mlp(seed=1, dtype=torch.float64)
        opt = make(list(model.parameters()), fused)
        for i in range(5):
            before = [p.detach().clone() for p in model.parameters()]
            overflow["now"] = i == 2
            opt.zero_grad()
            opt.step(model_closure(model, *classification_batch(seed=i, dtype=torch.float64)))
            if i == 2:
                assert opt.diagnostics.n_skipped == 1
                for p, p0 in zip(model.parameters(), before):
                    torch.testing.assert_close(p.detach(), p0, rtol=1e-14, atol=1e-15)
        runs[fused] = [p.detach().clone() for p in model.parameters()], opt.diagnostics
    counters = lambda d: {k: v for k, v in d.items() if k not in ("grad_term", "avg_decrease", "loss")}  # noqa: E731
    assert counters(runs[True][1]) == counters(runs[False][1])
    assert runs[True][1].grad_term == pytest.approx(runs[False][1].grad_term, rel=1e-12)
    for a, b in zip(runs[True][0], runs[False][0]):
        torch.testing.assert_close(a, b, **PARAMS_CLOSE[torch.float64])


def test_a_trial_that_raises_leaves_theta_at_the_decayed_start_as_foreach_does():
    results = {}
    for fused in (True, False):
        model = small_mlp(seed=2, dtype=torch.float64)
        opt = SaLSA(model.parameters(), weight_decay=0.1, fused=fused)
        x, y = classification_batch(dtype=torch.float64)
        for _ in range(2):
            opt.zero_grad()
            opt.step(model_closure(model, x, y))
        start = [p.detach().clone() for p in model.parameters()]
        eta_prev = opt.diagnostics.step_size

        def raising(backwards: bool = False) -> Tensor:
            loss = nn.functional.cross_entropy(model(x), y)
            if backwards:
                loss.backward()
                return loss
            raise KeyError("trial")

        opt.zero_grad()
        with pytest.raises(KeyError, match="trial"):
            opt.step(raising)
        for p, p0 in zip(model.parameters(), start):
            torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * eta_prev), rtol=1e-14, atol=1e-15)
        results[fused] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_l4adam_fused_follows_foreach_to_rounding():
    """L4's step size is a continuous function of <v, g_hat>: equal to rounding, not exactly."""
    for make in (lambda p, fused: L4(p, fused=fused), two_groups(lambda p, fused: L4(p, fused=fused))):
        fused, foreach = train(make, True, steps=25), train(make, False, steps=25)
        sizes = lambda run: [d[0] for d in run.decisions]  # noqa: E731
        assert sizes(fused) == pytest.approx(sizes(foreach), rel=1e-4)
        assert [d[1:] for d in fused.decisions] == [d[1:] for d in foreach.decisions]
        for a, b in zip(fused.params, foreach.params):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def bf16_quadratic_run(name: str, fused: bool, steps: int = 20) -> tuple[list[tuple], Tensor]:
    """0.5 ||theta - target||^2 in float32 of a bfloat16 theta, the target jumping by 1 every step:
    the gradients are large and the accepted steps lie well inside the test's region, far from
    the thresholds that the rounding of bfloat16 parameters could tip."""
    theta = nn.Parameter(torch.linspace(-1, 1, 96).bfloat16())
    opt = VARIANTS[name]([theta], fused)
    decisions = []
    for i in range(steps):
        target = float(i % 3)

        def closure(backwards: bool = False) -> Tensor:
            loss = 0.5 * ((theta.float() - target) ** 2).sum()
            if backwards:
                loss.backward()
            return loss

        opt.zero_grad()
        opt.step(closure)
        d = opt.diagnostics
        decisions.append((d.step_size, d.n_forwards, d.n_backtracks, d.n_searches))
    return decisions, theta.detach().float()


@pytest.mark.parametrize("name", ["salsa", "adamsls", "sls_adam"])
def test_bfloat16_parameters_take_the_same_decisions(name):
    """bf16 parameters, moments and gradients: the kernel rounds once where foreach ops round at
    every op, so the two agree to bfloat16's rounding; on a well-conditioned problem no decision
    is near enough to its threshold to flip."""
    (fused, theta_fused), (foreach, theta_foreach) = bf16_quadratic_run(name, True), bf16_quadratic_run(name, False)
    assert fused == foreach
    assert name != "salsa" or fused[-1][2] > 0  # the searches backtracked
    torch.testing.assert_close(theta_fused, theta_foreach, rtol=2e-2, atol=2e-2)


def test_the_fused_path_keeps_the_moments_alone_no_more_than_adam():
    x, y = classification_batch()
    adam_model = small_mlp()
    adam = torch.optim.Adam(adam_model.parameters(), fused=True)
    nn.functional.cross_entropy(adam_model(x), y).backward()
    adam.step()
    adam_bytes = sum(v.numel() * v.element_size() for s in adam.state.values() for v in s.values())
    for make in (lambda p: SaLSA(p, fused=True), lambda p: paper_optimizer("adamsls", p, fused=True),
                 lambda p: SLS(p, direction="adam", fused=True), lambda p: L4(p, fused=True)):
        model = small_mlp()
        opt = make(model.parameters())
        for _ in range(3):
            opt.zero_grad()
            opt.step(model_closure(model, x, y))
        assert not hasattr(opt.direction, "_buffer")  # no scratch buffer
        for p in model.parameters():
            assert set(opt.state[p]) == {"exp_avg", "exp_avg_sq"}
        kept = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values())
        assert kept == 2 * sum(p.numel() * p.element_size() for p in model.parameters()) <= adam_bytes


# -- state dicts ----------------------------------------------------------------------------------


def test_state_dicts_move_between_the_paths_mid_run():
    """10 steps on one path, the state dict into an optimizer on the other, 10 more: the run of
    the foreach path alone, decision for decision."""
    make = VARIANTS["salsa_skipping"]
    reference = train(make, False, steps=20)
    for first in (True, False):
        model = small_mlp(seed=1, dtype=torch.float64)
        opt = make(list(model.parameters()), first)
        take_steps(opt, model, range(10))
        saved = opt.state_dict()
        assert saved["param_groups"][0]["fused"] is first
        resumed = make(list(model.parameters()), not first)
        resumed.load_state_dict(saved)
        assert resumed.param_groups[0]["fused"] is first  # the checkpoint's value wins (torch's rule)
        for group in resumed.param_groups:
            group["fused"] = not first  # ... and the groups say which path the run continues on
        decisions = take_steps(resumed, model, range(10, 20))
        assert isinstance(resumed.direction, FusedAdamDirection) is (not first)
        assert decisions == reference.decisions[10:]
        for a, b in zip(model.parameters(), reference.params):
            torch.testing.assert_close(a.detach(), b, **PARAMS_CLOSE[torch.float64])


def test_a_state_dict_written_before_fused_existed_continues_on_foreach():
    model = small_mlp()
    opt = SaLSA(model.parameters())
    opt.zero_grad()
    opt.step(model_closure(model, *classification_batch()))
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["fused"]
    fresh = SaLSA(model.parameters())
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["fused"] is False and type(fresh.direction) is AdamDirection


# -- FSDP2: the kernels on the local shards, the inner product summed over the ranks ---------------


FSDP_VARIANTS = ("salsa", "adamsls", "sls_adam")


def _fsdp_worker(rank: int, port: int, out_dir: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn import functional as F

    from ranks import loopback_env
    from test_distributed import WORLD_SIZE, _data, _model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **loopback_env())
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        x, y = _data(rank)
        # In float64: these searches backtrack up to 14 times a step on inputs of two scales, and
        # float32's rounding differences between the paths then grow about threefold a step.
        x = x.double()
        results = {}
        for name in FSDP_VARIANTS:
            for fused in (True, False):
                model = _model().double()
                fully_shard(model, mesh=mesh, reshard_after_forward=True)
                opt = VARIANTS[name](list(model.parameters()), fused)
                decisions = []
                for i in range(15):
                    if i % 5 == 4:
                        settle(opt)
                    opt.zero_grad()
                    opt.step(model_closure(model, x, y))
                    d = opt.diagnostics
                    decisions.append((d.step_size, d.n_forwards, d.n_backtracks, d.n_searches))
                full = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])  # collective
                results[name, fused] = {"decisions": decisions, "params": full,
                                        "direction": type(opt.direction).__name__}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp2_shards_take_the_foreach_paths_decisions(tmp_path):
    import torch.distributed as dist

    from ranks import free_port, run_ranks

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    ranks = run_ranks(_fsdp_worker, (free_port(), str(tmp_path)), 2, 180.0, tmp_path)
    for name in FSDP_VARIANTS:
        fused, foreach = ranks[0][name, True], ranks[0][name, False]
        assert (fused["direction"], foreach["direction"]) == ("FusedAdamDirection", "AdamDirection")
        assert fused["decisions"] == foreach["decisions"], name
        assert fused["decisions"][-1][2] > 0  # the searches backtracked
        torch.testing.assert_close(fused["params"], foreach["params"], rtol=1e-4, atol=1e-5)
        for rank in ranks[1:]:  # every rank took the same decisions and holds the same model
            assert rank[name, True]["decisions"] == fused["decisions"]
            assert torch.equal(rank[name, True]["params"], fused["params"])
