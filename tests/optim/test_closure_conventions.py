"""Both closure conventions, and a first evaluation the caller ran itself (``loss=``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optim import L4, SLS, RNGSnapshot, SaLSA
from optim._evaluation import LossEvaluator

from conftest import classification_batch, model_closure, small_mlp

OPTIMIZERS = {
    "salsa": lambda params: SaLSA(params, forced_searches=3),
    "salsa_sgd": lambda params: SaLSA(params, direction="sgd", init_step_size=0.5),
    "sls": lambda params: SLS(params),
    "sls_adam": lambda params: SLS(params, direction="adam"),
    "l4": lambda params: L4(params),
}
STEPS = 12


def train(make_optimizer, step) -> tuple[list[float], list[torch.Tensor]]:
    """``STEPS`` steps on fixed batches; ``step(opt, model, x, y)`` takes one and returns L0."""
    model = small_mlp(seed=1)
    opt = make_optimizer(model.parameters())
    losses = []
    for i in range(STEPS):
        x, y = classification_batch(seed=i)
        losses.append(float(step(opt, model, x, y)))
    return losses, [p.detach().clone() for p in model.parameters()]


def salsa_convention(opt, model, x, y):
    opt.zero_grad()
    return opt.step(model_closure(model, x, y))


def sls_convention(opt, model, x, y):
    # The SLS reference's closure: returns the loss, never calls backward, no zero_grad before.
    return opt.step(lambda: nn.functional.cross_entropy(model(x), y))


def precomputed(opt, model, x, y):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return opt.step(lambda: nn.functional.cross_entropy(model(x), y), loss=loss)


def accumulated(opt, model, x, y):
    """Two micro-batches, each loss halved, gradients accumulated; trials see the mean of both."""
    halves = [(x[:32], y[:32]), (x[32:], y[32:])]
    opt.zero_grad()
    total = 0.0
    for xs, ys in halves:
        loss = nn.functional.cross_entropy(model(xs), ys) / 2
        loss.backward()
        total += loss.detach()
    return opt.step(lambda: sum(nn.functional.cross_entropy(model(a), b) / 2 for a, b in halves), loss=total)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("step", [sls_convention, precomputed])
def test_other_conventions_follow_the_salsa_convention_bit_for_bit(name, step):
    expected_losses, expected_params = train(OPTIMIZERS[name], salsa_convention)
    losses, params = train(OPTIMIZERS[name], step)
    assert losses == expected_losses
    assert all(torch.equal(a, b) for a, b in zip(params, expected_params))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_accumulated_micro_batches_follow_the_full_batch_to_float_tolerance(name):
    expected_losses, expected_params = train(OPTIMIZERS[name], salsa_convention)
    losses, params = train(OPTIMIZERS[name], accumulated)
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(params, expected_params))


def test_trials_of_an_accumulated_step_see_the_mean_over_the_micro_batches():
    model = small_mlp(seed=2)
    x, y = classification_batch(seed=3)
    halves = [(x[:32], y[:32]), (x[32:], y[32:])]
    trial_losses = []

    def closure():
        loss = sum(nn.functional.cross_entropy(model(a), b) / 2 for a, b in halves)
        trial_losses.append(loss.item())
        return loss

    opt = SLS(model.parameters(), init_step_size=50.0)  # large: at least one backtrack
    total = 0.0
    for xs, ys in halves:
        loss = nn.functional.cross_entropy(model(xs), ys) / 2
        loss.backward()
        total += loss.item()
    opt.step(closure, loss=total)
    assert len(trial_losses) >= 2
    # At the accepted point, the last trial equals the full-batch loss of the same parameters.
    with torch.no_grad():
        assert trial_losses[-1] == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)


def test_l4_with_a_precomputed_loss_needs_no_closure():
    model = small_mlp()
    x, y = classification_batch()
    opt = L4(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step(loss=loss)
    assert opt.diagnostics["n_forwards"] == 1 and opt.diagnostics["step_size"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_snapshot_replays_the_masks_of_the_callers_forward():
    model = small_mlp(dropout=0.5)
    x, y = classification_batch()
    params = list(model.parameters())
    snapshot = RNGSnapshot(params)
    loss = nn.functional.cross_entropy(model(x), y)
    evaluate = LossEvaluator(lambda: nn.functional.cross_entropy(model(x), y), params, None, loss, snapshot)
    assert torch.equal(evaluate.trial(), loss.detach())
    without = LossEvaluator(lambda: nn.functional.cross_entropy(model(x), y), params, None, loss)
    assert not torch.equal(without.trial(), loss.detach())


# -- bad input: a clear error before any parameter moves ----------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_loss_without_gradients_is_an_error_before_anything_moves(name):
    model = small_mlp()
    x, y = classification_batch()
    opt = OPTIMIZERS[name](model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"loss: .*no parameter has a \.grad"):
        opt.step(model_closure(model, x, y), loss=1.0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", ["salsa", "sls", "l4"])
def test_a_plain_closure_that_calls_backward_itself_is_an_error_naming_the_conventions(name):
    model = small_mlp()
    x, y = classification_batch()
    opt = OPTIMIZERS[name](model.parameters())
    before = [p.detach().clone() for p in model.parameters()]

    def closure():  # torch.optim.LBFGS's convention
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"called loss.backward\(\) itself.*closure\(backwards"):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", ["salsa", "sls"])
def test_a_closure_calling_backward_in_a_no_grad_trial_fails_at_once(name):
    model = small_mlp()
    x, y = classification_batch()
    opt = OPTIMIZERS[name](model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure(backwards: bool = False):  # ignores the flag
        calls.append(backwards)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"during a trial evaluation.*no_grad.*closure\(\)"):
        opt.step(closure)
    assert calls == [True, False]  # the first trial
    # Back at the start point of the search (the relative moves cancel up to rounding).
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), before))


class SaLSAStyle:
    """A closure object with a ``backwards`` flag (the benchmark's and many trainers' shape)."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y

    def __call__(self, backwards: bool = False):
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        if backwards:
            loss.backward()
        return loss


class SLSStyle(SaLSAStyle):
    def __call__(self):  # type: ignore[override]
        return nn.functional.cross_entropy(self.model(self.x), self.y)


class NeedsAnArgument(SaLSAStyle):
    def __call__(self, batch):  # type: ignore[override]
        raise AssertionError("never called")


@pytest.mark.parametrize("name", ["salsa", "sls"])
def test_closure_objects_follow_the_convention_of_their_call_method(name):
    def with_objects(make_closure):
        def step(opt, model, x, y):
            opt.zero_grad()
            return opt.step(make_closure(model, x, y))

        return step

    expected_losses, expected_params = train(OPTIMIZERS[name], salsa_convention)
    for closure_class in (SaLSAStyle, SLSStyle):
        losses, params = train(OPTIMIZERS[name], with_objects(closure_class))
        assert losses == expected_losses
        assert all(torch.equal(a, b) for a, b in zip(params, expected_params))
    model = small_mlp()
    with pytest.raises(TypeError, match=r"closure: it takes required parameters \['batch'\]"):
        OPTIMIZERS[name](model.parameters()).step(NeedsAnArgument(model, *classification_batch()))


@pytest.mark.parametrize("cls", [SaLSA, SLS, L4])
def test_closure_with_an_unexpected_signature_is_a_type_error_naming_both_conventions(cls):
    theta = nn.Parameter(torch.ones(2))
    opt = cls([theta])
    with pytest.raises(TypeError, match=r"\['batch'\].*closure\(backwards: bool = False\).*closure\(\)"):
        opt.step(lambda batch: (theta**2).sum())
    assert torch.equal(theta.detach(), torch.ones(2))
