"""LineSearchModule / line_search_step: Lightning's manual optimization with SaLSA, SLS and L4."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from optim import L4, SLS, SaLSA  # noqa: E402
from optim.integrations.lightning import LineSearchModule, line_search_step  # noqa: E402

from conftest import classification_batch  # noqa: E402

MAX_STEPS = 20


class Classifier(LineSearchModule):
    def __init__(self, make_optimizer=SaLSA, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 3))
        self.make_optimizer = make_optimizer

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return self.make_optimizer(self.parameters())


class StepSizes(pl.Callback):
    """Per step: the logged step size and the optimizer's own, read from the optimizer."""

    def __init__(self) -> None:
        self.logged: list[float] = []
        self.optimizers: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.logged.append(float(trainer.callback_metrics["step_size"]))
        self.optimizers.append(module.optimizers().optimizer.diagnostics["step_size"])


def fit(module: pl.LightningModule, callbacks: list | None = None, batch_size: int = 16) -> pl.Trainer:
    x, y = classification_batch(n=256)
    trainer = pl.Trainer(
        max_steps=MAX_STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks or [],
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=batch_size))
    return trainer


def full_loss(module: Classifier) -> float:
    with torch.no_grad():
        return module.compute_loss(classification_batch(n=256)).item()


@pytest.mark.parametrize("make_optimizer", [SaLSA, SLS, L4], ids=["SaLSA", "SLS", "L4"])
def test_trains_with_max_steps_and_logs_the_optimizers_step_size(make_optimizer):
    module, spy = Classifier(make_optimizer), StepSizes()
    before = full_loss(module)
    trainer = fit(module, [spy])
    assert trainer.global_step == MAX_STEPS  # each line_search_step is one counted optimizer step
    assert full_loss(module) < before - 0.05
    assert spy.logged == pytest.approx(spy.optimizers, rel=1e-6)  # self.log stores float32
    assert len(set(spy.optimizers)) > 1
    diagnostics = module.optimizers().optimizer.diagnostics
    assert {"n_forwards", "n_backwards", "n_skipped", "train_loss"} <= trainer.callback_metrics.keys()
    assert float(trainer.callback_metrics["n_forwards"]) == diagnostics["n_forwards"]
    trials = diagnostics["n_forwards"] - diagnostics["n_backwards"]
    assert trials == 0 if make_optimizer is L4 else trials > 0


class ReplayCheckingSaLSA(SaLSA):
    """Records (L0 given, the closure at theta0 under the step's RNG snapshot, without it)."""

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.first: list[tuple[float, float, float]] = []

    def step(self, closure=None, **kwargs):
        with torch.no_grad():
            with kwargs["rng"].replay():
                replayed = float(closure())
            self.first.append((float(kwargs["loss"]), replayed, float(closure())))
        return super().step(closure, **kwargs)


def test_trials_see_the_batch_and_dropout_masks_of_the_first_forward():
    module = Classifier(ReplayCheckingSaLSA, dropout=0.5)
    fit(module)
    first = module.optimizers().optimizer.first
    assert len(first) == MAX_STEPS
    for given, replayed, unreplayed in first:
        assert replayed == pytest.approx(given, rel=1e-6)
        assert unreplayed != pytest.approx(given, rel=1e-6)  # not vacuous: other masks


class OwnTrainingStep(pl.LightningModule):
    """The recipe without the mixin: manual optimization and line_search_step in training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Linear(8, 3)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = line_search_step(self, lambda: F.cross_entropy(self.net(x), y))
        self.log("my_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return SaLSA(self.parameters())


def test_line_search_step_in_your_own_training_step():
    module = OwnTrainingStep()
    trainer = fit(module)
    assert trainer.global_step == MAX_STEPS
    assert {"my_loss", "step_size", "n_backtracks"} <= trainer.callback_metrics.keys()


def with_scheduler(params: Any) -> dict:
    optimizer = SaLSA(params)
    return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 5)}


def two_optimizers(params: Any) -> list:
    params = list(params)
    return [SaLSA(params), L4(params)]


class Automatic(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = True


@pytest.mark.parametrize(
    "module, error, match",
    [
        (lambda: Classifier(with_scheduler), ValueError, r"scheduler\(s\) \['StepLR'\]"),
        (lambda: Classifier(torch.optim.Adam), TypeError, r"got torch\.optim\.adam\.Adam"),
        (lambda: Classifier(two_optimizers), TypeError, r"one optimizer, got 2"),
        (Automatic, ValueError, r"needs manual optimization"),
    ],
    ids=["scheduler", "adam", "two_optimizers", "automatic"],
)
def test_bad_set_up_fails_before_any_parameter_moves(module, error, match):
    module = module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(error, match=match):
        fit(module)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
