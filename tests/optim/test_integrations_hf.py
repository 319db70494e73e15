"""LineSearchTrainer: a transformers.Trainer stepping SaLSA / SLS / L4 on a tiny random BERT."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from optim import L4, SLS, SaLSA  # noqa: E402
from optim.integrations.hf import LineSearchTrainer  # noqa: E402

SEQ, BATCH = 8, 8




def tiny_bert(dropout: float = 0.0, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
        max_position_embeddings=SEQ, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


def toy_dataset(n: int = 32) -> datasets.Dataset:
    """Label 1 iff the second token is below 50: learnable from one embedding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (n, SEQ), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 1] < 50).long().tolist()})


def training_args(tmp_path, **overrides: Any) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=BATCH, logging_steps=1, max_steps=4, seed=0,
    )
    return TrainingArguments(**{**settings, **overrides})


def dataset_loss(model: torch.nn.Module, dataset: datasets.Dataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(dataset["input_ids"])).logits
    model.train()
    return F.cross_entropy(logits, torch.tensor(dataset["labels"])).item()


class StepSizes(TrainerCallback):
    """The optimizer's own step size after each global step, read from the optimizer."""

    def __init__(self, optimizer: SaLSA) -> None:
        self.optimizer = optimizer
        self.by_step: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = self.optimizer.diagnostics["step_size"]


def test_trains_bert_and_logs_the_optimizers_step_size(tmp_path):
    model, data = tiny_bert(), toy_dataset()
    optimizer = SaLSA(model.parameters())
    spy = StepSizes(optimizer)
    trainer = LineSearchTrainer(
        model=model, args=training_args(tmp_path, max_steps=12), train_dataset=data,
        optimizers=(optimizer, None), callbacks=[spy],
    )
    before = dataset_loss(model, data)
    trainer.train()
    assert dataset_loss(model, data) < before - 0.01

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == list(range(1, 13))
    for entry in logs:
        assert entry["step_size"] == spy.by_step[entry["step"]]
        assert entry["learning_rate"] == entry["step_size"]
    assert len({entry["step_size"] for entry in logs}) > 1  # the search moved it
    assert logs[-1]["n_forwards"] > logs[-1]["n_steps"] == 12  # trials ran
    assert {"n_backtracks", "n_searches", "grad_norm"} <= logs[-1].keys()


class RecordingSaLSA(SaLSA):
    """Records what the Trainer's step passes and every trial: (step, parameters, loss)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model.parameters(), init_step_size=0.01)  # few trials: a faster test
        self.model = model
        # (L0 given, the closure at theta0 with the step's RNG snapshot, and without it)
        self.first: list[tuple[float, float, float]] = []
        self.trials: list[tuple[int, dict[str, Tensor], float]] = []

    def step(self, closure=None, **kwargs):
        with torch.no_grad():
            with kwargs["rng"].replay():
                replayed = float(closure())
            self.first.append((float(kwargs["loss"]), replayed, float(closure())))

        def recording() -> Tensor:
            loss = closure()
            params = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.trials.append((self.diagnostics["n_steps"] - 1, params, float(loss)))
            return loss

        return super().step(recording, **kwargs)


class MicroBatchTrainer(LineSearchTrainer):
    """Keeps every micro-batch it trains on, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict[str, Tensor]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append({k: v.clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)


def sum_over_items(outputs, labels, num_items_in_batch):
    return F.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch


@pytest.mark.parametrize("normalised_by", ["micro_batch", "num_items_in_batch"])
def test_with_accumulation_trials_are_the_mean_over_both_micro_batches(tmp_path, normalised_by):
    model = tiny_bert()
    extra: dict[str, Any] = {}
    if normalised_by == "micro_batch":
        model.accepts_loss_kwargs = False  # the Trainer divides each micro-batch mean by 2
    else:
        extra["compute_loss_func"] = sum_over_items  # the Trainer passes the items of both
    optimizer = RecordingSaLSA(model)
    trainer = MicroBatchTrainer(
        model=model, args=training_args(tmp_path, max_steps=3, gradient_accumulation_steps=2),
        train_dataset=toy_dataset(), optimizers=(optimizer, None), **extra,
    )
    trainer.train()

    assert len(trainer.seen) == 6 and len(optimizer.first) == 3
    reference = tiny_bert(seed=1)

    def mean_over_micro_batches(step: int) -> float:
        losses = [
            F.cross_entropy(reference(input_ids=batch["input_ids"]).logits, batch["labels"]).item()
            for batch in trainer.seen[2 * step : 2 * step + 2]
        ]
        return sum(losses) / 2

    assert {step for step, _, _ in optimizer.trials} == {0, 1, 2}
    with torch.no_grad():
        for step, params, trial_loss in optimizer.trials:
            reference.load_state_dict(params)
            assert trial_loss == pytest.approx(mean_over_micro_batches(step), rel=1e-5)
    for given, replayed, _ in optimizer.first:
        assert given == pytest.approx(replayed, rel=1e-6)


def test_trials_replay_the_dropout_masks_of_the_first_forward(tmp_path):
    model = tiny_bert(dropout=0.3)
    model.accepts_loss_kwargs = False
    optimizer = RecordingSaLSA(model)
    trainer = LineSearchTrainer(
        model=model, args=training_args(tmp_path, max_steps=2, gradient_accumulation_steps=2),
        train_dataset=toy_dataset(), optimizers=(optimizer, None),
    )
    trainer.train()
    for given, replayed, unreplayed in optimizer.first:
        assert given == pytest.approx(replayed, rel=1e-6)
        assert unreplayed != pytest.approx(given, rel=1e-6)  # not vacuous: other masks, other loss


def test_optimizer_by_class_by_default_and_l4(tmp_path):
    model = tiny_bert()
    by_class = LineSearchTrainer(
        model=model, args=training_args(tmp_path, max_steps=2, weight_decay=0.01),
        train_dataset=toy_dataset(), optimizer_cls_and_kwargs=(SLS, {"c": 0.2, "init_step_size": 0.01}),
    )
    by_class.train()
    sls = by_class.optimizer.optimizer
    assert isinstance(sls, SLS) and sls.diagnostics["n_steps"] == 2
    assert {group["weight_decay"] for group in sls.param_groups} == {0.01, 0.0}  # the Trainer's groups

    default = LineSearchTrainer(
        model=tiny_bert(), args=training_args(tmp_path, max_steps=1), train_dataset=toy_dataset()
    )
    default.train()
    assert type(default.optimizer.optimizer) is SaLSA

    model = tiny_bert()
    l4 = L4(model.parameters())
    trainer = LineSearchTrainer(
        model=model, args=training_args(tmp_path, max_steps=2), train_dataset=toy_dataset(),
        optimizers=(l4, None),
    )
    trainer.train()
    assert l4.diagnostics["n_steps"] == 2 and l4.diagnostics["n_forwards"] == 2  # no trials
    assert trainer.state.log_history[1]["step_size"] == l4.diagnostics["step_size"]


def test_resuming_from_a_checkpoint_continues_the_same_trajectory(tmp_path):
    def run(resume: str | None = None) -> tuple[torch.nn.Module, SaLSA]:
        model = tiny_bert(dropout=0.1)
        optimizer = SaLSA(model.parameters())
        args = training_args(
            tmp_path, max_steps=4, save_strategy="steps", save_steps=2, gradient_accumulation_steps=2
        )
        trainer = LineSearchTrainer(
            model=model, args=args, train_dataset=toy_dataset(), optimizers=(optimizer, None)
        )
        trainer.train(resume_from_checkpoint=resume)
        return model, optimizer

    straight, straight_opt = run()
    resumed, resumed_opt = run(str(tmp_path / "checkpoint-2"))
    assert resumed_opt.diagnostics == straight_opt.diagnostics
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("scheduler", ValueError, r"scheduler LambdaLR.*takes no scheduler"),
        ("adam", TypeError, r"got torch\.optim\.adam\.Adam"),
        ("adamw_class", TypeError, r"optimizer_cls_and_kwargs.*got torch\.optim\.adamw\.AdamW"),
    ],
)
def test_bad_optimizer_or_scheduler_fails_before_any_step(tmp_path, bad, error, match):
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs: dict[str, Any] = {}
    if bad == "scheduler":
        optimizer = SaLSA(model.parameters())
        kwargs["optimizers"] = (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    elif bad == "adam":
        kwargs["optimizers"] = (torch.optim.Adam(model.parameters()), None)
    else:
        kwargs["optimizer_cls_and_kwargs"] = (torch.optim.AdamW, {"lr": 1e-3})
    with pytest.raises(error, match=match):
        LineSearchTrainer(model=model, args=training_args(tmp_path), train_dataset=toy_dataset(), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
