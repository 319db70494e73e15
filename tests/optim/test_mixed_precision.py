"""Mixed precision on CPU: bf16 autocast, fp16 with a GradScaler, and a skipped overflow step.

Conventions under test (see ``LineSearchOptimizer.step``): with ``grad_scaler`` the closure
backpropagates ``scaler.scale(loss)`` and returns the unscaled loss; the optimizer unscales the
gradients (``scaler.unscale_(opt)``) before using them, skips and counts (``n_skipped``) a step
whose loss or gradients are not finite, and the caller calls ``scaler.update()``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from optim import L4, SLS, SaLSA

from precision_utils import FP16_AUTOCAST_ON_CPU, ScaledClosure, batch, fp32_loss, mlp

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "salsa": SaLSA,
    "salsa_sgd": lambda params: SaLSA(params, direction="sgd"),
    "sls": SLS,
    "sls_adam": lambda params: SLS(params, direction="adam"),
    "l4": L4,
}


def _params(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# -- (a) bf16 autocast ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["salsa", "sls"])
def test_bf16_autocast_trains(name: str) -> None:
    model = mlp()
    x, y = batch()
    opt = OPTIMIZERS[name](model.parameters())
    output_dtypes = set()

    def closure(backwards: bool = False) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            output_dtypes.add(out.dtype)
            loss = F.cross_entropy(out, y)
        if backwards:
            loss.backward()
        return loss

    initial = fp32_loss(model, x, y)
    n_steps = 30
    for _ in range(n_steps):
        opt.zero_grad()
        loss = opt.step(closure)
        assert torch.isfinite(loss)

    assert output_dtypes == {torch.bfloat16}  # the forward really ran in bf16
    for p in model.parameters():
        assert p.dtype == torch.float32
        assert p.grad.dtype == torch.float32
        assert torch.isfinite(p).all()
    # Progress measured in fp32, outside autocast (fp32 training reaches ~0.2 / ~0.37 here).
    final = fp32_loss(model, x, y)
    assert final < 0.5 * initial, (initial, final)
    diag = opt.diagnostics
    assert diag["n_steps"] == n_steps
    assert diag["n_backwards"] == n_steps
    assert diag["n_skipped"] == 0
    assert diag["n_forwards"] > n_steps  # the searches evaluated trial points
    assert diag["n_searches"] > 0


# -- (b) fp16 with a GradScaler ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fp16_grad_scaler_trains(name: str) -> None:
    model = mlp()
    x, y = batch()
    opt = OPTIMIZERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    init_scale = scaler.get_scale()
    assert init_scale > 1.0  # else "unscaled" would be indistinguishable from "scaled"
    closure = ScaledClosure(model, x, y, scaler)

    initial = fp32_loss(model, x, y)
    n_steps = 30
    for _ in range(n_steps):
        opt.zero_grad()
        loss = opt.step(closure, grad_scaler=scaler)
        # The optimizer returns the closure's (unscaled) loss.
        assert 0.0 < loss.item() < 2.0
        scaler.update()

    if FP16_AUTOCAST_ON_CPU:
        assert closure.output_dtypes == {torch.float16}
    final = fp32_loss(model, x, y)
    assert final < 0.7 * initial, (initial, final)  # L4, the slowest here, reaches ~0.58 of it
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    diag = opt.diagnostics
    assert diag["n_skipped"] == 0
    assert diag["n_steps"] == n_steps
    # No overflow was found, so the scaler never backed off (growth only after 2000 steps).
    assert scaler.get_scale() == init_scale


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fp16_optimizer_sees_unscaled_gradients(name: str) -> None:
    model = mlp()
    x, y = batch()
    # Reference gradients at the initial point: the same fp16 forward without a scaler, and a
    # full fp32 forward.
    ScaledClosure(model, x, y, None)(backwards=True)
    ref_fp16 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    ref_fp32 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    opt = OPTIMIZERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    scale = scaler.get_scale()
    before = _params(model)
    opt.step(ScaledClosure(model, x, y, scaler), grad_scaler=scaler)

    grads = [p.grad for p in model.parameters()]
    for g, r16, r32 in zip(grads, ref_fp16, ref_fp32):
        # Scaling by a power of two is exact in fp16 (no overflow here): same grads as unscaled.
        torch.testing.assert_close(g, r16, rtol=1e-3, atol=1e-6)
        # And the fp32 gradient up to fp16 rounding; not `scale` times it.
        torch.testing.assert_close(g, r32, rtol=2e-2, atol=2e-3 * r32.abs().max().item())
    ratio = torch.cat([g.reshape(-1) for g in grads]).norm() / torch.cat([r.reshape(-1) for r in ref_fp32]).norm()
    assert ratio.item() == pytest.approx(1.0, abs=1e-2), f"grads are {ratio.item()} x the true ones (scale {scale})"
    assert opt.diagnostics["n_skipped"] == 0

    if name in ("salsa_sgd", "sls"):
        # SGD direction: the first step is theta0 - eta * g exactly, so the step taken used the
        # unscaled gradient (a scaled one would have moved `scale` times as far).
        eta = opt.diagnostics["step_size"]
        for b, p, r16 in zip(before, model.parameters(), ref_fp16):
            torch.testing.assert_close(b - p.detach(), eta * r16, rtol=1e-3, atol=1e-6)
    scaler.update()  # the optimizer recorded its inf check: update() works and keeps the scale
    assert scaler.get_scale() == scale


# -- (c) a non-finite step under the scaler -------------------------------------------------------


def _optimizer_state(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [v.clone() for p_state in (opt.state[p] for g in opt.param_groups for p in g["params"])
            for v in p_state.values() if isinstance(v, Tensor)]


@pytest.mark.parametrize("inject", ["grad", "loss"])
@pytest.mark.parametrize("name", ["salsa", "sls", "sls_adam", "l4"])
def test_fp16_overflow_step_is_skipped(name: str, inject: str) -> None:
    model = mlp()
    x, y = batch()
    opt = OPTIMIZERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    bad_step, n_steps = 5, 15
    closure = ScaledClosure(model, x, y, scaler, inject=inject, inject_at=bad_step)
    losses = []

    for i in range(n_steps):
        before = _params(model)
        state_before = _optimizer_state(opt)
        diag_before = dict(opt.diagnostics)
        scale_before = scaler.get_scale()
        opt.zero_grad()
        loss = opt.step(closure, grad_scaler=scaler)
        scaler.update()
        diag = opt.diagnostics
        after = list(model.parameters())
        # Every step evaluates the gradient once, skipped or not.
        assert diag["n_backwards"] == diag_before["n_backwards"] + 1

        if i == bad_step:
            if inject == "loss":
                assert not torch.isfinite(loss)
            assert all(torch.equal(b, a.detach()) for b, a in zip(before, after)), "params moved"
            # Adam moments / L4's EMAs did not absorb the inf gradient.
            state_after = _optimizer_state(opt)
            assert len(state_after) == len(state_before)
            assert all(torch.equal(s, t) for s, t in zip(state_before, state_after))
            assert diag["n_skipped"] == diag_before["n_skipped"] + 1
            assert diag["n_steps"] == diag_before["n_steps"]  # not counted as a step taken
            assert diag["step_size"] == diag_before["step_size"]
            assert diag["n_forwards"] == diag_before["n_forwards"] + 1  # no trials were run
            # The scaler saw the inf when the optimizer unscaled: update() backed off (x0.5).
            assert scaler.get_scale() == pytest.approx(0.5 * scale_before)
        else:
            assert torch.isfinite(loss)
            assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after)), "no step"
            assert diag["n_skipped"] == diag_before["n_skipped"]
            assert diag["n_steps"] == diag_before["n_steps"] + 1
            assert scaler.get_scale() == scale_before
            assert all(torch.isfinite(p).all() for p in after)
            losses.append(loss.item())

    assert opt.diagnostics["n_skipped"] == 1
    assert opt.diagnostics["n_steps"] == n_steps - 1
    # Training went on after the skip: the losses after it keep falling below the last one before.
    assert losses[-1] < losses[bad_step - 1]
    assert fp32_loss(model, x, y) < losses[0]
