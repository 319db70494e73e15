"""The foreach implementation against a plain per-tensor loop, and the memory it keeps (the
fused path is held to the same loops here, and to the foreach path in ``test_fused.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optim import L4, SLS, SaLSA, directions

from conftest import classification_batch, model_closure, small_mlp


def loop_salsa_step(params, grads, moments, step, eta_prev, avg_g, avg_d, loss0, loss_at):
    """One SaLSA step (Adam direction, smoothing 0.9, c 0.5, growth 1.1, backtrack 0.8) written
    as a per-tensor loop from the equations; returns the new parameters and search state."""
    beta1, beta2, beta, c, eps = 0.9, 0.999, 0.9, 0.5, 1e-8
    directions, g_term = [], 0.0
    for g, (m, v) in zip(grads, moments):
        m.mul_(beta1).add_((1 - beta1) * g)
        v.mul_(beta2).add_((1 - beta2) * g * g)
        d = g / ((v / (1 - beta2**step)).sqrt() + eps)
        directions.append(d)
        g_term += float((g * d).sum())
    avg_g = beta * avg_g + (1 - beta) * g_term
    eta = 1.1 * eta_prev
    while True:
        trial = [p - eta * d for p, d in zip(params, directions)]
        decrease = beta * avg_d + (1 - beta) * (loss0 - loss_at(trial))
        if decrease >= c * eta * avg_g:
            return trial, eta, avg_g, decrease
        eta *= 0.8


PATHS = [  # (fused, CPU_GROUP_BYTES): the foreach path's cache groups matter to it alone
    pytest.param(False, directions.CPU_GROUP_BYTES, id="foreach_one_group"),
    pytest.param(False, 1, id="foreach_group_per_tensor"),
    pytest.param(True, directions.CPU_GROUP_BYTES, id="fused"),
]


@pytest.mark.parametrize(("fused", "group_bytes"), PATHS)
def test_salsa_matches_a_per_tensor_loop(fused, group_bytes, monkeypatch):
    monkeypatch.setattr(directions, "CPU_GROUP_BYTES", group_bytes)
    model = small_mlp(dtype=torch.float64)
    x, y = classification_batch(dtype=torch.float64)
    opt = SaLSA(model.parameters(), speed_up=False, fused=fused)
    closure = model_closure(model, x, y)
    names = [n for n, _ in model.named_parameters()]

    def loss_at(tensors):
        return float(
            nn.functional.cross_entropy(
                torch.func.functional_call(model, dict(zip(names, tensors)), (x,)), y
            )
        )

    params = [p.detach().clone() for p in model.parameters()]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    eta, avg_g, avg_d = 1.0, 0.0, 0.0
    for step in range(1, 6):
        opt.zero_grad()
        loss0 = float(opt.step(closure))
        grads = [p.grad for p in model.parameters()]
        params, eta, avg_g, avg_d = loop_salsa_step(
            params, grads, moments, step, eta, avg_g, avg_d, loss0, loss_at
        )
        assert opt.diagnostics["step_size"] == eta
        for p, expected in zip(model.parameters(), params):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)
        for p, (m, v) in zip(model.parameters(), moments):
            torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=1e-12, atol=1e-16)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v, rtol=1e-12, atol=1e-16)
        params = [p.detach().clone() for p in model.parameters()]  # follow the optimizer's rounding


def test_cache_groups_are_consecutive_cover_every_tensor_and_fit_the_budget(monkeypatch):
    kib = [torch.empty(n * 256) for n in (1, 2, 1, 8, 3, 3, 1)]  # float32: n KiB each
    monkeypatch.setattr(directions, "CPU_GROUP_BYTES", 4 * 1024)
    groups = directions.cache_groups(kib)
    # Greedy from the left: [1,2,1] KiB, then 8 KiB alone (over budget), [3], [3,1].
    assert groups == [slice(0, 3), slice(3, 4), slice(4, 5), slice(5, 7)]
    assert directions.cache_groups(kib[:2]) == [slice(0, 2)]
    assert directions.cache_groups([torch.empty(4, device="meta")] * 3) == [slice(0, 3)]  # not CPU: one
    assert directions.cache_groups([]) == [slice(0, 0)]


@pytest.mark.parametrize(
    "make",
    [
        lambda params: SaLSA(params, forced_searches=3, fused=False),
        lambda params: SaLSA(params, use_mv=True, fused=False),
        lambda params: SLS(params, direction="adam", fused=False),
        lambda params: L4(params, fused=False),
    ],
    ids=["salsa", "salsa_use_mv", "sls_adam", "l4"],
)
def test_grouping_the_foreach_chains_changes_no_bit(make, monkeypatch):
    """The groups only reorder which tensor an op visits first: every element sees the same
    float operations, so the trajectory is bit-identical with one group or one per tensor."""

    def train() -> tuple[list[torch.Tensor], int]:
        model = small_mlp(seed=3)
        opt = make(model.parameters())
        for i in range(8):
            opt.zero_grad()
            opt.step(model_closure(model, *classification_batch(seed=i)))
        adam = opt.direction
        return [p.detach().clone() for p in model.parameters()], len(adam._groups)

    together, n_together = train()
    monkeypatch.setattr(directions, "CPU_GROUP_BYTES", 1)
    apart, n_apart = train()
    assert (n_together, n_apart) == (1, 4)
    for a, b in zip(together, apart):
        assert torch.equal(a, b)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def state_tensors(opt) -> list:
    out = []
    for value in opt.state.values():
        if isinstance(value, dict):
            out += [v for v in value.values() if isinstance(v, torch.Tensor)]
    return out


def test_memory_of_the_foreach_path_is_at_most_adams_state_plus_one_buffer():
    x, y = classification_batch()
    param_bytes = tensor_bytes(small_mlp().parameters())

    adam_model = small_mlp()
    adam = torch.optim.Adam(adam_model.parameters())
    adam_model(x).sum().backward()
    adam.step()
    adam_bytes = tensor_bytes(state_tensors(adam))

    for make in (lambda p: SaLSA(p, fused=False), lambda p: SaLSA(p, use_mv=True, fused=False),
                 lambda p: SLS(p, direction="adam", fused=False),
                 lambda p: SaLSA(p, step_along="momentum", fused=False)):
        model = small_mlp()
        opt = make(model.parameters())
        for _ in range(12):
            opt.zero_grad()
            opt.step(model_closure(model, x, y))
        kept = tensor_bytes(state_tensors(opt) + opt.direction._buffer)
        assert kept <= adam_bytes + param_bytes
        assert kept >= 2 * param_bytes  # the moments are really there

    model = small_mlp()
    sgd_sls = SLS(model.parameters())
    sgd_sls.zero_grad()
    sgd_sls.step(model_closure(model, x, y))
    assert tensor_bytes(state_tensors(sgd_sls)) == 0  # plain SLS keeps no tensors at all


@pytest.mark.parametrize(("fused", "group_bytes"), PATHS)
def test_a_step_the_speed_up_rule_skips_moves_by_eta_prev_along_adams_update(fused, group_bytes, monkeypatch):
    """theta <- theta0 - eta_prev * m_hat / (sqrt(v_hat) + eps), from the moments after the step."""
    monkeypatch.setattr(directions, "CPU_GROUP_BYTES", group_bytes)
    model = small_mlp(dtype=torch.float64)
    opt = SaLSA(model.parameters(), forced_searches=2, fused=fused)
    for i in range(4):
        if i == 3:  # accepted step sizes settled: fast EMA = slow EMA, search every 10 steps
            opt.param_groups[0]["avg_step_size_fast"] = opt.param_groups[0]["avg_step_size_slow"]
        before = [p.detach().clone() for p in model.parameters()]
        searches, eta_prev = opt.diagnostics["n_searches"], opt.diagnostics["step_size"]
        opt.zero_grad()
        opt.step(model_closure(model, *classification_batch(seed=i, dtype=torch.float64)))
    step = opt.diagnostics["n_steps"]
    assert step == 4 and opt.diagnostics["n_searches"] == searches == 3
    assert opt.diagnostics["step_size"] == eta_prev
    for p, p0 in zip(model.parameters(), before):
        m_hat = opt.state[p]["exp_avg"] / (1 - 0.9**step)
        v_hat = opt.state[p]["exp_avg_sq"] / (1 - 0.999**step)
        expected = p0 - eta_prev * m_hat / (v_hat.sqrt() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)
