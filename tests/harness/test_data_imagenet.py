"""ImageNet in torchvision's folder layout, on a few small PNGs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from experiments.data import DatasetNotFound
from experiments.data.imagenet import imagenet

WNIDS = ["n01440764", "n01443537"]


def write_images(root, split: str, wnids: list[str], per_class: int = 2) -> None:
    """``per_class`` small PNGs of different sizes under ``root/split/<wnid>/``."""
    for label, wnid in enumerate(wnids):
        folder = root / split / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + 10 * i, 30), (60 * label, 100, 200)).save(folder / f"{wnid}_{i}.png")


def test_crops_are_224_and_labels_follow_the_wnids(tmp_path):
    write_images(tmp_path, "train", WNIDS)
    write_images(tmp_path, "val", WNIDS, per_class=1)
    bundle = imagenet(str(tmp_path))
    assert bundle.spec.num_classes == 2 and bundle.spec.input_shape == (3, 224, 224)
    for dataset, size in ((bundle.train, 4), (bundle.val, 2)):
        batch = bundle.collate([dataset[i] for i in range(size)])
        assert batch["inputs"].shape == (size, 3, 224, 224) and batch["inputs"].dtype == torch.float32
        assert batch["labels"].tolist() == sorted([0, 1] * (size // 2))


def test_missing_split_raises_dataset_not_found(tmp_path):
    write_images(tmp_path, "train", WNIDS)
    with pytest.raises(DatasetNotFound, match="imagenet") as info:
        imagenet(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "devkit" in str(info.value)


def test_val_classes_must_match_train(tmp_path):
    write_images(tmp_path, "train", WNIDS)
    write_images(tmp_path, "val", WNIDS[:1])
    with pytest.raises(ValueError, match="different class folders"):
        imagenet(str(tmp_path))
