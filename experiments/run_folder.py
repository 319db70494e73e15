"""The run's folder is checked before Hydra makes it (a Hydra callback).

Hydra makes ``hydra.run.dir`` (``outputs/<dataset>-<model>-<optimizer>-seed<seed>/...``) before
the run starts. :class:`RunFolderChecked` (registered in ``conf/config.yaml``) refuses, in one
line with exit 2 and before any folder is made, a run whose folder would be the working directory
(an empty ``hydra.run.dir``) or whose names would make folders elsewhere than the name says (an
``optimizer.name`` holding ``../`` or ``/``), in a multirun also every value swept over such a
name (``optimizer.name=a,../b``), before Hydra makes the first job's folder. The runner checks the
names again (:func:`experiments.preflight.check_names`) for runs that do not come through ``main.py``.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from .errors import BAD_INPUT, ConfigError
from .preflight import PATH_NAMES, check_name, check_names


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
        if not run:
            check_swept_names(list(config.hydra.overrides.task) +
                              [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()])
    except ConfigError as error:
        # Hydra turns an exception raised by a callback into a warning and goes on.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(BAD_INPUT) from None
    except OmegaConfBaseException:
        pass  # an interpolation that does not resolve: Hydra fails on it next, and main.py says so


def check_swept_names(overrides: list[str]) -> None:
    """Every value that ``overrides`` sweep a name of :data:`PATH_NAMES` over is a name: the
    multirun's config holds only the first job's values, and Hydra makes each job's folder before
    the job's own check could refuse it."""
    for override in OverridesParser.create().parse_overrides(overrides=overrides):
        if override.key_or_group in PATH_NAMES and override.is_sweep_override():
            for value in override.sweep_string_iterator():
                check_name(override.key_or_group, value)
