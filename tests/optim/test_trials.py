"""How trials evaluate the loss: same randomness, frozen BatchNorm statistics, NaN handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optim import L4, SLS, SaLSA
from optim._evaluation import LossEvaluator

from conftest import classification_batch, model_closure, small_mlp


def test_trial_at_eta_zero_reproduces_l0_with_dropout():
    model = small_mlp(dropout=0.5)
    x, y = classification_batch()
    evaluate = LossEvaluator(model_closure(model, x, y), list(model.parameters()), None)
    l0 = evaluate.first()
    # The parameters have not moved: a trial is a trial at eta = 0.
    assert torch.equal(evaluate.trial(), l0)
    assert torch.equal(evaluate.trial(), l0)
    # Without the replay the mask differs.
    with torch.no_grad():
        assert not torch.equal(model_closure(model, x, y)(), l0)


def test_all_evaluations_of_a_step_share_masks_and_trials_consume_no_randomness():
    masks: list[torch.Tensor] = []
    theta = nn.Parameter(torch.ones(64))

    def closure(backwards: bool = False) -> torch.Tensor:
        mask = nn.functional.dropout(torch.ones(64), 0.5)
        masks.append(mask)
        value = ((theta * mask - 3.0) ** 2).mean()
        if backwards:
            value.backward()
        return value

    torch.manual_seed(7)
    opt = SLS([theta], init_step_size=100.0, eta_max=1e3)  # large: forces several trials
    opt.zero_grad()
    opt.step(closure)
    first_step = list(masks)
    assert len(first_step) > 2
    assert all(torch.equal(m, first_step[0]) for m in first_step)
    masks.clear()
    opt.zero_grad()
    opt.step(closure)
    # The stream continues as if only the first evaluation had drawn: replay it by hand.
    torch.manual_seed(7)
    expected = [nn.functional.dropout(torch.ones(64), 0.5) for _ in range(2)]
    assert torch.equal(first_step[0], expected[0])
    assert torch.equal(masks[0], expected[1])
    assert not torch.equal(masks[0], first_step[0])


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("freeze", [True, False])
def test_batchnorm_running_stats_in_trials(freeze):
    model = bn_model()
    reference = bn_model()
    x, y = classification_batch()
    opt = SLS(model.parameters(), init_step_size=50.0, freeze_bn_stats_in_trials=model if freeze else None)
    opt.zero_grad()
    opt.step(model_closure(model, x, y))
    bn, ref_bn = model[1], reference[1]
    reference(x)  # exactly one training forward at theta0
    forwards = opt.diagnostics["n_forwards"]
    assert forwards > 2
    if freeze:
        assert bn.num_batches_tracked.item() == 1
        assert torch.equal(bn.running_mean, ref_bn.running_mean)
        assert torch.equal(bn.running_var, ref_bn.running_var)
        assert bn.track_running_stats  # restored after the trials
    else:
        assert bn.num_batches_tracked.item() == forwards
        assert not torch.equal(bn.running_mean, ref_bn.running_mean)


def test_nan_first_loss_skips_the_step_untouched():
    model = small_mlp()
    x, y = classification_batch()
    opt = SaLSA(model.parameters())
    good = model_closure(model, x, y)
    for _ in range(3):
        opt.zero_grad()
        opt.step(good)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg_sq"].clone() for p in model.parameters()]
    step_size = opt.diagnostics["step_size"]

    def nan_closure(backwards: bool = False) -> torch.Tensor:
        value = good(backwards=False) * float("nan")
        if backwards:
            value.backward()
        return value

    opt.zero_grad()
    loss = opt.step(nan_closure)
    assert math.isnan(loss.item())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(torch.equal(opt.state[p]["exp_avg_sq"], m) for p, m in zip(model.parameters(), moments))
    assert opt.diagnostics["n_skipped"] == 1
    assert opt.diagnostics["n_steps"] == 3
    assert opt.diagnostics["step_size"] == step_size
    opt.zero_grad()
    opt.step(good)  # carries on
    assert opt.diagnostics["n_steps"] == 4


@pytest.mark.parametrize("cls", [SaLSA, SLS, L4])
def test_non_finite_gradient_skips_the_step(cls):
    model = small_mlp()
    x, y = classification_batch()
    opt = cls(model.parameters())
    good = model_closure(model, x, y)

    def inf_grad(backwards: bool = False) -> torch.Tensor:
        value = good(backwards)
        if backwards:
            next(model.parameters()).grad[0, 0] = float("inf")
        return value

    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    opt.step(inf_grad)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert opt.diagnostics["n_skipped"] == 1
    opt.zero_grad()
    opt.step(good)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_trial_loss_backtracks():
    theta = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))

    def closure(backwards: bool = False) -> torch.Tensor:
        value = (theta**2).sum()
        if theta[0] < 0 or theta[1] > 0:  # "diverged": a sign flipped
            value = value * float("nan")
        if backwards:
            value.backward()
        return value

    opt = SLS([theta], init_step_size=10.0, reset_option=0)
    opt.zero_grad()
    opt.step(closure)
    # Trials are at theta (1 - 2 eta): Armijo alone accepts eta <= 0.9, but the loss is NaN
    # once the signs flip (eta > 0.5), so the search must go below 0.5.
    eta = opt.diagnostics["step_size"]
    assert eta <= 0.5 and eta / 0.9 > 0.5
    assert torch.isfinite(theta).all()


def test_a_closure_is_required_and_must_return_a_one_element_tensor():
    theta = nn.Parameter(torch.zeros(2))
    opt = SaLSA([theta])
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="one-element tensor"):
        opt.step(lambda backwards=False: 1.0)
