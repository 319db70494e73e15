"""ImageNet (ILSVRC-2012) from torchvision's folder layout, with the paper's transforms."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets, transforms

from experiments.data import DataBundle, DatasetNotFound, DataSpec
from experiments.data.collate import collate_inputs_labels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet(data_dir: str) -> DataBundle:
    """ImageNet read from ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG``.

    Train images are resized (shorter side 256), randomly cropped to 224 and flipped; validation
    images are resized and centre-cropped to 224. Class indices follow the sorted wnids of
    ``train/``, which ``val/`` must match.

    Returns:
        A bundle whose batches are ``{"inputs": float[B, 3, 224, 224], "labels": long[B]}``, inputs
        normalised per channel.

    Raises:
        DatasetNotFound: a split folder is missing or holds no images.
    """
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_transform = [transforms.Resize(256), transforms.RandomCrop(224), transforms.RandomHorizontalFlip()]
    val_transform = [transforms.Resize(256), transforms.CenterCrop(224)]
    root = Path(data_dir)
    try:
        train = datasets.ImageFolder(root / "train", transforms.Compose(train_transform + normalise))
        val = datasets.ImageFolder(root / "val", transforms.Compose(val_transform + normalise))
    except FileNotFoundError as err:  # no folder, no class folders, or no images in them
        raise DatasetNotFound(
            "imagenet",
            data_dir,
            "Place ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz "
            "(from image-net.org) in that folder and run torchvision.datasets.ImageNet(data_dir, "
            "split=...) once for 'train' and 'val': it unpacks them into train/<wnid>/ and val/<wnid>/.",
        ) from err
    if val.classes != train.classes:
        raise ValueError(f"{root / 'val'} and {root / 'train'} hold different class folders")
    return DataBundle(
        name="imagenet",
        spec=DataSpec(task_kind="classification", num_classes=len(train.classes), input_shape=(3, 224, 224)),
        train=train,
        val=val,
        collate=collate_inputs_labels,
    )
