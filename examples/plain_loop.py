"""SaLSA in a plain PyTorch loop, in two forms: the optimizer calls your closure, or you run the
forward and backward yourself (here over two micro-batches) and pass the loss.

    pip install -e .                    # from the checkout: torch and this library
    python examples/plain_loop.py
"""

import torch
from torch import nn

from optim import RNGSnapshot, SaLSA


def batches(n: int = 40, size: int = 32):
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(size, 8, generator=generator)
        yield x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 3))


def with_closure() -> None:
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    losses = []
    opt = SaLSA(model.parameters())          # no learning rate
    for x, y in batches():
        def closure(backwards: bool = False):
            loss = loss_fn(model(x), y)
            if backwards:
                loss.backward()
            return loss

        opt.zero_grad()
        loss = opt.step(closure)             # L0; the step size was found by a line search
        losses.append(loss.item())
    step_size = opt.diagnostics.step_size
    print(f"closure: loss {losses[0]:.3f} -> {losses[-1]:.3f}, step size {step_size:.3g}")


def with_your_own_backward(accumulation: int = 2) -> None:
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    losses = []
    opt = SaLSA(model.parameters())
    for x, y in batches():
        micro_batches = list(zip(x.chunk(accumulation), y.chunk(accumulation)))

        def mean_loss():                     # the quantity whose gradient is accumulated below
            return sum(loss_fn(model(xb), yb) for xb, yb in micro_batches) / accumulation

        rng = RNGSnapshot(model.parameters())  # before the first forward: trials replay its dropout
        opt.zero_grad()
        loss = 0.0
        for xb, yb in micro_batches:
            part = loss_fn(model(xb), yb) / accumulation
            part.backward()
            loss += part.detach()
        opt.step(mean_loss, loss=loss, rng=rng)  # mean_loss() is called for the trials only
        losses.append(float(loss))
    step_size = opt.diagnostics.step_size
    print(f"own backward: loss {losses[0]:.3f} -> {losses[-1]:.3f}, step size {step_size:.3g}")


if __name__ == "__main__":
    with_closure()
    with_your_own_backward()
