"""SLS with the closure convention of its reference implementation: ``closure()`` returns the loss
and never calls ``backward``; the optimizer zeroes the gradients and runs the backward itself.

    pip install -e .                    # from the checkout: torch and this library
    python examples/sls_closure.py
"""

import torch
from torch import nn

from optim import SLS


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)

    losses = []
    opt = SLS(model.parameters())            # SGD direction, Armijo backtracking from eta = 1
    for _ in range(40):
        x = torch.randn(32, 8, generator=generator)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()

        def closure():
            return loss_fn(model(x), y)

        loss = opt.step(closure)             # no zero_grad, no backward: the step does both
        losses.append(loss.item())
    print(f"SLS: loss {losses[0]:.3f} -> {losses[-1]:.3f}, step size {opt.diagnostics.step_size:.3g}")


if __name__ == "__main__":
    main()
