"""state_dict resume, param groups, decoupled weight decay and the lr mirror."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from optim import L4, SLS, SaLSA
from optim.presets import PAPER_PRESETS, paper_optimizer

from conftest import classification_batch, model_closure, small_mlp

BUILDERS = {
    "salsa": lambda p: SaLSA(p),
    "salsa_sgd": lambda p: SaLSA(p, direction="sgd"),
    "salsa_use_mv": lambda p: SaLSA(p, use_mv=True),
    "salsa_released": lambda p: SaLSA(p, as_released=True),
    "sls": lambda p: SLS(p),
    "sls_adam": lambda p: SLS(p, direction="adam"),
    "l4_adam": lambda p: L4(p),
    "l4_mom": lambda p: L4(p, direction="momentum"),
    **{f"preset_{name}": (lambda p, name=name: paper_optimizer(name, p)) for name in PAPER_PRESETS},
}


def train(model, opt, steps: int, batches) -> None:
    for i in range(steps):
        x, y = batches[i % len(batches)]
        opt.zero_grad()
        opt.step(model_closure(model, x, y))


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_save_load_resume_is_bit_identical(name):
    """20 steps + save + load into a fresh optimizer + 20 steps == 40 uninterrupted steps."""
    batches = [classification_batch(seed) for seed in range(5)]
    torch.manual_seed(123)
    straight = small_mlp(dropout=0.2)
    opt = BUILDERS[name](straight.parameters())
    train(straight, opt, 40, batches)

    torch.manual_seed(123)
    first = small_mlp(dropout=0.2)
    opt_first = BUILDERS[name](first.parameters())
    train(first, opt_first, 20, batches[:])
    checkpoint = roundtrip(
        {"model": first.state_dict(), "opt": opt_first.state_dict(), "rng": torch.get_rng_state()}
    )
    del first, opt_first

    resumed = small_mlp(seed=99, dropout=0.2)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    opt_resumed = BUILDERS[name](resumed.parameters())
    opt_resumed.load_state_dict(checkpoint["opt"])
    torch.set_rng_state(checkpoint["rng"])
    rotated = batches[20 % 5 :] + batches[: 20 % 5]
    train(resumed, opt_resumed, 20, rotated)

    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert opt_resumed.diagnostics == pytest.approx(opt.diagnostics, nan_ok=True)
    assert opt_resumed.diagnostics["n_steps"] == 40


def test_restores_search_state_not_just_moments():
    model = small_mlp()
    x, y = classification_batch()
    opt = SaLSA(model.parameters())
    train(model, opt, 5, [(x, y)])
    saved = opt.state_dict()
    assert all(isinstance(key, int) for key in saved["state"])  # parameters only, as torch.optim
    fresh = SaLSA(small_mlp().parameters())
    fresh.load_state_dict(saved)
    assert fresh.diagnostics.step_size == opt.diagnostics.step_size != 1.0
    for key in ("avg_decrease", "avg_grad_term", "avg_step_size_fast", "avg_step_size_slow", "steps_since_search"):
        assert fresh.param_groups[0][key] == opt.param_groups[0][key] == saved["param_groups"][0][key]


@pytest.mark.parametrize("cls", [SaLSA, SLS, L4])
def test_group_lr_mirrors_the_step_size(cls):
    model = small_mlp()
    x, y = classification_batch()
    opt = cls(model.parameters())
    train(model, opt, 3, [(x, y)])
    assert [g["lr"] for g in opt.param_groups] == [opt.diagnostics["step_size"]]
    # An LR monitor that reads group["lr"] works: e.g. the LR of torch's schedulers' API.
    assert isinstance(opt.param_groups[0]["lr"], float)


def test_per_group_decoupled_weight_decay():
    """A parameter with zero gradient only decays: theta_t = theta_{t-1} (1 - wd eta_{t-1})."""
    used = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    idle = nn.Parameter(torch.tensor([2.0, 3.0], dtype=torch.float64))
    plain = nn.Parameter(torch.tensor([4.0], dtype=torch.float64))
    wd = 0.1
    opt = SLS(
        [{"params": [used, plain]}, {"params": [idle], "weight_decay": wd}],
        init_step_size=0.5,
    )

    def closure(backwards: bool = False) -> torch.Tensor:
        value = ((used - 3.0) ** 2).sum() + 0.0 * (idle.sum() + plain.sum())
        if backwards:
            value.backward()
        return value

    expected = idle.detach().clone()
    eta_prev = 0.5
    for _ in range(4):
        opt.zero_grad()
        opt.step(closure)
        expected *= 1 - wd * eta_prev
        eta_prev = opt.diagnostics["step_size"]
        torch.testing.assert_close(idle.detach(), expected, rtol=1e-14, atol=0)
    assert torch.equal(plain.detach(), torch.tensor([4.0], dtype=torch.float64))  # wd 0: untouched
    assert (used.detach() - 3.0).abs().max() < 2.0  # trained


def test_search_settings_cannot_differ_per_group():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['c'\] = 0.2 differs from param_groups\[0\]\['c'\] = 0.5"):
        SaLSA([{"params": [a]}, {"params": [b], "c": 0.2}])
    with pytest.raises(ValueError, match="weight_decay"):
        SaLSA([{"params": [a], "weight_decay": -1.0}])
