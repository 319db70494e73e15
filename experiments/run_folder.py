"""The run's folder is checked before Hydra makes it (a Hydra callback).

Hydra makes ``hydra.run.dir`` (``outputs/<dataset>-<model>-<optimizer>-seed<seed>/...``) before
the run starts. :class:`RunFolderChecked` (registered in ``conf/config.yaml``) refuses, in one
line with exit 2 and before any folder is made, a run whose folder would be the working directory
(an empty ``hydra.run.dir``) or whose names would make folders elsewhere than the name says (an
``optimizer.name`` holding ``../`` or ``/``). The runner checks the names again
(:func:`experiments.config.check_names`) for runs that do not come through ``main.py``.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, check_names


class RunFolderChecked(Callback):
    """Refuses a run or multirun whose folder is the working directory or whose names are not names."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unless(config, run=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unless(config, run=False)  # an empty hydra.sweep.dir: experiments/sweeps.py


def _refuse_unless(config: DictConfig, run: bool) -> None:
    try:
        if run and not str(config.hydra.run.dir).strip():
            raise ConfigError("hydra.run.dir is empty: the record would be written into the working "
                              "directory; give a folder, e.g. hydra.run.dir=outputs/<name>")
        check_names(config)
    except ConfigError as error:
        # Hydra turns an exception raised by a callback into a warning and goes on.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OmegaConfBaseException:
        pass  # an interpolation that does not resolve: Hydra fails on it next, and main.py says so
