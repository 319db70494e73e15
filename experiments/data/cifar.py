"""CIFAR-10 and CIFAR-100 through torchvision, with the paper's augmentation."""

from __future__ import annotations

from typing import Literal

from torchvision import datasets, transforms

from experiments.data import DataBundle, DatasetNotFound, DataSpec
from experiments.data.collate import collate_inputs_labels

# The per-channel statistics of the paper's (and many CIFAR codebases') normalisation.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_CLASSES = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}


def cifar(
    name: Literal["cifar10", "cifar100"], data_dir: str, download: bool = False, augment: bool = True
) -> DataBundle:
    """CIFAR-10 or CIFAR-100: train on the 50,000 training images, validate on the 10,000 test ones.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: the folder holding torchvision's ``cifar-10-batches-py`` / ``cifar-100-python``.
        download: fetch the archive into ``data_dir`` first (needs network).
        augment: the paper's training augmentation (random 32x32 crop of the image padded by 4,
            horizontal flip); False gives the training images as the test ones are given.

    Returns:
        A bundle whose batches are ``{"inputs": float[B, 3, 32, 32], "labels": long[B]}``, inputs
        normalised per channel.

    Raises:
        DatasetNotFound: the files are missing or corrupted and ``download`` is False.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(_CLASSES)}")
    normalise = [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    augmentation = (
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    )
    dataset_class = _CLASSES[name]
    try:
        train = dataset_class(
            data_dir, train=True, transform=transforms.Compose(augmentation + normalise), download=download
        )
        val = dataset_class(data_dir, train=False, transform=transforms.Compose(normalise))
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DatasetNotFound(
            name,
            data_dir,
            "Set dataset.build.download=true on a machine with network, or place the python-version "
            f"archive {dataset_class.filename} ({dataset_class.url}) in that folder and either set "
            f"download=true (it then only checks and unpacks it) or unpack it there yourself, so that "
            f"{dataset_class.base_folder}/ is inside it.",
        ) from err
    return DataBundle(
        name=name,
        spec=DataSpec(task_kind="classification", num_classes=len(train.classes), input_shape=(3, 32, 32)),
        train=train,
        val=val,
        collate=collate_inputs_labels,
    )
