"""A Lightning module trained by SaLSA: subclass ``LineSearchModule``, write ``compute_loss(batch)``
and return the optimizer (and no scheduler) from ``configure_optimizers``. ``step_size`` and the
search counters are logged with ``self.log``.

    pip install -e ".[lightning]"       # from the checkout
    python examples/lightning_module.py
"""

import logging
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optim import SaLSA
from optim.integrations.lightning import LineSearchModule


class Classifier(LineSearchModule):
    def __init__(self) -> None:
        super().__init__()                   # switches Lightning to manual optimization
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 3))

    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return SaLSA(self.parameters())


class FirstAndLastLoss(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train_loss"]))


def quiet_lightning() -> None:
    """Keep the output to this script's result: Lightning logs the accelerators it found and
    product tips at INFO, and its pytree helper uses a class that torch >= 2.10 deprecates."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")


def main() -> None:
    quiet_lightning()
    torch.manual_seed(0)
    x = torch.randn(1024, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    record = FirstAndLastLoss()
    trainer = pl.Trainer(
        max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[record],
    )
    trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
    step_size = float(trainer.callback_metrics["step_size"])
    print(f"Lightning: loss {record.losses[0]:.3f} -> {record.losses[-1]:.3f}, step size {step_size:.3g}")


if __name__ == "__main__":
    main()
