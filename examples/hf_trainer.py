"""A Hugging Face ``Trainer`` script trained by SaLSA: swap ``Trainer`` for ``LineSearchTrainer`` and
pass the optimizer. Gradient accumulation, logging and evaluation work as before; the learning
rate, its schedule and gradient clipping are not used (the line search picks the step size), and
the logs gain ``step_size``, ``n_forwards``, ``n_backtracks``, ...

    pip install -e ".[hf]"              # from the checkout: transformers, accelerate, datasets
    python examples/hf_trainer.py

A tiny randomly initialised BERT on a made-up task, so that it runs anywhere in seconds.
"""

import tempfile

import datasets
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from optim import SaLSA
from optim.integrations.hf import LineSearchTrainer


def toy_task(n: int = 64) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (n, 8), generator=generator)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 1] < 50).long().tolist()})


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=8,
    )
    model = BertForSequenceClassification(config)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, max_steps=20, per_device_train_batch_size=16, logging_steps=5,
            save_strategy="no", report_to=[], disable_tqdm=True,
            dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs a GPU (a warning without)
        )
        trainer = LineSearchTrainer(
            model=model, args=args, train_dataset=toy_task(),
            optimizers=(SaLSA(model.parameters()), None),   # an optimizer and no scheduler
        )
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    first, last = logs[0], logs[-1]          # each also has step_size, n_forwards, n_backtracks, ...
    print(f"HF Trainer: loss {first['loss']:.3f} -> {last['loss']:.3f}, step size {last['step_size']:.3g}")


if __name__ == "__main__":
    main()
