"""Invalid hyperparameters fail at construction (or the first step), naming the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optim import L4, SLS, SaLSA

CASES = [
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


@pytest.mark.parametrize(("cls", "kwargs", "error", "message"), CASES)
def test_invalid_hyperparameters_name_the_argument(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("cls", [SaLSA, SLS, L4])
def test_closure_with_an_unexpected_signature_is_a_type_error_naming_both_conventions(cls):
    theta = nn.Parameter(torch.ones(2))
    opt = cls([theta])
    with pytest.raises(TypeError, match=r"\['batch'\].*closure\(backwards: bool = False\).*closure\(\)"):
        opt.step(lambda batch: (theta**2).sum())
    assert torch.equal(theta.detach(), torch.ones(2))
