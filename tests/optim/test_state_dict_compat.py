"""State dicts written by version 0.1.0 (tests/fixtures/state_dicts_0.1.0.pt, saved before the
search's state moved into the param groups) load, and the run continues as 0.1.0 continued it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optim import L4, SLS, SaLSA
from optim.presets import paper_optimizer

from conftest import model_closure, small_mlp

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state_dicts_0.1.0.pt"
# As tests/fixtures/make_state_dicts_0.1.0.py built them.
BUILDERS = {
    "salsa": lambda p: SaLSA(p),
    "salsa_sgd_two_groups": lambda p: SaLSA(
        [{"params": p[:2], "weight_decay": 0.01}, {"params": p[2:]}], direction="sgd"),
    "salsa_released": lambda p: SaLSA(p, as_released=True),
    "sls": lambda p: SLS(p),
    "adamsls": lambda p: paper_optimizer("adamsls", p),
    "olsgdsls": lambda p: paper_optimizer("olsgdsls", p),
    "l4_adam": lambda p: L4(p),
}
RELEASE = torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_state_dict_of_release_0_1_0_loads_and_continues_as_that_release_did(name):
    run = RELEASE["runs"][name]
    old = run["optimizer"]
    old_key = "l4" if name.startswith("l4") else "line_search"
    model = small_mlp(seed=7)
    model.load_state_dict(run["model"])
    params = list(model.parameters())
    opt = BUILDERS[name](params)
    opt.load_state_dict(old)

    # The layout torch.optim and torch.distributed.checkpoint expect: the search's state in
    # every group, per-parameter state keyed by parameters only (an entry for each).
    assert set(opt.state) == set(params)
    for group, old_group in zip(opt.param_groups, old["param_groups"]):
        assert {k: group[k] for k in old["state"][old_key]} == old["state"][old_key]
        settings = {k: v for k, v in old_group.items() if k != "params"}
        assert {k: group[k] for k in settings} == settings
    for index, p in enumerate(params):
        for key, value in old["state"].get(index, {}).items():
            assert torch.equal(opt.state[p][key], value)
    assert opt.state_dict()["state"].keys() == set(range(len(params)))

    batches = RELEASE["batches"]
    for i in range(12, 15):
        opt.zero_grad()
        opt.step(model_closure(model, *batches[i % len(batches)]))
    for key, value in run["model_after_3_more_steps"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert opt.diagnostics.n_steps == old["state"][old_key]["step"] + 3
