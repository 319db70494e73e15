"""The fused Adam-direction step in Triton (``optim/_fused_triton.py``) against a float64
reference written here from its equations.

Without a GPU the kernel runs in Triton's interpreter (numpy on CPU tensors), in a child process
of its own (``tests/triton_interpreter.py`` says why); the same tests run the compiled kernel on a
CUDA device under the marker ``cuda``. Each counts the kernel's launches as well.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from optim import _fused_triton
from optim._fused_triton import BLOCK, first_pass, move

from cuda_utils import SyncCounter, require_bf16, require_real_cuda
from triton_interpreter import Interpreter, call_counting_launches

BETA1, BETA2 = 0.9, 0.999
# Sizes: one element, none, a block and a part, exactly two blocks, a few.
SIZES = [1, 0, BLOCK + 5, 2 * BLOCK, 7, 333]
DECAYS = [0.999, 1.0, 0.5, 0.9, 1.0, 0.75]
# Unit roundoffs: of the arithmetic (float32, or float64 for float64) and of the stored dtype.
ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float64: 2.0**-53}

# run(name, lists, **kwargs) -> (lists after the call, its result, the grid of each launch)
Run = Callable[..., tuple[tuple, Any, list]]


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    pytest.importorskip("triton")
    with Interpreter() as child:
        yield child


@pytest.fixture(params=["interpreted", pytest.param("cuda", marks=pytest.mark.cuda)])
def run(request: pytest.FixtureRequest) -> Run:
    """``optim._fused_triton``'s functions under Triton's interpreter on CPU tensors, or compiled
    on a CUDA device."""
    if request.param == "interpreted":
        interpreter = request.getfixturevalue("interpreter")
        return lambda name, lists, **kwargs: interpreter.run(name, tuple(lists), **kwargs)
    require_real_cuda("the compiled Triton kernel")
    pytest.importorskip("triton")
    if request.node.callspec.params.get("dtype") == torch.bfloat16:
        require_bf16()
    return lambda name, lists, **kwargs: call_counting_launches(name, tuple(on("cuda", lists)), kwargs)


def step_tensors(sizes: list[int], dtype: torch.dtype, seed: int = 0) -> list[list[Tensor]]:
    """params, grads, exp_avgs, exp_avg_sqs (non-negative, spread over decades), on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
    exp_avgs = [0.1 * torch.randn(n, generator=gen).to(dtype) for n in sizes]
    exp_avg_sqs = [(10 ** (-4 * torch.rand(n, generator=gen))).to(dtype) for n in sizes]
    return [params, grads, exp_avgs, exp_avg_sqs]


def on(device: torch.device | str, lists: list[list[Tensor]]) -> list[list[Tensor]]:
    return [[t.to(device) for t in tensors] for tensors in lists]


@dataclass
class Expected:
    """The exact results (float64) of the equations on the inputs, and for each a scale that the
    rounding errors of the arithmetic are proportional to: the sum of the magnitudes of its terms.
    The new m enters with its own scale, which bounds both its size and (as m can be small from
    cancellation) its error."""

    params: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    params_scale: list[Tensor]
    exp_avgs_scale: list[Tensor]
    exp_avg_sqs_scale: list[Tensor]
    dot: float
    dot_scale: float


def reference(
    lists: list[list[Tensor]], decays: list[float], *, eps_hat: float, alpha_grad: float,
    alpha_avg: float, dot: tuple[str, str] | None, update_moments: bool = True,
) -> Expected:
    """m <- m + (1 - beta1)(g - m), v <- beta2 v + (1 - beta2) g^2 (when ``update_moments``),
    p <- decay p + (alpha_grad g + alpha_avg m) / (sqrt(v) + eps_hat), and the sum of
    a b / (sqrt(v) + eps_hat) over everything for ``dot = (a, b)``, all in float64."""
    out = Expected([], [], [], [], [], [], 0.0, 0.0)
    for p, g, m, v, decay in zip(*lists, decays):
        p, g, m, v = (x.double() for x in (p, g, m, v))
        m_scale = m.abs() + (1 - BETA1) * (g.abs() + m.abs()) if update_moments else m.abs()
        if update_moments:
            m = m + (1 - BETA1) * (g - m)
            v = BETA2 * v + (1 - BETA2) * g * g  # its terms are >= 0: v is its own scale
        den = v.sqrt() + eps_hat
        out.params.append(decay * p + (alpha_grad * g + alpha_avg * m) / den)
        out.params_scale.append((decay * p).abs() + ((alpha_grad * g).abs() + abs(alpha_avg) * m_scale) / den)
        out.exp_avgs.append(m)
        out.exp_avgs_scale.append(m_scale)
        out.exp_avg_sqs.append(v)
        out.exp_avg_sqs_scale.append(v)
        if dot is not None:
            value, scale = {"grad": g, "exp_avg": m}, {"grad": g.abs(), "exp_avg": m_scale}
            out.dot += (value[dot[0]] * value[dot[1]] / den).sum().item()
            out.dot_scale += (scale[dot[0]] * scale[dot[1]] / den).sum().item()
    return out


def assert_near(actual: Tensor, exact: Tensor, scale: Tensor, dtype: torch.dtype) -> None:
    """Within one rounding to ``dtype`` plus 8 roundings of the arithmetic on the terms."""
    compute = ROUNDOFF[torch.float64 if dtype == torch.float64 else torch.float32]
    # Triton's interpreter (on the CPU) converts float32 to bfloat16 by truncation, up to a whole
    # ulp off; the GPU rounds to nearest.
    storage = ROUNDOFF[dtype] * (2 if actual.device.type == "cpu" and dtype == torch.bfloat16 else 1)
    actual = actual.cpu().double().reshape(-1)  # in index order, whatever the layout
    bound = storage * exact.abs() + 8 * compute * scale
    error = (actual - exact).abs()
    worst = int((error - bound).argmax()) if error.numel() else 0
    assert bool((error <= bound).all()), (
        f"element {worst}: {actual[worst].item()}, exact {exact[worst].item()}"
    )


def assert_matches(lists: list[list[Tensor]], expected: Expected, dtype: torch.dtype) -> None:
    params, _, exp_avgs, exp_avg_sqs = lists
    for i in range(len(params)):
        assert_near(params[i], expected.params[i], expected.params_scale[i], dtype)
        assert_near(exp_avgs[i], expected.exp_avgs[i], expected.exp_avgs_scale[i], dtype)
        assert_near(exp_avg_sqs[i], expected.exp_avg_sqs[i], expected.exp_avg_sqs_scale[i], dtype)


def assert_dot_near(dot: Tensor, expected: Expected, dtype: torch.dtype, n_elements: int) -> None:
    """A sum over n terms, each with a few roundings, in float32 (float64 for float64): the
    unrounded moments enter it, so the tensors' dtype does not."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    assert dot.dim() == 0 and dot.dtype == compute
    tolerance = (math.log2(n_elements) + 8) * ROUNDOFF[compute] * expected.dot_scale
    assert abs(dot.item() - expected.dot) <= tolerance, (dot.item(), expected.dot)


# The four inner products and none, with step sizes of both signs, one of them 0, and eps_hat 0
# once (the lanes past a tensor's end then hold 0/0, which must not reach the sum).
CASES = [
    (None, -0.3, 0.7, 1e-8),
    (("grad", "grad"), 0.25, -0.05, 1e-8),
    (("grad", "exp_avg"), -1e-3, -2e-3, 0.0),
    (("exp_avg", "grad"), 0.4, 0.0, 1e-8),
    (("exp_avg", "exp_avg"), 0.0, -0.6, 1e-6),
]


def one_launch_over(sizes: list[int]) -> list[tuple[int]]:
    """The grids of a call: one launch, a program per block of each tensor."""
    return [(sum(math.ceil(n / BLOCK) for n in sizes),)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("dot, alpha_grad, alpha_avg, eps_hat", CASES, ids=str)
def test_first_pass_matches_the_equations(run, dtype, dot, alpha_grad, alpha_avg, eps_hat):
    lists = step_tensors(SIZES, dtype)
    expected = reference(lists, DECAYS, eps_hat=eps_hat, alpha_grad=alpha_grad, alpha_avg=alpha_avg, dot=dot)
    lists, result, grids = run(
        "first_pass", lists, decays=DECAYS, beta1=BETA1, beta2=BETA2, eps_hat=eps_hat,
        alpha_grad=alpha_grad, alpha_avg=alpha_avg, dot=dot,
    )
    assert grids == one_launch_over(SIZES)
    assert_matches(lists, expected, dtype)
    if dot is None:
        assert result is None
    else:
        assert result.device == lists[0][0].device
        assert_dot_near(result, expected, dtype, sum(SIZES))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_move_matches_the_equations_and_leaves_the_moments(run, dtype):
    lists = step_tensors(SIZES, dtype, seed=1)
    expected = reference(
        lists, [1.0] * len(SIZES), eps_hat=1e-8, alpha_grad=0.3, alpha_avg=-1.5, dot=None,
        update_moments=False,
    )
    after, result, grids = run("move", lists, eps_hat=1e-8, alpha_grad=0.3, alpha_avg=-1.5)
    assert result is None and grids == one_launch_over(SIZES)
    for p, exact, scale in zip(after[0], expected.params, expected.params_scale):
        assert_near(p, exact, scale, dtype)
    for moments_after, moments in zip(after[2:], lists[2:]):
        assert all(torch.equal(x.cpu(), y) for x, y in zip(moments_after, moments))


def test_a_few_hundred_thousand_elements_in_many_tensors(run):
    """Many tensors (the kernel's search in its table), one of them large, float32."""
    sizes = [300_001, 3, BLOCK - 1, 1, *range(50, 1000, 37)]
    decays = [1.0 - 0.01 * (i % 3) for i in range(len(sizes))]
    lists = step_tensors(sizes, torch.float32, seed=2)
    expected = reference(lists, decays, eps_hat=1e-8, alpha_grad=-0.1, alpha_avg=0.2, dot=("grad", "exp_avg"))
    lists, dot, grids = run(
        "first_pass", lists, decays=decays, beta1=BETA1, beta2=BETA2, eps_hat=1e-8, alpha_grad=-0.1,
        alpha_avg=0.2, dot=("grad", "exp_avg"),
    )
    assert grids == one_launch_over(sizes)
    assert_matches(lists, expected, torch.float32)
    assert_dot_near(dot, expected, torch.float32, sum(sizes))


def test_unaligned_and_channels_last_tensors(run):
    """Tensors that start 4 bytes into their storage (the kernel then loads element by element)
    and channels-last ones (dense, not contiguous)."""
    lists = step_tensors([BLOCK + 9, 2 * 3 * 5 * 7], torch.float32, seed=3)
    decays = [0.9, 0.8]
    operands = ("exp_avg", "exp_avg")
    expected = reference(lists, decays, eps_hat=1e-8, alpha_grad=-0.5, alpha_avg=0.5, dot=operands)
    lists = [
        [torch.cat([torch.zeros(1), unaligned])[1:],
         weight.reshape(2, 3, 5, 7).contiguous(memory_format=torch.channels_last)]
        for unaligned, weight in lists
    ]
    lists, dot, _ = run(
        "first_pass", lists, decays=decays, beta1=BETA1, beta2=BETA2, eps_hat=1e-8, alpha_grad=-0.5,
        alpha_avg=0.5, dot=operands,
    )
    assert all(tensors[0].data_ptr() % 16 == 4 for tensors in lists)
    assert all(tensors[1].stride() == (105, 1, 21, 3) for tensors in lists)
    assert_matches(lists, expected, torch.float32)
    assert_dot_near(dot, expected, torch.float32, BLOCK + 9 + 210)


def test_empty_lists_and_empty_tensors_launch_nothing():
    """No kernel is needed (nor imported): the inner product of nothing is 0."""
    kwargs = dict(beta1=BETA1, beta2=BETA2, eps_hat=1e-8, alpha_grad=1.0, alpha_avg=1.0)
    assert first_pass([], [], [], [], decays=[], dot=None, **kwargs) is None
    assert first_pass([], [], [], [], decays=[], dot=("grad", "grad"), **kwargs).item() == 0.0
    empty = [[torch.zeros(0, dtype=torch.bfloat16)] for _ in range(4)]
    dot = first_pass(*empty, decays=[0.5], dot=("grad", "exp_avg"), **kwargs)
    assert dot.item() == 0.0 and dot.dtype == torch.float32
    move(*empty, eps_hat=1e-8, alpha_grad=1.0, alpha_avg=1.0)


def test_refuses_what_the_kernel_cannot_take():
    kwargs = dict(beta1=BETA1, beta2=BETA2, eps_hat=1e-8, alpha_grad=1.0, alpha_avg=1.0, dot=None)
    lists = step_tensors([6, 4], torch.float32)

    def refused(lists, match, **overrides):
        with pytest.raises(ValueError, match=match):
            first_pass(*lists, **{"decays": [1.0] * len(lists[0]), **kwargs, **overrides})

    refused([lists[0], lists[1], lists[2], lists[3][:1]], "1 exp_avg_sqs")
    refused(lists, "decays: 1 values", decays=[1.0])
    refused(lists, r"dot: \('grad', 'params'\)", dot=("grad", "params"))
    mixed = [lists[0], lists[1], [lists[2][0].double(), lists[2][1]], lists[3]]
    refused(mixed, r"exp_avgs\[0\] is torch.float64")
    refused([[t.half() for t in tensors] for tensors in lists], "params are torch.float16")
    refused([lists[0], [lists[1][0], lists[1][1][:2]], lists[2], lists[3]], r"grads\[1\] has shape \(2,\)")
    strided = [[t.reshape(2, 3)[:, ::2] for t in tensors[:1]] for tensors in lists]
    refused(strided, r"params\[0\] has shape \(2, 2\) and strides \(3, 2\)")
    transposed = [[t.reshape(2, 3).t() for t in tensors[:1]] for tensors in lists]
    transposed[1] = [transposed[1][0].contiguous()]
    refused(transposed, r"grads\[0\] has shape \(3, 2\) and strides \(2, 1\)")


def test_available_says_why_not():
    assert "CUDA devices, not on cpu" in _fused_triton.available(torch.device("cpu"), torch.float32)


def test_available_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "optim._fused_triton_kernel", raising=False)
    assert "Triton cannot be imported" in _fused_triton.available(torch.device("cuda"), torch.float32)


@pytest.mark.cuda
def test_available_on_a_cuda_device():
    require_real_cuda("the compiled Triton kernel")
    pytest.importorskip("triton")
    cuda = torch.device("cuda")
    assert _fused_triton.available(cuda, torch.float32) is None
    assert _fused_triton.available(cuda, torch.float64) is None
    assert "not torch.float16" in _fused_triton.available(cuda, torch.float16)


@pytest.mark.cuda
def test_no_host_synchronisation_on_cuda():
    """The table goes to the device from pinned memory without waiting, and the inner product
    stays there."""
    require_real_cuda("CUDA's sync debug mode")
    lists = on(torch.device("cuda"), step_tensors(SIZES, torch.float32))
    kwargs = dict(decays=DECAYS, beta1=BETA1, beta2=BETA2, eps_hat=1e-8, alpha_grad=1.0, alpha_avg=1.0)
    first_pass(*lists, dot=("grad", "grad"), **kwargs)  # compiled and cached outside the count
    SyncCounter.calibrate()
    assert SyncCounter.count_in(lambda: first_pass(*lists, dot=("grad", "grad"), **kwargs)) == 0
    assert SyncCounter.count_in(lambda: move(*lists, eps_hat=1e-8, alpha_grad=1.0, alpha_avg=1.0)) == 0
