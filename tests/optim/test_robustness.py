"""What the optimizers refuse and what they survive: every hyperparameter is a finite number in
its range (at construction, in a preset, set in the groups), named when it is not; a state dict of
another class or model is refused at load; float16 and complex parameters are refused; a gradient
that stays zero leaves the step size capped and the parameters finite."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optim import L4, SLS, SaLSA
from optim.presets import paper_optimizer

pytestmark = pytest.mark.reliability

NAN, INF = math.nan, math.inf

# (class, keyword arguments, the argument the error must name)
BAD_NUMBERS = [
    (SaLSA, {"init_step_size": NAN}, "init_step_size"),
    (SaLSA, {"init_step_size": INF}, "init_step_size"),
    (SaLSA, {"growth": INF}, "growth"),
    (SaLSA, {"growth": NAN}, "growth"),
    (SaLSA, {"c": NAN}, "c"),
    (SaLSA, {"backtrack": NAN}, "backtrack"),
    (SaLSA, {"betas": (NAN, 0.999, 0.9)}, r"betas\[0\]"),
    (SaLSA, {"betas": (0.9, INF, 0.9)}, r"betas\[1\]"),
    (SaLSA, {"betas": (0.9, 0.999, NAN)}, "smoothing"),
    (SaLSA, {"betas": (0.9, 0.999, -0.1)}, "smoothing"),
    (SaLSA, {"direction": "sgd", "betas": (1.5, 0.999, 0.9)}, r"betas\[0\]"),  # unused, still checked
    (SaLSA, {"direction": "sgd", "eps": NAN}, "eps"),
    (SaLSA, {"as_released": True, "betas": (0.9, -1.0, 0.9)}, r"betas\[1\]"),
    (SaLSA, {"as_released": True, "eps": INF}, "eps"),
    (SaLSA, {"eps": NAN}, "eps"),
    (SaLSA, {"max_trials": True}, "max_trials"),
    (SaLSA, {"max_trials": 2.5}, "max_trials"),
    (SaLSA, {"max_trials": 100.0}, "max_trials"),
    (SaLSA, {"forced_searches": -5}, "forced_searches"),
    (SaLSA, {"forced_searches": NAN}, "forced_searches"),
    (SaLSA, {"as_released": True, "forced_searches": -1}, "forced_searches"),  # unused, still checked
    (SaLSA, {"weight_decay": NAN}, "weight_decay"),
    (SaLSA, {"weight_decay": INF}, "weight_decay"),
    (SaLSA, {"c": "0.5"}, "c"),
    (SLS, {"init_step_size": INF}, "init_step_size"),
    (SLS, {"gamma": INF}, "gamma"),
    (SLS, {"gamma": NAN}, "gamma"),
    (SLS, {"n_batches_per_epoch": NAN}, "n_batches_per_epoch"),
    (SLS, {"eta_max": NAN}, "eta_max"),
    (SLS, {"failed_step": NAN}, "failed_step"),
    (SLS, {"failed_step": -1e-6}, "failed_step"),
    (SLS, {"reset_option": True}, "reset_option"),
    (SLS, {"max_trials": False}, "max_trials"),
    (SLS, {"betas": (0.9, NAN)}, r"betas\[1\]"),
    (SLS, {"direction": "adam", "eps": -1.0}, "eps"),
    (L4, {"alpha": INF}, "alpha"),
    (L4, {"alpha": NAN}, "alpha"),
    (L4, {"gamma": NAN}, "gamma"),
    (L4, {"gamma0": INF}, "gamma0"),
    (L4, {"tau": NAN}, "tau"),
    (L4, {"epsilon": NAN}, "epsilon"),
    (L4, {"epsilon": -1e-12}, "epsilon"),
    (L4, {"betas": (NAN, 0.999)}, r"betas\[0\]"),
    (L4, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
    (L4, {"betas": (0.9,)}, "betas"),
    (L4, {"direction": "momentum", "betas": (0.9, INF)}, r"betas\[1\]"),  # beta2 unused by L4Mom
    (L4, {"eps": 0.0}, "eps"),
    (L4, {"eps": NAN}, "eps"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD_NUMBERS)
def test_a_bad_number_is_refused_at_construction_naming_it(cls, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} .*must be"):
        cls([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("preset", ["adamsls", "sgdsls", "oladamsls", "olsgdsls"])
@pytest.mark.parametrize(("key", "value"), [("init_step_size", INF), ("c", NAN), ("max_trials", True)])
def test_a_presets_override_is_checked_as_well(preset, key, value):
    with pytest.raises(ValueError, match=rf"^{key} .*must be"):
        paper_optimizer(preset, [nn.Parameter(torch.zeros(2))], **{key: value})


@pytest.mark.parametrize(("cls", "key", "value"), [
    (SaLSA, "growth", INF), (SaLSA, "max_trials", True), (SaLSA, "betas", (0.9, NAN, 0.9)),
    (SLS, "gamma", NAN), (L4, "alpha", INF), (L4, "eps", NAN), (SaLSA, "weight_decay", NAN),
])
def test_a_bad_value_set_in_the_groups_is_refused_at_the_next_step_before_any_change(cls, key, value):
    theta = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = cls([theta])

    def closure(backwards: bool = False) -> torch.Tensor:
        loss = (theta**2).sum()
        if backwards:
            loss.backward()
        return loss

    opt.zero_grad()
    opt.step(closure)
    before = theta.detach().clone()
    opt.param_groups[0][key] = value
    opt.zero_grad()
    with pytest.raises(ValueError, match=key):
        opt.step(closure)
    assert torch.equal(theta.detach(), before)


def _quadratic(theta: torch.Tensor):
    def closure(backwards: bool = False) -> torch.Tensor:
        loss = (theta**2).sum()
        if backwards:
            loss.backward()
        return loss

    return closure


def _stepped(opt: torch.optim.Optimizer, theta: torch.Tensor) -> torch.optim.Optimizer:
    opt.zero_grad()
    opt.step(_quadratic(theta))
    return opt


@pytest.mark.parametrize(("loader", "saver", "lacking"), [
    (SaLSA, L4, "'c'"), (L4, SaLSA, "'alpha'"), (SaLSA, SLS, "'as_released'"),
    (SLS, SaLSA, "'gamma'"), (SLS, L4, "'backtrack'"), (L4, SLS, "'gamma0'"),
])
def test_a_state_dict_of_another_class_is_refused_at_load_and_nothing_changes(loader, saver, lacking):
    theta = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = _stepped(loader([theta]), theta)
    before = opt.state_dict()
    other_theta = nn.Parameter(torch.tensor([3.0, 4.0]))
    other = _stepped(saver([other_theta]), other_theta).state_dict()
    with pytest.raises(ValueError, match=rf"{loader.__name__}\.load_state_dict: .*lacks \[.*{lacking}.*"
                                         rf"not a state dict of {loader.__name__}"):
        opt.load_state_dict(other)
    assert opt.state_dict()["param_groups"] == before["param_groups"]
    _stepped(opt, theta)  # still usable


def test_a_state_dict_of_another_model_is_refused_at_load_naming_the_shapes():
    theta = nn.Parameter(torch.ones(2))
    opt = _stepped(SaLSA([theta]), theta)
    wider = nn.Parameter(torch.ones(3))
    other = _stepped(SaLSA([wider]), wider).state_dict()
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(3,\) .* has \(2,\)"):
        opt.load_state_dict(other)
    assert opt.state[theta]["exp_avg"].shape == (2,)


def test_a_state_dict_with_a_value_the_class_rejects_is_refused_before_loading():
    theta = nn.Parameter(torch.ones(2))
    opt = SaLSA([theta])
    bad = SaLSA([nn.Parameter(torch.ones(2))]).state_dict()
    bad["param_groups"][0]["growth"] = INF
    with pytest.raises(ValueError, match="growth must be positive and finite, got inf"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["growth"] == 1.1


@pytest.mark.parametrize(("saved", "loading"), [("adam", "sgd"), ("sgd", "adam")])
def test_a_state_dict_of_another_direction_loads_with_its_own_settings(saved, loading):
    """The checkpoint's hyperparameters win (torch's rule): its direction comes with it, and
    the moments follow it."""
    theta = nn.Parameter(torch.tensor([1.0, -2.0]))
    other = _stepped(SaLSA([theta], direction=saved), theta).state_dict()
    opt = SaLSA([theta], direction=loading)
    opt.load_state_dict(other)
    assert opt.param_groups[0]["direction"] == saved
    assert ("exp_avg" in opt.state[theta]) == (saved == "adam")
    _stepped(opt, theta)
    assert torch.isfinite(theta).all()


MODES = {
    "salsa": lambda p: SaLSA(p),
    "salsa_sgd": lambda p: SaLSA(p, direction="sgd"),
    "salsa_released": lambda p: SaLSA(p, as_released=True),
    "salsa_stored": lambda p: SaLSA(p, skipped_growth="stored", speed_up=False),
    "salsa_unstored": lambda p: SaLSA(p, skipped_growth="unstored", use_mv=True),
    "adamsls": lambda p: paper_optimizer("adamsls", p),
    "sgdsls": lambda p: paper_optimizer("sgdsls", p),
    "oladamsls": lambda p: paper_optimizer("oladamsls", p),
    "olsgdsls": lambda p: paper_optimizer("olsgdsls", p),
    "sls": lambda p: SLS(p, gamma=1e6, n_batches_per_epoch=1),  # grows 1e6-fold per step
    "sls_adam": lambda p: SLS(p, direction="adam", guard="loss_and_term"),
    "sls_reset": lambda p: SLS(p, reset_option=2),
    "l4": lambda p: L4(p),
    "l4_momentum": lambda p: L4(p, direction="momentum"),
}


@pytest.mark.parametrize("offset", [0.0, 3.0], ids=["zero_loss", "constant_loss"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_thousand_steps_of_zero_gradient_raise_nothing_in_any_mode(mode, offset):
    start = torch.tensor([1.0, -2.0, 0.5])
    theta = nn.Parameter(start.clone())
    opt = MODES[mode]([theta])

    def closure(backwards: bool = False) -> torch.Tensor:
        loss = (theta * 0.0).sum() + offset
        if backwards:
            loss.backward()
        return loss

    for _ in range(1200):
        opt.zero_grad()
        opt.step(closure)
    step_size = opt.param_groups[0]["step_size"]
    assert math.isnan(step_size) or 0 < step_size <= 1e10  # L4 never steps: its eta stays NaN
    # A zero gradient leaves Adam's moments and the momentum zero: nothing may move theta.
    assert torch.equal(theta.detach(), start)


def test_the_released_step_size_stops_growing_at_1e10():
    """Released SaLSA grows eta by 1.1 on every guarded step: 1.1**1200 > 1e10."""
    theta = nn.Parameter(torch.ones(2))
    opt = SaLSA([theta], as_released=True)
    def zero(backwards: bool = False) -> torch.Tensor:
        loss = (theta * 0.0).sum()
        if backwards:
            loss.backward()
        return loss

    for _ in range(1200):
        opt.zero_grad()
        opt.step(zero)
    assert opt.param_groups[0]["step_size"] == 1e10


@pytest.mark.parametrize("cls", [SaLSA, SLS])
def test_an_initial_step_size_above_the_cap_is_refused(cls):
    with pytest.raises(ValueError, match=r"init_step_size must be at most 1e\+10, got 100000000000\.0"):
        cls([nn.Parameter(torch.zeros(2))], init_step_size=1e11)


@pytest.mark.parametrize("cls", [SaLSA, SLS, L4])
@pytest.mark.parametrize(("dtype", "message"), [
    (torch.float16, r"parameter 1 of param group 0 is torch\.float16, which is not supported: .*torch\.autocast"),
    (torch.complex64, r"parameter 1 of param group 0 is torch\.complex64, which is not supported"),
])
def test_float16_and_complex_parameters_are_refused_at_construction_naming_the_dtype(cls, dtype, message):
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=dtype))]
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: {message}"):
        cls(params)


def test_a_float16_group_added_later_is_refused_and_not_kept():
    opt = SaLSA([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"parameter 0 of param group 1 is torch\.float16"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, dtype=torch.float16))]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("mode", ["salsa", "salsa_released", "salsa_sgd", "sls_adam", "l4"])
def test_bfloat16_parameters_with_a_zero_gradient_entry_stay_finite_and_descend(mode):
    """bfloat16 has float32's exponent range: eps = 1e-8 and the moments are representable, so a
    coordinate with a zero gradient gets 0 / (0 + eps) = 0, not NaN."""
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16))
    opt = MODES[mode]([theta])

    def closure(backwards: bool = False) -> torch.Tensor:
        loss = (theta[:2].float() ** 2).sum()  # theta[2] has a zero gradient
        if backwards:
            loss.backward()
        return loss

    first = closure().item()
    for _ in range(30):
        opt.zero_grad()
        opt.step(closure)
    assert torch.isfinite(theta).all()
    assert theta[2].item() == 0.5
    assert closure().item() < first


def test_l4_caps_a_step_size_that_a_vanishing_inner_product_would_blow_up():
    """A huge loss gap over a tiny <v, g_hat> gives eta ~ 1e44, which no float32 move takes."""
    theta = nn.Parameter(torch.zeros(3))
    opt = L4([theta])

    def closure(backwards: bool = False) -> torch.Tensor:
        loss = (theta * 1e-10).sum() + 1e30
        if backwards:
            loss.backward()
        return loss

    opt.zero_grad()
    opt.step(closure)
    assert opt.param_groups[0]["step_size"] == 1e10
    assert torch.isfinite(theta).all() and (theta < 0).all()


# (class, keyword arguments, the error, what it must say): values out of range, unknown choices
OUT_OF_RANGE = [
    (SaLSA, {"c": 0.0}, ValueError, "c must be in"),
    (SaLSA, {"c": 1.0}, ValueError, "c must be in"),
    (SaLSA, {"c": -0.3}, ValueError, "c must be in"),
    (SaLSA, {"init_step_size": 0.0}, ValueError, "init_step_size"),
    (SaLSA, {"init_step_size": -1.0}, ValueError, "init_step_size"),
    (SaLSA, {"backtrack": 1.0}, ValueError, "backtrack"),
    (SaLSA, {"backtrack": 0.0}, ValueError, "backtrack"),
    (SaLSA, {"direction": "adamw"}, ValueError, "direction"),
    (SaLSA, {"betas": (0.9, 0.999)}, ValueError, "betas"),
    (SaLSA, {"betas": (1.0, 0.999, 0.9)}, ValueError, r"betas\[0\]"),
    (SaLSA, {"betas": (0.9, 0.999, 1.0)}, ValueError, "smoothing"),
    (SaLSA, {"eps": 0.0}, ValueError, "eps"),
    (SaLSA, {"max_trials": 0}, ValueError, "max_trials"),
    (SaLSA, {"growth": 0.0}, ValueError, "growth"),
    (SaLSA, {"grad_term": "cubed"}, ValueError, "grad_term"),
    (SaLSA, {"step_along": "sideways"}, ValueError, "step_along"),
    (SaLSA, {"weight_decay": -0.1}, ValueError, "weight_decay"),
    (SaLSA, {"direction": "sgd", "as_released": True}, ValueError, "as_released"),
    (SaLSA, {"freeze_bn_stats_in_trials": True}, TypeError, "freeze_bn_stats_in_trials"),
    (SLS, {"c": 1.5}, ValueError, "c must be in"),
    (SLS, {"direction": "lion"}, ValueError, "direction"),
    (SLS, {"reset_option": 3}, ValueError, "reset_option"),
    (SLS, {"gamma": 0.0}, ValueError, "gamma"),
    (SLS, {"n_batches_per_epoch": 0}, ValueError, "n_batches_per_epoch"),
    (SLS, {"eta_max": 0.0}, ValueError, "eta_max"),
    (SLS, {"backtrack": 1.2}, ValueError, "backtrack"),
    (L4, {"direction": "sgd"}, ValueError, "direction"),
    (L4, {"alpha": 0.0}, ValueError, "alpha"),
    (L4, {"gamma": 1.0}, ValueError, "gamma"),
    (L4, {"gamma0": 0.0}, ValueError, "gamma0"),
    (L4, {"tau": -1.0}, ValueError, "tau"),
]


@pytest.mark.parametrize(("cls", "kwargs", "error", "message"), OUT_OF_RANGE)
def test_invalid_hyperparameters_name_the_argument(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls([nn.Parameter(torch.zeros(2))], **kwargs)
