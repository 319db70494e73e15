"""Data that ships inside an installed package, so that the default run needs no download."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from experiments.data import DataBundle, DataSpec
from experiments.data.collate import InMemoryPairs, collate_inputs_labels

_DIGIT_LEVELS = 16.0  # load_digits pixels are counts in 0..16 (4x4 blocks of a 32x32 bitmap)


def digits(val_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's handwritten digits: 1,797 real 8x8 grey images of 10 classes.

    Args:
        val_fraction: share of the images held out for validation, stratified by class.
        seed: seed of the split; the same seed always gives the same split.

    Returns:
        A bundle of in-memory datasets whose batches are
        ``{"inputs": float[B, 1, 8, 8], "labels": long[B]}``, inputs in [0, 1].
    """
    images, labels = load_digits(return_X_y=True)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels
    )
    inputs = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / _DIGIT_LEVELS
    targets = torch.tensor(labels, dtype=torch.long)
    return DataBundle(
        name="digits",
        spec=DataSpec(task_kind="classification", num_classes=10, input_shape=(1, 8, 8)),
        train=InMemoryPairs(inputs[train_idx], targets[train_idx]),
        val=InMemoryPairs(inputs[val_idx], targets[val_idx]),
        collate=collate_inputs_labels,
    )
