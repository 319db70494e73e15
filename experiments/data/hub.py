"""Hugging Face datasets: a copy saved under the data directory, else the hub (or its cache)."""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset, load_from_disk

from experiments.data import DatasetNotFound


def load_saved_or_hub(path: str, config: str | None, data_dir: str | None, subdir: str) -> DatasetDict:
    """All splits of the hub dataset ``path`` (configuration ``config``).

    Read from ``<data_dir>/<subdir>`` when it holds a ``DatasetDict.save_to_disk`` copy, which is
    how machines without network get the data; otherwise from ``load_dataset(path, config)``,
    which needs the hub or the Hugging Face cache.

    Raises:
        DatasetNotFound: no saved copy and the hub is out of reach.
    """
    saved = Path(data_dir, subdir) if data_dir is not None else None
    # dataset_dict.json is written last by save_to_disk, so its presence marks a complete copy.
    if saved is not None and (saved / "dataset_dict.json").is_file():
        return load_from_disk(str(saved))
    try:
        return load_dataset(path, config)
    except OSError as err:  # ConnectionError when offline, datasets' DatasetNotFoundError, ...
        target = str(saved) if saved is not None else f"<data_dir>/{subdir}"
        config_arg = f", {config!r}" if config is not None else ""
        raise DatasetNotFound(
            path if config is None else f"{path} ({config})",
            f"{target} (a save_to_disk copy) and the Hugging Face hub and cache",
            "Run once with network (the download is then cached), or save a copy on a machine "
            'with network: python -c "from datasets import load_dataset; '
            f'load_dataset({path!r}{config_arg}).save_to_disk({target!r})"',
        ) from err
