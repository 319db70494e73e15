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

Depends on PyTorch only.
"""

from ._base import ClosureOptimizer
from .l4 import L4
from .line_search import LineSearchOptimizer, ReleasedRule, SearchRule
from .salsa import SaLSA
from .sls import SLS

__all__ = ["ClosureOptimizer", "L4", "LineSearchOptimizer", "ReleasedRule", "SLS", "SaLSA", "SearchRule"]
__version__ = "0.1.0"
