"""The offline digits dataset and the (input, label) collate."""

from __future__ import annotations

import math

import torch

from experiments.data.offline import digits


def test_digits_shapes_range_and_batch():
    bundle = digits()
    assert bundle.spec.task_kind == "classification"
    assert bundle.spec.num_classes == 10 and bundle.spec.input_shape == (1, 8, 8)
    assert len(bundle.train) + len(bundle.val) == 1797
    assert len(bundle.val) == math.ceil(0.2 * 1797)
    batch = bundle.collate([bundle.train[i] for i in range(5)])
    assert set(batch) == {"inputs", "labels"}
    assert batch["inputs"].shape == (5, 1, 8, 8) and batch["inputs"].dtype == torch.float32
    assert batch["labels"].shape == (5,) and batch["labels"].dtype == torch.long
    inputs = bundle.train.tensors[0]
    assert inputs.min() == 0.0 and inputs.max() == 1.0


def test_digits_split_is_stratified_and_seeded():
    first, again, other = digits(seed=0), digits(seed=0), digits(seed=1)
    assert torch.equal(first.val.tensors[1], again.val.tensors[1])
    assert torch.equal(first.val.tensors[0], again.val.tensors[0])
    assert not torch.equal(first.val.tensors[0], other.val.tensors[0])
    all_counts = torch.bincount(torch.cat([first.train.tensors[1], first.val.tensors[1]]), minlength=10)
    val_counts = torch.bincount(first.val.tensors[1], minlength=10)
    assert ((val_counts - 0.2 * all_counts).abs() <= 1).all()


def test_in_memory_batches_equal_what_dataloader_gives_for_the_same_order():
    from torch.utils.data import DataLoader

    train = digits().train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3)).tolist()[5:]
    sliced = list(train.batches(order, 32))
    loaded = list(DataLoader(train, batch_size=32, sampler=order, collate_fn=lambda batch: batch))
    assert [len(b["labels"]) for b in sliced] == [32] * (len(order) // 32) + [len(order) % 32]
    assert len(sliced) == len(loaded)
    for ours, theirs in zip(sliced, loaded):
        assert torch.equal(ours["inputs"], theirs["inputs"]) and torch.equal(ours["labels"], theirs["labels"])
