"""The paper's four line-search columns and SLS at its defaults, step for step against the
authors' code.

* The as-run presets (``optim.presets``) against the authors' own ``AdamSLS``, as their
  ``test/embedder.py`` builds it for each column. The release ``salsa-optimizer`` 0.1.0 (the dev
  extra) ships that class in the version of the paper's runs (its tie rule predates the 2025
  change that accepts an exact tie at once).
* ``SLS()`` against the rules of ``Sls`` in ``IssamLaradji/sls`` (``sls/sls.py``, ``sls/utils.py``),
  written out below as a plain loop over the parameters.

The models are deterministic float64 networks (no dropout), so the references' clock-seeded
closures see the same losses as ours; losses and step sizes must agree to 1e-5 and the numbers of
forward passes exactly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from optim import SLS
from optim.presets import paper_optimizer

adam_sls = pytest.importorskip("salsa.adam_sls", reason="the dev extra installs salsa-optimizer==0.1.0")

STEPS = 150


def mlp(seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def batches(n: int, seed: int = 11) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, 8, generator=generator, dtype=torch.float64),
         torch.randint(0, 3, (32,), generator=generator))
        for _ in range(n)
    ]


def closure_of(value: Callable[[], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``closure(backwards=False)`` evaluating ``value()``, with its backward when asked."""

    def closure(backwards: bool = False) -> torch.Tensor:
        loss = value()
        if backwards:
            loss.backward()
        return loss

    return closure


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return closure_of(lambda: nn.functional.cross_entropy(model(x), y))


# How test/embedder.py builds each column (c = 0.3, beta = 0.99 from test/run_multiple.py; only
# adamsls passes speed_up, which run_multiple.py sets to True).
AUTHORS_COLUMNS = {
    "adamsls": dict(c=0.3, beta_s=0.99, speed_up=True),
    "sgdsls": dict(base_opt="scalar", gv_option="scalar", c=0.3, beta_s=0.99),
    "oladamsls": dict(c=0.1, smooth=False),
    "olsgdsls": dict(c=0.1, base_opt="scalar", gv_option="scalar", smooth=False),
}


@pytest.mark.parametrize("column", sorted(AUTHORS_COLUMNS))
def test_preset_follows_the_authors_adamsls(column):
    ours_model, their_model = mlp(), mlp()
    ours = paper_optimizer(column, ours_model.parameters())
    theirs = adam_sls.AdamSLS([list(their_model.parameters())], **AUTHORS_COLUMNS[column])
    searches = 0
    for x, y in batches(STEPS):
        ours.zero_grad()
        loss_ours = ours.step(closure_for(ours_model, x, y))
        theirs.zero_grad()
        with contextlib.redirect_stdout(io.StringIO()):  # the reference prints on ties
            loss_theirs = theirs.step(closure_for(their_model, x, y))
        assert loss_ours.item() == pytest.approx(loss_theirs.item(), rel=1e-5, abs=1e-12)
        assert ours.diagnostics["step_size"] == pytest.approx(theirs.state["step_sizes"][0], rel=1e-5)
        assert ours.diagnostics["n_forwards"] == theirs.state["n_forwards"]
        searches = ours.diagnostics["n_searches"]
    for p, q in zip(ours_model.parameters(), their_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-8)
    # The speed-up rule is on only in "ADAM SaLSa": the other columns search on every step.
    if column == "adamsls":
        assert searches < STEPS
    else:
        assert searches == STEPS


def run_against_the_authors(column, make_closure, steps, start):
    """Our preset and the authors' AdamSLS on two copies of the parameters ``start``."""
    ours_p, their_p = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    ours = paper_optimizer(column, [ours_p])
    theirs = adam_sls.AdamSLS([[their_p]], **AUTHORS_COLUMNS[column])
    for k in range(steps):
        ours.zero_grad()
        ours.step(make_closure(ours_p, k))
        their_p.grad = None
        with contextlib.redirect_stdout(io.StringIO()):
            theirs.step(make_closure(their_p, k))
        torch.testing.assert_close(ours_p.detach(), their_p.detach(), rtol=1e-5, atol=1e-12)
        assert ours.diagnostics["step_size"] == pytest.approx(theirs.state["step_sizes"][0], rel=1e-5)
        assert ours.diagnostics["n_forwards"] == theirs.state["n_forwards"]
    return ours


@pytest.mark.parametrize("column", sorted(AUTHORS_COLUMNS))
def test_failed_searches_follow_the_authors(column):
    """Every evaluation returns more than the one before: all 200 trials fail; the step is taken
    with eta * 0.9**200 (along the momentum for the Adam columns) and that eta is kept."""

    def make_closure(theta, k):
        calls = []

        def value():
            calls.append(1)
            return (theta**2).sum() + float(len(calls))

        return closure_of(value)

    start = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    ours = run_against_the_authors(column, make_closure, 3, start)
    assert ours.diagnostics["n_failed_searches"] == 3


@pytest.mark.parametrize("column", sorted(AUTHORS_COLUMNS))
def test_zero_loss_steps_follow_the_authors(column):
    """L0 == 0 exactly: no search; the step goes along the momentum (the gradient for the SGD
    columns) with the grown eta, which is kept; then ordinary steps again."""

    def make_closure(theta, k):
        return closure_of(lambda: (theta - theta.detach()).sum() if k < 2 else 10 * ((theta - 2) ** 2).sum())

    start = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    ours = run_against_the_authors(column, make_closure, 5, start)
    assert ours.diagnostics["n_searches"] == 3


# -- the SLS reference, written out from IssamLaradji/sls ----------------------------------------


class ReferenceSls:
    """``Sls`` (armijo, reset_option 1) as its code reads: one group, a deep copy of theta0."""

    def __init__(self, params, init_step_size=1.0, c=0.1, beta_b=0.9, gamma=2.0, n_batches=500):
        self.params = list(params)
        self.step_size, self.c, self.beta_b = init_step_size, c, beta_b
        self.growth = gamma ** (1.0 / n_batches)
        self.n_forwards = 0

    def step(self, closure) -> float:
        loss = closure()
        loss.backward()
        self.n_forwards += 1
        start = copy.deepcopy([p.detach() for p in self.params])
        grads = [p.grad.detach().clone() for p in self.params]
        grad_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        step_size = self.step_size * self.growth  # reset_step, option 1; no cap for Armijo
        with torch.no_grad():
            if grad_norm >= 1e-8:
                found = False
                for _ in range(100):
                    for p, p0, g in zip(self.params, start, grads):
                        p.copy_(p0 - step_size * g)
                    loss_next = float(closure())
                    self.n_forwards += 1
                    if loss_next - (float(loss) - step_size * self.c * grad_norm**2) <= 0:
                        found = True
                        break
                    step_size *= self.beta_b
                if not found:
                    for p, p0, g in zip(self.params, start, grads):
                        p.copy_(p0 - 1e-6 * g)
        self.step_size = step_size
        return loss.item()


def run_both(ours_model, ref_model, make_closure, steps, **kwargs):
    ours = SLS(ours_model.parameters(), **kwargs)
    reference = ReferenceSls(ref_model.parameters(), **kwargs)
    for k in range(steps):
        ours.zero_grad()
        loss_ours = float(ours.step(make_closure(ours_model, k)))
        for p in ref_model.parameters():
            p.grad = None
        loss_ref = reference.step(make_closure(ref_model, k))
        assert loss_ours == pytest.approx(loss_ref, rel=1e-5, abs=1e-12)
        assert ours.diagnostics["step_size"] == pytest.approx(reference.step_size, rel=1e-5)
        assert ours.diagnostics["n_forwards"] == reference.n_forwards
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-10)
    return ours


def test_sls_defaults_follow_the_reference_on_a_network():
    data = batches(STEPS)
    # A large first eta, so that the searches backtrack.
    ours = run_both(mlp(), mlp(), lambda model, k: closure_for(model, *data[k]), STEPS, init_step_size=50.0)
    assert ours.diagnostics["n_backtracks"] > 0


def test_sls_failed_search_moves_one_millionth_of_the_gradient():
    # Every evaluation returns more than the one before: all 100 trials fail.
    def make_closure(model, k):
        calls = []

        def closure(backwards: bool = False):
            calls.append(1)
            value = (model[0].weight ** 2).sum() + float(len(calls))
            if backwards:
                value.backward()
            return value

        return closure

    def one_layer() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 2, bias=False)).double()

    torch.manual_seed(0)
    start = one_layer()
    ours_model, ref_model = copy.deepcopy(start), copy.deepcopy(start)
    ours = run_both(ours_model, ref_model, make_closure, 2)
    assert ours.diagnostics["n_failed_searches"] == 2
    assert ours.diagnostics["step_size"] == pytest.approx(2 ** (2 / 500) * 0.9**200, rel=1e-12)
    # theta moved by 1e-6 g twice (g = 2 theta), not by the shrunk eta (~7e-10).
    expected = start[0].weight.detach() * (1 - 2e-6) ** 2
    torch.testing.assert_close(ours_model[0].weight.detach(), expected, rtol=1e-12, atol=0)


def test_sls_takes_no_step_below_the_gradient_norm_guard_and_stores_the_grown_eta():
    theta = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = SLS([theta])

    def closure(backwards: bool = False):
        value = 1e-9 * theta.sum() + 5.0  # ||g|| = 1.4e-9 < 1e-8
        if backwards:
            value.backward()
        return value

    for _ in range(3):
        opt.zero_grad()
        opt.step(closure)
    assert theta.tolist() == [1.0, 2.0]
    assert opt.diagnostics["n_forwards"] == 3  # no trial
    assert opt.diagnostics["step_size"] == pytest.approx(2 ** (3 / 500), rel=1e-12)


def test_sls_armijo_step_size_is_not_capped_by_default():
    # A linear loss accepts every first trial, so eta only grows: past eta_max's old 10.
    theta = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    uncapped = SLS([theta], init_step_size=9.99)
    for _ in range(2):
        uncapped.zero_grad()
        uncapped.step(lambda backwards=False: _linear(theta, backwards))
    assert uncapped.diagnostics["step_size"] == pytest.approx(9.99 * 2 ** (2 / 500), rel=1e-12)
    assert uncapped.diagnostics["step_size"] > 10
    capped = SLS([nn.Parameter(torch.tensor([1.0], dtype=torch.float64))], init_step_size=9.99, eta_max=10.0)
    param = capped.param_groups[0]["params"][0]
    for _ in range(2):
        capped.zero_grad()
        capped.step(lambda backwards=False: _linear(param, backwards))
    assert capped.diagnostics["step_size"] == 10.0  # the cap stays available as an option


def _linear(param: torch.Tensor, backwards: bool) -> torch.Tensor:
    value = param.sum()
    if backwards:
        value.backward()
    return value
