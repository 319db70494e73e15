"""CIFAR through torchvision, on a fake CIFAR-10 folder in torchvision's pickle format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from experiments.data import DatasetNotFound
from experiments.data.cifar import CIFAR_MEAN, CIFAR_STD, cifar

PIXEL = (10, 128, 250)  # every fake image has these channel values


def write_batch(path, labels: list[int]) -> None:
    """A batch file as the python-version archive holds it: uint8[n, 3*32*32] rows, CHW order."""
    images = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    images[:] = np.array(PIXEL, dtype=np.uint8)[:, None, None]
    with open(path, "wb") as file:
        pickle.dump({"data": images.reshape(len(labels), -1), "labels": labels}, file)


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    """A CIFAR-10 folder of two 3-image training batches and a 3-image test batch."""
    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    write_batch(folder / "data_batch_1", [0, 1, 2])
    write_batch(folder / "data_batch_2", [3, 4, 9])
    write_batch(folder / "test_batch", [5, 6, 7])
    with open(folder / CIFAR10.meta["filename"], "wb") as file:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, file)
    # torchvision checks the real archive's md5 sums; an md5 of None checks only that files exist.
    monkeypatch.setattr(CIFAR10, "train_list", [["data_batch_1", None], ["data_batch_2", None]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", None]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})
    return str(tmp_path)


def normalised(value: float, channel: int) -> float:
    return (value / 255 - CIFAR_MEAN[channel]) / CIFAR_STD[channel]


def test_batches_have_the_paper_shape_and_normalisation(cifar10_dir):
    torch.manual_seed(0)  # for the random crops and flips
    bundle = cifar("cifar10", cifar10_dir)
    assert bundle.spec.num_classes == 10 and bundle.spec.input_shape == (3, 32, 32)
    assert len(bundle.train) == 6 and len(bundle.val) == 3

    train = bundle.collate([bundle.train[i] for i in range(6)])
    val = bundle.collate([bundle.val[i] for i in range(3)])
    assert train["inputs"].shape == (6, 3, 32, 32) and train["inputs"].dtype == torch.float32
    assert train["labels"].tolist() == [0, 1, 2, 3, 4, 9] and train["labels"].dtype == torch.long
    assert val["labels"].tolist() == [5, 6, 7]
    for channel, value in enumerate(PIXEL):
        image, black = torch.tensor(normalised(value, channel)), torch.tensor(normalised(0, channel))
        # test images are only normalised; crops of the zero-padded train images mix in black pixels
        assert torch.allclose(val["inputs"][:, channel], image)
        train_pixels = train["inputs"][:, channel]
        assert (torch.isclose(train_pixels, image) | torch.isclose(train_pixels, black)).all()
        assert torch.isclose(train_pixels, black).any()


def test_without_augmentation_train_images_are_normalised_only(cifar10_dir):
    bundle = cifar("cifar10", cifar10_dir, augment=False)
    assert torch.equal(bundle.train[0][0], bundle.val[0][0])


def test_missing_files_raise_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFound, match="cifar100") as info:
        cifar("cifar100", str(tmp_path))
    assert str(tmp_path) in str(info.value) and "download=true" in str(info.value)
