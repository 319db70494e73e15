"""Learning-rate-free optimizers on one Armijo line-search core: SaLSA, SLS and L4.

    from optim import SaLSA
    opt = SaLSA(model.parameters())

    def closure(backwards: bool = False):
        loss = loss_fn(model(x), y)
        if backwards:
            loss.backward()
        return loss

    opt.zero_grad()
    loss = opt.step(closure)

``closure()`` without parameters (never calling ``backward``, as for the SLS reference) works too,
and so does ``opt.step(closure, loss=L0)`` after your own forward and backward.

Depends on PyTorch only.
"""

from ._base import ClosureOptimizer
from ._evaluation import RNGSnapshot
from .diagnostics import Diagnostics, L4Diagnostics, SearchDiagnostics
from .l4 import L4
from .line_search import LineSearchOptimizer, ReleasedRule, SearchRule
from .salsa import SaLSA
from .sls import SLS

__all__ = [
    "ClosureOptimizer", "Diagnostics", "L4", "L4Diagnostics", "LineSearchOptimizer", "ReleasedRule",
    "RNGSnapshot", "SLS", "SaLSA", "SearchDiagnostics", "SearchRule",
]
__version__ = "0.1.0"
