"""SaLSA(as_released=True) against the authors' release itself (``salsa-optimizer`` 0.1.0).

The release reseeds the RNGs from the clock inside its closure wrapper; the models here are
deterministic (no dropout), so both optimizers see exactly the same losses and gradients and must
produce bit-identical parameters, step sizes and counters at every step.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from optim import SaLSA

release = pytest.importorskip("salsa.SaLSA", reason="the dev extra installs salsa-optimizer==0.1.0")


def twin_models(seed: int = 1) -> tuple[nn.Module, nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 3))

    return build(), build()


def twin_optimizers() -> tuple[nn.Parameter, nn.Parameter, SaLSA, object]:
    """Two equal 2-vectors, one under SaLSA(as_released=True), one under the release."""
    theta_a = nn.Parameter(torch.tensor([0.5, -0.3]))
    theta_b = nn.Parameter(theta_a.detach().clone())
    return theta_a, theta_b, SaLSA([theta_a], as_released=True), release.SaLSA([theta_b])


def step_both(ours, theirs, closure_ours, closure_theirs) -> None:
    ours.zero_grad()
    theirs.zero_grad()
    ours.step(closure_ours)
    with contextlib.redirect_stdout(io.StringIO()):  # the release prints on ties
        theirs.step(closure_theirs)


def assert_same_state(ours: SaLSA, theirs, model_a: nn.Module, model_b: nn.Module) -> None:
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
    assert ours.diagnostics["step_size"] == theirs.step_size
    assert ours.diagnostics["n_forwards"] == theirs.state["n_forwards"]
    assert ours.diagnostics["n_backtracks"] == theirs.state["n_backtr"]
    assert ours.diagnostics["n_steps"] == theirs.state["step"]


def cross_entropy_closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def closure(backwards: bool = False) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        if backwards:
            loss.backward()
        return loss

    return closure


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_mv": True}, {"speed_up": False}, {"c": 0.3, "momentum": (0.9, 0.99, 0.99)}],
    ids=["defaults", "use_mv", "no_speed_up", "c0.3"],
)
def test_follows_the_release_step_for_step(kwargs):
    torch.manual_seed(0)
    x, y = torch.randn(128, 20), torch.randint(0, 3, (128,))
    a, b = twin_models()
    ours_kwargs = {k: v for k, v in kwargs.items() if k != "momentum"}
    if "momentum" in kwargs:
        ours_kwargs["betas"] = kwargs["momentum"]
    ours = SaLSA(a.parameters(), as_released=True, **ours_kwargs)
    theirs = release.SaLSA(b.parameters(), **kwargs)
    skipped_searches = 0
    for _ in range(120):
        searches = ours.diagnostics["n_searches"]
        step_both(ours, theirs, cross_entropy_closure(a, x, y), cross_entropy_closure(b, x, y))
        assert_same_state(ours, theirs, a, b)
        skipped_searches += ours.diagnostics["n_searches"] == searches
    if kwargs.get("speed_up", True) and "use_mv" in kwargs:
        assert skipped_searches > 0, "the speed-up rule should have skipped some searches"


def test_failed_search_leaves_the_last_trial_and_stores_one_more_backtrack():
    # Every evaluation returns a larger loss than the one before, so every trial fails (and
    # never ties, which the release would accept).
    def make_closure(theta, calls):
        def closure(backwards: bool = False) -> torch.Tensor:
            calls.append(1)
            value = (theta**2).sum() + float(len(calls))
            if backwards:
                value.backward()
            return value

        return closure

    theta_a, theta_b, ours, theirs = twin_optimizers()
    for _ in range(2):
        step_both(ours, theirs, make_closure(theta_a, []), make_closure(theta_b, []))
        assert torch.equal(theta_a, theta_b)
        assert ours.diagnostics["step_size"] == theirs.step_size
    assert ours.diagnostics["n_failed_searches"] == 2
    assert ours.diagnostics["n_backtracks"] == theirs.state["n_backtr"] == 2 * 99
    assert ours.diagnostics["step_size"] == pytest.approx(1.1 * (1.1 * 0.8**100) * 0.8**100, rel=1e-12)


def test_zero_loss_guard_and_exact_ties():
    # L0 == 0 exactly (guard: move along P m_hat, store the grown eta), then a loss that is
    # constant in value while its gradient is not (exact ties L0 == L1).
    def make_closure(theta, step):
        def closure(backwards: bool = False) -> torch.Tensor:
            offset = 0.0 if step == 0 else 1.0
            value = (theta - theta.detach()).sum() + offset
            if backwards:
                value.backward()
            return value

        return closure

    theta_a, theta_b, ours, theirs = twin_optimizers()
    for step in range(4):
        step_both(ours, theirs, make_closure(theta_a, step), make_closure(theta_b, step))
        assert torch.equal(theta_a, theta_b)
        assert ours.diagnostics["step_size"] == theirs.step_size
        assert ours.diagnostics["n_forwards"] == theirs.state["n_forwards"]
    assert not torch.equal(theta_a.detach(), torch.tensor([0.5, -0.3]))
    assert ours.diagnostics["avg_decrease"] == 0.0  # ties never update the decrease EMA


def test_default_class_fixes_the_off_by_one():
    """On a linear loss the first trial (eta = 1.1) is accepted; the step is eta * P g with
    v_hat = v / (1 - beta2) by default and v / (1 - beta2**2) in the release."""

    def linear(p: torch.Tensor, backwards: bool) -> torch.Tensor:
        value = p.sum() + 10.0
        if backwards:
            value.backward()
        return value

    start = torch.tensor([0.5, -0.3], dtype=torch.float64)
    fixed, released = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    for opt, p in ((SaLSA([fixed]), fixed), (SaLSA([released], as_released=True), released)):
        opt.zero_grad()
        opt.step(lambda backwards=False, p=p: linear(p, backwards))
        assert opt.diagnostics["n_backtracks"] == 0
    v = 1 - 0.999  # (1 - beta2) g^2 with g = 1
    expected_fixed = start - 1.1 / ((v / (1 - 0.999)) ** 0.5 + 1e-8)
    expected_released = start - 1.1 / ((v / (1 - 0.999**2)) ** 0.5 + 1e-8)
    torch.testing.assert_close(fixed.detach(), expected_fixed, rtol=1e-12, atol=0)
    torch.testing.assert_close(released.detach(), expected_released, rtol=1e-12, atol=0)
