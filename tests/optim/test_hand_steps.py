"""Steps worked out by hand from the published update rules (docs/algorithms.md).

Every expectation here is computed in plain numpy float64 from the equations, on quadratics
f(theta) = h/2 ||theta||^2 whose gradient is h * theta, so the accepted step sizes follow from
the sufficient-decrease condition in closed form or by a one-line backtracking count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optim import L4, SLS, SaLSA
from optim.presets import paper_optimizer

from conftest import quadratic_closure

GROWTH_AS_RUN = 2.0 ** (1.0 / 500)


def first_accepted(eta: float, backtrack: float, ok) -> tuple[float, int]:
    """Backtrack eta until ok(eta); returns (eta, number of backtracks)."""
    k = 0
    while not ok(eta):
        eta *= backtrack
        k += 1
        assert k < 1000
    return eta, k


def loss(theta: np.ndarray, h: float) -> float:
    return 0.5 * h * float(theta @ theta)


def run(opt, theta: torch.Tensor, h: float, steps: int) -> list[np.ndarray]:
    points = []
    for _ in range(steps):
        opt.zero_grad()
        opt.step(quadratic_closure(theta, h))
        points.append(theta.detach().numpy().copy())
    return points


def test_sls_sgd_backtracks_to_the_closed_form_bound():
    # Armijo on h/2||x||^2 along -g: accept iff eta <= 2(1 - c)/h.
    h, c, backtrack, eta0 = 1.0, 0.1, 0.9, 5.0
    theta0 = np.array([1.0, -2.0, 0.5])
    theta = torch.tensor(theta0, requires_grad=True)
    opt = SLS([theta], c=c, init_step_size=eta0, backtrack=backtrack, reset_option=0)
    (point,) = run(opt, theta, h, 1)
    k = math.ceil(math.log(2 * (1 - c) / h / eta0) / math.log(backtrack))
    assert k == 10
    eta = eta0 * backtrack**k
    assert opt.diagnostics["step_size"] == pytest.approx(eta, rel=1e-12)
    assert opt.diagnostics["n_backtracks"] == k
    assert opt.diagnostics["n_forwards"] == 1 + (k + 1)
    np.testing.assert_allclose(point, (1 - h * eta) * theta0, rtol=1e-12)
    # Next step starts from eta (reset_option 0), which satisfies the bound: no backtrack.
    (point2,) = run(opt, theta, h, 1)
    np.testing.assert_allclose(point2, (1 - h * eta) ** 2 * theta0, rtol=1e-12)
    assert opt.diagnostics["n_backtracks"] == k


@pytest.mark.parametrize("reset_option", [0, 1, 2])
def test_sls_initial_step_rules(reset_option):
    # With a bound far above eta, every step accepts its initial step size.
    h = 1e-3
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = SLS([theta], init_step_size=0.5, reset_option=reset_option, gamma=2.0, n_batches_per_epoch=4)
    sizes = []
    for _ in range(3):
        run(opt, theta, h, 1)
        sizes.append(opt.diagnostics["step_size"])
    grow = {0: 1.0, 1: 2.0 ** (1 / 4), 2: None}[reset_option]
    expected = [0.5] * 3 if grow is None else [0.5 * grow ** (i + 1) for i in range(3)]
    assert sizes == pytest.approx(expected, rel=1e-12)


def test_sls_eta_max_caps_the_growth():
    theta = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = SLS([theta], init_step_size=0.9, gamma=4.0, n_batches_per_epoch=1, eta_max=1.0)
    run(opt, theta, 1e-4, 1)
    assert opt.diagnostics["step_size"] == 1.0


def adam_vectors(grads: list[np.ndarray], betas=(0.9, 0.999), eps=1e-8):
    """P g_t and P m_hat_t after the gradients ``grads`` (Adam's recurrences, bias-corrected)."""
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    for g in grads:
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
    t = len(grads)
    precond = 1.0 / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return precond * grads[-1], precond * m / (1 - betas[0] ** t)


def test_sls_adam_first_step_closed_form():
    # d = P g = g / (|g| + eps); accept iff eta <= 2(1 - c) <g, d> / ||d||^2 (for h = 1).
    c, backtrack, eta0 = 0.1, 0.9, 4.0
    theta0 = np.array([0.3, -0.7, 1.2])
    theta = torch.tensor(theta0, requires_grad=True)
    opt = SLS([theta], direction="adam", c=c, init_step_size=eta0, backtrack=backtrack, reset_option=0)
    (point,) = run(opt, theta, 1.0, 1)
    d, _ = adam_vectors([theta0])
    bound = 2 * (1 - c) * (theta0 @ d) / (d @ d)
    k = math.ceil(math.log(bound / eta0) / math.log(backtrack))
    assert k == 11
    eta = eta0 * backtrack**k
    assert opt.diagnostics["n_backtracks"] == k
    np.testing.assert_allclose(point, theta0 - eta * d, rtol=1e-12)


# -- SaLSA and the paper's as-run variants: two steps each, by hand ------------------------------

VARIANTS = {
    # name: (builder, direction, c, beta (smoothing), eta0, growth, backtrack, grad term, step along)
    "salsa": (lambda p: SaLSA(p), "adam", 0.5, 0.9, 1.0, 1.1, 0.8, "squared", "search"),
    "salsa_sgd": (lambda p: SaLSA(p, direction="sgd"), "sgd", 0.5, 0.9, 1.0, 1.1, 0.8, "squared", "search"),
    "adamsls": (lambda p: paper_optimizer("adamsls", p), "adam", 0.3, 0.99, 0.1, GROWTH_AS_RUN, 0.9, "squared", "momentum"),
    "sgdsls": (lambda p: paper_optimizer("sgdsls", p), "sgd", 0.3, 0.99, 0.1, GROWTH_AS_RUN, 0.9, "norm", "search"),
    "oladamsls": (lambda p: paper_optimizer("oladamsls", p), "adam", 0.1, 0.0, 0.1, GROWTH_AS_RUN, 0.9, "squared", "momentum"),
    "olsgdsls": (lambda p: paper_optimizer("olsgdsls", p), "sgd", 0.1, 0.0, 0.1, GROWTH_AS_RUN, 0.9, "norm", "search"),
}


def expected_two_steps(variant: str, theta0: np.ndarray, h: float):
    """theta after steps 1 and 2, and the accepted eta and backtracks of each, by hand."""
    _, direction, c, beta, eta, growth, backtrack, term, along = VARIANTS[variant]
    theta, grads = theta0, []
    avg_g = avg_d = 0.0
    out = []
    for _ in range(2):
        g = h * theta
        grads.append(g)
        if direction == "adam":
            d, d_momentum = adam_vectors(grads)
        else:
            d = d_momentum = g
        g_term = g @ d if term == "squared" else math.sqrt(g @ g)
        avg_g = beta * avg_g + (1 - beta) * g_term
        l0 = loss(theta, h)

        def smoothed_decrease(e, theta=theta, d=d, l0=l0):
            return beta * avg_d + (1 - beta) * (l0 - loss(theta - e * d, h))

        eta, k = first_accepted(eta * growth, backtrack, lambda e: smoothed_decrease(e) >= c * e * avg_g)
        # The test must not sit on a knife edge: the rejected trial before fails clearly.
        assert abs(smoothed_decrease(eta) - c * eta * avg_g) > 1e-9 * abs(avg_g)
        avg_d = smoothed_decrease(eta)
        theta = theta - eta * (d if along == "search" else d_momentum)
        out.append((theta, eta, k))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_two_steps_by_hand(variant):
    h = 40.0 if VARIANTS[variant][1] == "sgd" else 1.0
    theta0 = np.array([0.05, -0.02, 0.03]) if VARIANTS[variant][1] == "adam" else np.array([0.5, -0.2, 0.3])
    theta = torch.tensor(theta0, requires_grad=True)
    opt = VARIANTS[variant][0]([theta])
    expected = expected_two_steps(variant, theta0, h)
    backtracks = 0
    for exp_theta, exp_eta, exp_k in expected:
        (point,) = run(opt, theta, h, 1)
        backtracks += exp_k
        np.testing.assert_allclose(point, exp_theta, rtol=1e-10, atol=1e-14)
        assert opt.diagnostics["step_size"] == pytest.approx(exp_eta, rel=1e-12)
        assert opt.diagnostics["n_backtracks"] == backtracks
    assert backtracks > 0, "the example should exercise backtracking"


def test_step_along_momentum_differs_from_search_point():
    """adamsls's second step lands on theta1 - eta P m_hat, not on the accepted trial point."""
    theta0 = np.array([0.05, -0.02, 0.03])
    (t1, _, _), (t2, eta2, _) = expected_two_steps("adamsls", theta0, 1.0)
    d_search, d_momentum = adam_vectors([theta0, t1])
    assert not np.allclose(t1 - eta2 * d_search, t2, rtol=1e-6)
    np.testing.assert_allclose(t1 - eta2 * d_momentum, t2, rtol=1e-12)


def test_sls_armijo_holds_on_every_accepted_step():
    torch.manual_seed(0)
    x = 4 * torch.randn(200, 5, dtype=torch.float64)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64) > 0).double()
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)

    def f() -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)

    def closure(backwards: bool = False) -> torch.Tensor:
        value = f()
        if backwards:
            value.backward()
        return value

    c = 0.1
    opt = SLS([w], c=c, init_step_size=50.0)
    checked = 0
    for _ in range(40):
        (g,) = torch.autograd.grad(f(), w)
        with torch.no_grad():
            l0 = f().item()
        failed = opt.diagnostics["n_failed_searches"]
        opt.zero_grad()
        opt.step(closure)
        if opt.diagnostics["n_failed_searches"] == failed:
            with torch.no_grad():
                l1 = f().item()
            eta = opt.diagnostics["step_size"]
            assert l0 - l1 >= c * eta * (g @ g).item() - 1e-15
            checked += 1
    assert checked == 40
    assert opt.diagnostics["n_backtracks"] > 0


def test_salsa_guard_steps_keep_the_step_size():
    """Below the loss guard (L0 < 1e-8) SaLSA steps along P m_hat without a search. On
    L = 1e-9 * sum(theta) every bias-corrected moment gives m_hat = g, v_hat = g^2, so each step
    moves by eta * g / (|g| + eps) = eta / 11 per coordinate; by default eta stays 1 (it grew by
    1.1 per guarded step before, and overflowed float32 after ~930 such steps)."""
    theta = torch.tensor([0.5, -0.3], requires_grad=True)

    def closure(backwards: bool = False) -> torch.Tensor:
        value = 1e-9 * theta.sum()
        if backwards:
            value.backward()
        return value

    opt = SaLSA([theta])
    for k in range(1, 1001):
        opt.zero_grad()
        opt.step(closure)
        if k in (1, 2, 1000):
            np.testing.assert_allclose(theta.detach().numpy(), np.array([0.5, -0.3]) - k / 11, rtol=1e-4)
    assert opt.diagnostics["step_size"] == 1.0
    assert opt.diagnostics["n_searches"] == 0 and opt.diagnostics["n_skipped"] == 0


# -- L4 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["momentum", "adam"])
def test_l4_two_steps_by_hand(direction):
    alpha, gamma, gamma0, tau = 0.15, 0.9, 0.75, 1000.0
    theta0 = np.array([0.4, -1.0, 2.0])
    theta = torch.tensor(theta0, requires_grad=True)
    opt = L4([theta], direction=direction)
    point = theta0
    grads: list[np.ndarray] = []
    min_loss = None
    for _ in range(2):
        g = point.copy()  # h = 1
        grads.append(g)
        m = sum(0.9 ** (len(grads) - 1 - i) * 0.1 * gi for i, gi in enumerate(grads))
        g_hat = m / (1 - 0.9 ** len(grads))
        if direction == "adam":
            v_sq = sum(0.999 ** (len(grads) - 1 - i) * 0.001 * gi * gi for i, gi in enumerate(grads))
            v = g_hat / (np.sqrt(v_sq / (1 - 0.999 ** len(grads))) + 1e-4)
        else:
            v = g_hat
        value = loss(point, 1.0)
        min_loss = gamma0 * value if min_loss is None else min(min_loss, value)
        eta = alpha * (value - gamma * min_loss) / (v @ g_hat + 1e-12)
        point = point - eta * v
        min_loss *= 1 + 1 / tau
        (got,) = run(opt, theta, 1.0, 1)
        np.testing.assert_allclose(got, point, rtol=1e-10)
        assert opt.diagnostics["step_size"] == pytest.approx(eta, rel=1e-10)
        assert opt.diagnostics["min_loss"] == pytest.approx(min_loss, rel=1e-12)


def test_l4_skips_a_step_whose_direction_does_not_descend():
    # Momentum from a large first gradient points against the second gradient: <v, g_hat> ...
    # is still positive for L4Mom since v = g_hat; force <v, g_hat> <= 0 with a zero gradient.
    theta = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = L4([theta], direction="momentum")
    run(opt, theta, 1.0, 1)
    assert opt.diagnostics["n_skipped"] == 1
    assert torch.equal(theta.detach(), torch.zeros(2, dtype=torch.float64))
