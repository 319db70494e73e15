"""Hugging Face datasets: a copy saved under the data directory, else the hub (or its cache)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from datasets import DatasetDict, load_dataset, load_from_disk
from datasets import config as datasets_config

from experiments import hub_probe
from experiments.data import DatasetNotFound


def load_saved_or_hub(
    path: str, config: str | None, data_dir: str | None, subdir: str, revision: str | None = None
) -> DatasetDict:
    """All splits of the hub dataset ``path`` (configuration ``config``, at ``revision``).

    Read from ``<data_dir>/<subdir>`` when it holds a ``DatasetDict.save_to_disk`` copy, which is
    how machines without network get the data; otherwise from
    ``load_dataset(path, config, revision=revision)``, which needs the hub or the Hugging Face
    cache.

    Raises:
        DatasetNotFound: no saved copy and the hub is out of reach.
        RuntimeError: the hub copy needs a loading script, which ``datasets`` >= 4 no longer runs.
    """
    saved = Path(data_dir, subdir) if data_dir is not None else None
    # dataset_dict.json is written last by save_to_disk, so its presence marks a complete copy.
    if saved is not None and (saved / "dataset_dict.json").is_file():
        return load_from_disk(str(saved))
    asked_hub = hub_probe.hub_reachable()
    try:
        with _cache_only(not asked_hub):
            return load_dataset(path, config, revision=revision)
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        raise RuntimeError(
            f"{path}: this copy on the hub is built by a loading script, which datasets >= 4 no "
            "longer runs. Load a parquet form of it (its refs/convert/parquet revision, or another "
            f"parquet copy), or save a copy into {saved or f'<data_dir>/{subdir}'} with an older "
            'datasets in a separate environment: pip install "datasets<4" and run load_dataset('
            f"{path!r}, trust_remote_code=True).save_to_disk(...)"
        ) from err
    except OSError as err:  # ConnectionError when offline, datasets' DatasetNotFoundError, ...
        target = str(saved) if saved is not None else f"<data_dir>/{subdir}"
        config_arg = f", {config!r}" if config is not None else ""
        hub = "the Hugging Face hub and cache" if asked_hub else (
            f"the Hugging Face cache (the hub was not asked: {hub_probe.why_unreachable()})"
        )
        raise DatasetNotFound(
            path if config is None else f"{path} ({config})",
            f"{target} (a save_to_disk copy) and {hub}",
            "Run once with network (the download is then cached), or save a copy on a machine "
            'with network: python -c "from datasets import load_dataset; '
            f'load_dataset({path!r}{config_arg}).save_to_disk({target!r})"',
        ) from err


@contextlib.contextmanager
def _cache_only(enabled: bool) -> Iterator[None]:
    """``load_dataset`` has no ``local_files_only``. When ``enabled``, the switch that
    ``HF_HUB_OFFLINE=1`` turns on when ``datasets`` is imported is on for the call, so that it
    reads the cache or fails at once instead of retrying an unreachable hub for half a minute."""
    if not enabled:
        yield
        return
    before = datasets_config.HF_HUB_OFFLINE
    datasets_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets_config.HF_HUB_OFFLINE = before
