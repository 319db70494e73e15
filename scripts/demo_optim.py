"""Train one small network with each optimizer of the library and print how they did.

A teacher MLP labels random inputs; a student MLP learns them with mini-batches. No data is
downloaded and it runs on the CPU in seconds. It needs torch and this library, importable once
the project is installed (``pip install -e .``, which the quick start does):

    python scripts/demo_optim.py [--steps 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from optim import L4, SLS, SaLSA

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adam (lr 1e-3)": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SaLSA": lambda p: SaLSA(p),
    "SaLSA (sgd)": lambda p: SaLSA(p, direction="sgd"),
    "SLS": lambda p: SLS(p),
    "SLS (adam)": lambda p: SLS(p, direction="adam"),
    "L4Adam": lambda p: L4(p),
}


def make_data(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n inputs drawn with ``seed``, labelled by one fixed teacher network."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    x = torch.randn(n, 20, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    return x, y


def student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 5))


def train(make_optimizer, steps: int, batch_size: int = 64) -> dict[str, float]:
    x, y = make_data(4096)
    x_test, y_test = make_data(1024, seed=2)
    model = student()
    opt = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(3)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        xb, yb = x[idx], y[idx]

        def closure(backwards: bool = False) -> Tensor:
            loss = nn.functional.cross_entropy(model(xb), yb)
            if backwards:
                loss.backward()
            return loss

        opt.zero_grad()
        if isinstance(opt, (SaLSA, SLS, L4)):
            opt.step(closure)
        else:
            closure(backwards=True)
            opt.step()
    elapsed = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        train_loss = nn.functional.cross_entropy(model(x), y).item()
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    diagnostics = getattr(opt, "diagnostics", None)  # optim.Diagnostics of SaLSA, SLS and L4
    return {
        "train_loss": train_loss,
        "test_accuracy": accuracy,
        "forwards_per_step": (diagnostics.n_forwards if diagnostics else steps) / steps,
        "step_size": diagnostics.step_size if diagnostics else opt.param_groups[0]["lr"],
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    print(f"{'optimizer':<16} {'train loss':>10} {'test acc':>9} {'fwd/step':>9} {'step size':>10} {'time s':>7}")
    for name, make in OPTIMIZERS.items():
        r = train(make, args.steps)
        print(
            f"{name:<16} {r['train_loss']:>10.4f} {r['test_accuracy']:>9.3f} "
            f"{r['forwards_per_step']:>9.2f} {r['step_size']:>10.3g} {r['seconds']:>7.2f}"
        )


if __name__ == "__main__":
    main()
