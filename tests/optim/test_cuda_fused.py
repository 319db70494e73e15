"""The fused path on a CUDA device (the Triton kernels of ``optim/_fused_triton.py``) against the
interface's maths and against the foreach path on the same device.

Marked ``cuda`` (``python -m pytest -m cuda``, ``scripts/gpu_check.sh``). Where the device has no
fused kernels (``optim/_fused_triton.py`` or Triton missing) each test is skipped with the reason.
``CUDA_TESTS_ON_CPU=1`` runs them on the CPU's kernels as a dry run of their logic.
"""

from __future__ import annotations

import pytest
import torch

from optim import _fused
from optim.directions import AdamDirection, FusedAdamDirection

from cuda_utils import SyncCounter, device, require_bf16
from conftest import classification_batch, model_closure, small_mlp
from test_fused import DOTS, VARIANTS, kernel_inputs, reference_first_pass, settle

pytestmark = pytest.mark.cuda
DEVICE = device()
KERNEL_TOLERANCES = {torch.float32: (2e-5, 1e-5), torch.float64: (1e-12, 1e-13), torch.bfloat16: (1e-2, 1e-2)}


@pytest.fixture(autouse=True)
def device_kernels() -> None:
    reason = _fused.unavailable_reason(DEVICE.type)
    if reason is not None:
        pytest.skip(f"no fused kernels for {DEVICE.type} tensors: {reason}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dot", DOTS, ids=str)
def test_first_pass_on_the_device_is_the_interfaces_maths(dtype, dot):
    if dtype == torch.bfloat16:
        require_bf16()
    params, grads, exp_avgs, exp_avg_sqs = (
        [x.to(DEVICE) for x in xs] for xs in kernel_inputs(dtype, shapes=((33, 17), (5,), (70_000,), (0,)))
    )
    decays = [1.0, 0.99, 0.5, 1.0]
    coefficients = dict(beta1=0.9, beta2=0.999, eps_hat=3e-9, alpha_grad=-0.01, alpha_avg=0.02)
    expected = [
        reference_first_pass(p.cpu(), g.cpu(), m.cpu(), v.cpu(), decay=d, dot=dot, **coefficients)
        for p, g, m, v, d in zip(params, grads, exp_avgs, exp_avg_sqs, decays)
    ]
    result = _fused.first_pass(params, grads, exp_avgs, exp_avg_sqs, decays=decays, dot=dot, **coefficients)
    rtol, atol = KERNEL_TOLERANCES[dtype]
    for p, m, v, (p_ref, m_ref, v_ref, _) in zip(params, exp_avgs, exp_avg_sqs, expected):
        torch.testing.assert_close(m.cpu().double(), m_ref, rtol=rtol, atol=atol)
        torch.testing.assert_close(v.cpu().double(), v_ref, rtol=rtol, atol=atol)
        torch.testing.assert_close(p.cpu().double(), p_ref, rtol=rtol, atol=atol)
    if dot is None:
        assert result is None
    else:
        assert result.device.type == DEVICE.type and result.dim() == 0
        assert result.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        total = sum(e[3] for e in expected).item()
        assert result.item() == pytest.approx(total, rel=2e-2 if dtype == torch.bfloat16 else 1e-5)


def test_a_move_on_the_device_is_the_interfaces_maths():
    params, grads, exp_avgs, exp_avg_sqs = ([x.to(DEVICE) for x in xs] for xs in kernel_inputs(torch.float32))
    expected = [p + (0.2 * g - 0.3 * m) / (v.sqrt() + 1e-8) for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs)]
    _fused.move(params, grads, exp_avgs, exp_avg_sqs, eps_hat=1e-8, alpha_grad=0.2, alpha_avg=-0.3)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)


def device_run(make, fused: bool, dtype: torch.dtype, steps: int = 20) -> tuple[list[tuple], list[torch.Tensor], object]:
    model = small_mlp(seed=1, dtype=dtype).to(DEVICE)
    opt = make(list(model.parameters()), fused)
    decisions = []
    for i in range(steps):
        x, y = classification_batch(seed=i % 7, dtype=dtype)
        if i % 5 == 4 and "avg_step_size_fast" in opt.param_groups[0]:
            settle(opt)
        opt.zero_grad()
        opt.step(model_closure(model, x.to(DEVICE), y.to(DEVICE)))
        d = opt.diagnostics
        decisions.append((d.step_size, d.n_forwards, d.n_skipped, d.n_backtracks, d.n_searches, d.n_failed_searches))
    return decisions, [p.detach().cpu() for p in model.parameters()], opt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fused_on_the_device_takes_the_foreach_paths_decisions_exactly(name, dtype):
    fused, fused_params, opt = device_run(VARIANTS[name], True, dtype)
    foreach, foreach_params, reference = device_run(VARIANTS[name], False, dtype)
    assert isinstance(opt.direction, FusedAdamDirection) and type(reference.direction) is AdamDirection
    assert fused == foreach
    close = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    for a, b in zip(fused_params, foreach_params):
        torch.testing.assert_close(a, b, **close)


@pytest.mark.parametrize("name", ["salsa", "adamsls", "sls_adam"])
def test_the_fused_path_syncs_no_more_than_the_foreach_path(name):
    """One host sync per evaluated loss and one for the gradient term, on both paths: the
    kernels return the inner product as a device tensor and read nothing back."""
    SyncCounter.calibrate()
    counts = {}
    for fused in (True, False):
        model = small_mlp().to(DEVICE)
        x, y = (t.to(DEVICE) for t in classification_batch(n=128))
        opt = VARIANTS[name](list(model.parameters()), fused)
        for _ in range(2):  # warm-up: kernels compiled, handles made
            opt.zero_grad()
            opt.step(model_closure(model, x, y))
        opt.zero_grad()
        counts[fused] = SyncCounter.count_in(lambda: opt.step(model_closure(model, x, y)))
    assert counts[True] == counts[False]
