"""Hyperparameters live in the param groups, as torch.optim's do: read at every step, restored by
load_state_dict (the checkpoint's values win), refused where the groups of one search differ."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from optim import L4, SLS, SaLSA
from optim.presets import PAPER_PRESETS, paper_optimizer

from conftest import classification_batch, model_closure, small_mlp

# name -> (build with the saved hyperparameters, build with other ones): the restored optimizer
# must continue with the checkpoint's, whatever it was built with.
OTHER = dict(c=0.05, backtrack=0.5, max_trials=3, init_step_size=7.0)
BUILDERS = {
    "salsa": (lambda p: SaLSA(p), lambda p: SaLSA(
        p, c=0.05, betas=(0.5, 0.9, 0.5), growth=1.5, backtrack=0.5, max_trials=3, speed_up=False,
        init_step_size=7.0, direction="sgd")),
    "sls": (lambda p: SLS(p), lambda p: SLS(
        p, c=0.4, backtrack=0.5, gamma=5.0, n_batches_per_epoch=3, direction="adam", max_trials=4)),
    "l4": (lambda p: L4(p), lambda p: L4(
        p, alpha=0.5, gamma=0.5, gamma0=0.5, tau=10.0, betas=(0.5, 0.5), direction="momentum")),
    **{f"preset_{name}": ((lambda p, name=name: paper_optimizer(name, p)),
                          (lambda p, name=name: paper_optimizer(name, p, **OTHER)))
       for name in PAPER_PRESETS},
}
BATCHES = [classification_batch(seed) for seed in range(4)]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        opt.zero_grad()
        opt.step(model_closure(model, *BATCHES[i % len(BATCHES)]))


def parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_restored_optimizer_built_with_other_hyperparameters_continues_bit_identically(name):
    saved_kind, other_kind = BUILDERS[name]
    straight = small_mlp(seed=5)
    opt = saved_kind(straight.parameters())
    train(straight, opt, range(16))

    first = small_mlp(seed=5)
    opt_first = saved_kind(first.parameters())
    train(first, opt_first, range(8))
    checkpoint = copy.deepcopy({"model": first.state_dict(), "opt": opt_first.state_dict()})

    resumed = small_mlp(seed=6)
    resumed.load_state_dict(checkpoint["model"])
    opt_resumed = other_kind(resumed.parameters())
    settings = {k: v for k, v in opt_resumed.param_groups[0].items() if k in opt_resumed.defaults}
    opt_resumed.load_state_dict(checkpoint["opt"])
    restored = {k: opt_resumed.param_groups[0][k] for k in settings}
    assert restored == {k: checkpoint["opt"]["param_groups"][0][k] for k in settings} != settings
    train(resumed, opt_resumed, range(8, 16))

    assert all(torch.equal(p, q) for p, q in zip(parameters(straight), parameters(resumed)))
    assert opt_resumed.diagnostics == pytest.approx(opt.diagnostics, nan_ok=True)
    assert opt_resumed.diagnostics.n_steps == 16


@pytest.mark.parametrize(("cls", "key", "before", "after"), [
    (SaLSA, "c", 0.5, 0.05), (SLS, "c", 0.1, 0.9), (L4, "alpha", 0.15, 0.05),
    (SaLSA, "betas", (0.9, 0.999, 0.9), (0.8, 0.99, 0.0)),
])
def test_a_group_change_mid_run_equals_an_optimizer_rebuilt_with_it_from_the_same_state(
    cls, key, before, after
):
    """Two groups (weight decay on one): the change is made in both, as for torch.optim."""

    def build(model: nn.Module, value) -> torch.optim.Optimizer:
        weights = [p for p in model.parameters() if p.dim() > 1]
        biases = [p for p in model.parameters() if p.dim() == 1]
        return cls([{"params": weights, "weight_decay": 0.01}, {"params": biases}], **{key: value})

    changed = small_mlp(seed=2)
    opt = build(changed, before)
    train(changed, opt, range(6))
    saved = copy.deepcopy({"model": changed.state_dict(), "opt": opt.state_dict()})
    for group in opt.param_groups:
        group[key] = after
    train(changed, opt, range(6, 12))

    def continued(value) -> tuple[nn.Module, torch.optim.Optimizer]:
        """From the saved state, the optimizer built with ``value`` (the checkpoint's too)."""
        model = small_mlp(seed=2)
        model.load_state_dict(saved["model"])
        rebuilt = build(model, value)
        state = copy.deepcopy(saved["opt"])
        for group in state["param_groups"]:
            group[key] = value
        rebuilt.load_state_dict(state)
        train(model, rebuilt, range(6, 12))
        return model, rebuilt

    rebuilt, opt_rebuilt = continued(after)
    assert all(torch.equal(p, q) for p, q in zip(parameters(changed), parameters(rebuilt)))
    assert opt.diagnostics == pytest.approx(opt_rebuilt.diagnostics, nan_ok=True)
    # The premise: the change mattered.
    unchanged, _ = continued(before)
    assert not all(torch.equal(p, q) for p, q in zip(parameters(changed), parameters(unchanged)))


def test_a_search_setting_changed_in_one_group_only_is_refused_naming_it():
    model = small_mlp()
    opt = SaLSA([{"params": [model[0].weight], "weight_decay": 0.1}, {"params": [model[0].bias]}])
    train(model, opt, range(1))
    opt.param_groups[1]["growth"] = 1.2
    says = r"param_groups\[1\]\['growth'\] = 1.2 differs from param_groups\[0\]"
    with pytest.raises(ValueError, match=says):
        train(model, opt, range(1))


def test_a_bad_value_set_in_the_groups_is_refused_at_the_next_step():
    model = small_mlp()
    opt = SLS(model.parameters())
    opt.param_groups[0]["c"] = 1.5
    with pytest.raises(ValueError, match=r"c must be in \(0, 1\), got 1.5"):
        train(model, opt, range(1))


@pytest.mark.parametrize("cls", [SaLSA, SLS, L4])
def test_per_parameter_state_is_there_before_the_first_step(cls):
    """Where torch.distributed.checkpoint expects it: a fresh optimizer's state has an entry per
    parameter (Adam's moments at zero; empty along the gradient), and none under another key."""
    model = small_mlp()
    opt = cls(model.parameters())
    assert set(opt.state) == set(model.parameters())
    moments = cls is not SLS  # SLS searches along g by default
    for p in model.parameters():
        expected = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} if moments else {}
        assert opt.state[p].keys() == expected.keys()
        assert all(torch.equal(opt.state[p][k], v) for k, v in expected.items())
