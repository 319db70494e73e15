"""The paper's optimizer columns as configurations of :class:`SaLSA` and :class:`SLS`.

Each preset is one of the authors' own runs, built in their ``test/embedder.py`` as their
``AdamSLS`` class (see ``docs/protocol.md``): ``adamsls`` and ``sgdsls`` are the smoothed searches
behind the "ADAM SaLSa" and "SGD SaLSa" columns, ``oladamsls`` and ``olsgdsls`` the unsmoothed ones
behind "ADAM SLS" and "SGD SLS". Their oddities (the step along Adam's momentum, the ||g||
gradient term, growth 2^(1/500), 200 trials, no cap) are reproduced on purpose; the classes' own
defaults are the clean behaviour.

The speed-up rule is as in the NLP runs: only ``adamsls`` was built with ``speed_up`` (always read
as on); the other three were built without it, so ``AdamSLS``'s default ``False`` applied and they
searched on every step. The image runs turned it off for all four (``speed_up=False``).

The harness lists every value of each column in its config (``conf/optimizer/salsa.yaml``,
``salsa_sgd.yaml``, ``sls_adam.yaml``, ``sls.yaml``), built through :func:`paper_optimizer` with
the preset's name; ``tests/harness/test_paper_presets.py`` checks that those values are this module's.
"""

from __future__ import annotations

import math
from typing import Any

from .line_search import LineSearchOptimizer
from .salsa import SaLSA
from .sls import SLS

_AS_RUN_GROWTH = 2.0 ** (1.0 / 500)  # gamma 2 spread over 500 batches
# AdamSLS's edge rules, not the SLS reference's: no search while L0 or the gradient term is ~0
# (the step then goes along the momentum with the grown eta), and a failed search steps with the
# backtracked eta.
_AS_RUN_EDGES: dict[str, Any] = dict(guard="loss_and_term", failed_step=None)

PAPER_PRESETS: dict[str, tuple[type[LineSearchOptimizer], dict[str, Any]]] = {
    # The released SaLSA class, at its defaults.
    "salsa": (SaLSA, {}),
    # "ADAM SaLSa": smoothed test along P g, step along P m_hat.
    "adamsls": (
        SaLSA,
        dict(
            direction="adam", c=0.3, betas=(0.9, 0.999, 0.99), init_step_size=0.1,
            growth=_AS_RUN_GROWTH, backtrack=0.9, max_trials=200, step_along="momentum",
            accept_ties=False, skipped_growth="stored", speed_up=True,
        ),
    ),
    # "SGD SaLSa": the same loop with d = g and gradient term ||g||.
    "sgdsls": (
        SaLSA,
        dict(
            direction="sgd", c=0.3, betas=(0.9, 0.999, 0.99), init_step_size=0.1,
            growth=_AS_RUN_GROWTH, backtrack=0.9, max_trials=200, grad_term="norm",
            accept_ties=False, skipped_growth="stored", speed_up=False,
        ),
    ),
    # "ADAM SLS": unsmoothed, Adam-preconditioned, step along P m_hat.
    "oladamsls": (
        SLS,
        dict(
            direction="adam", c=0.1, init_step_size=0.1, backtrack=0.9, reset_option=1,
            gamma=2.0, n_batches_per_epoch=500, eta_max=math.inf, max_trials=200,
            step_along="momentum", speed_up=False, **_AS_RUN_EDGES,
        ),
    ),
    # "SGD SLS": unsmoothed, d = g, gradient term ||g||.
    "olsgdsls": (
        SLS,
        dict(
            direction="sgd", c=0.1, init_step_size=0.1, backtrack=0.9, reset_option=1,
            gamma=2.0, n_batches_per_epoch=500, eta_max=math.inf, max_trials=200,
            grad_term="norm", speed_up=False, **_AS_RUN_EDGES,
        ),
    ),
}


def paper_optimizer(preset: str, params: Any, **overrides: Any) -> LineSearchOptimizer:
    """Build ``preset`` (a key of :data:`PAPER_PRESETS`), with keyword overrides."""
    if preset not in PAPER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PAPER_PRESETS)}")
    cls, kwargs = PAPER_PRESETS[preset]
    return cls(params, **{**kwargs, **overrides})
