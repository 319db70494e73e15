"""What the CPU and the CUDA mixed-precision tests share: a small model, a batch, the fp32
yardstick and a GradScaler closure, on the device the test names."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _cpu_fp16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float16
    except (RuntimeError, ValueError):
        return False


# torch 2.13's CPU autocast supports float16, so the fp16 tests run the forward in fp16 under
# torch.autocast("cpu", dtype=torch.float16). On a torch without it they fall back to an fp32
# forward that still goes through the GradScaler (scaling, unscaling and inf-skipping are then
# still exercised; only the fp16 arithmetic is not). CUDA autocast always has float16.
FP16_AUTOCAST_ON_CPU = _cpu_fp16_autocast_works()


def mlp(device: torch.device | str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3)).to(device)


def batch(n: int = 128, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > x[:, 2]).long()
    return x.to(device), y.to(device)


def fp32_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The loss in full precision, outside any autocast: the independent yardstick of progress."""
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


class ScaledClosure:
    """``closure(backwards)`` for fp16 training with a GradScaler: backpropagates
    ``scaler.scale(loss)`` (the loss itself without a scaler) and returns the unscaled loss.

    ``inject`` on the ``inject_at``-th backward evaluation (0-based): ``"grad"`` sets one
    gradient element to inf after the backward; ``"loss"`` multiplies the loss by inf.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, scaler: torch.amp.GradScaler | None,
                 inject: str | None = None, inject_at: int = -1) -> None:
        self.model, self.x, self.y, self.scaler = model, x, y, scaler
        self.inject, self.inject_at = inject, inject_at
        self.n_backward_calls = 0
        self.output_dtypes: set[torch.dtype] = set()

    def __call__(self, backwards: bool = False) -> Tensor:
        injecting = backwards and self.n_backward_calls == self.inject_at
        device_type = self.x.device.type
        enabled = device_type != "cpu" or FP16_AUTOCAST_ON_CPU
        with torch.autocast(device_type, dtype=torch.float16, enabled=enabled):
            out = self.model(self.x)
            self.output_dtypes.add(out.dtype)
            loss = F.cross_entropy(out, self.y)  # autocast runs it in float32
        if injecting and self.inject == "loss":
            loss = loss * float("inf")
        if backwards:
            self.n_backward_calls += 1
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            if injecting and self.inject == "grad":
                first = next(iter(self.model.parameters()))
                first.grad.view(-1)[0] = float("inf")
        return loss
