"""The checks of every hyperparameter, in one place: a number must be a real number (a bool is
not one) inside its range, and NaN and inf must fail where they make no sense. A plain
``not value > 0`` lets ``inf`` through, and ``value <= 0`` lets ``nan`` through; the run would
then fail many steps later, far from the value that caused it."""

from __future__ import annotations

import math
import numbers
from typing import Any


def _real(name: str, value: Any) -> float:
    # bool is an int subclass: True would pass as 1 and hide a misplaced flag.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_unit(name: str, value: Any, *, closed_low: bool = False) -> None:
    """``value`` in (0, 1), or in [0, 1) with ``closed_low``; NaN and inf fail."""
    x = _real(name, value)
    inside = (0.0 <= x if closed_low else 0.0 < x) and x < 1.0
    if not inside:
        raise ValueError(f"{name} must be in {'[' if closed_low else '('}0, 1), got {value!r}")


def check_positive(name: str, value: Any, *, zero: bool = False, inf: bool = False) -> None:
    """``value`` > 0 (>= 0 with ``zero``), finite unless ``inf`` (a default of inf that means
    "no cap"); NaN always fails."""
    x = _real(name, value)
    if not (x >= 0.0 if zero else x > 0.0) or (math.isinf(x) and not inf):
        kind = "non-negative" if zero else "positive"
        raise ValueError(f"{name} must be {kind}{'' if inf else ' and finite'}, got {value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    """An ``int`` (not a bool, not a float with an integral value) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")


def check_moments(betas: Any, eps: Any) -> None:
    """Adam's ``(beta1, beta2)`` in [0, 1) and ``eps`` positive and finite; checked also where the
    direction does not use them, so that a value is never accepted only to fail when it is."""
    betas = tuple(betas)
    if len(betas) != 2:
        raise ValueError(f"betas must be (beta1, beta2), got {betas}")
    for i, beta in enumerate(betas):
        check_unit(f"betas[{i}]", beta, closed_low=True)
    check_positive("eps", eps)


def check_fused(value: Any) -> None:
    """``fused`` as in ``torch.optim``: ``None`` (the fastest path available), ``True`` (the fused
    kernels or an error) or ``False`` (foreach ops)."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"fused must be None, True or False, got {type(value).__name__} {value!r}")
