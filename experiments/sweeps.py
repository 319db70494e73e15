"""A multirun refuses, before it starts, to put two of its runs into one folder.

Hydra names each run's folder from ``hydra.sweep.subdir``. A key swept on the command line (or
in ``hydra.sweeper.params``) that this name does not contain sends several runs into the same
folder, where the first would train and the others be refused. :class:`DistinctRunDirs` (a
Hydra callback, registered in ``conf/config.yaml``) checks that every swept key reaches the
name: through an interpolation of the key itself, of a key inside a swept config group
(``${optimizer.name}`` for ``optimizer=salsa,adam``), of the group's choice
(``${hydra:runtime.choices.optimizer}``), of ``${hydra.job.override_dirname}`` (unless the key is
excluded from it) or of ``${hydra.job.num}``. A refused multirun prints one line and exits with
2, before Hydra makes any folder.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import BAD_INPUT

_INTERPOLATION = re.compile(r"\$\{([^${}]+)\}")
_EVERY_JOB = {"hydra.job.num", "hydra:job.num", "hydra.job.id", "hydra:job.id"}
_OVERRIDE_DIRNAME = {"hydra.job.override_dirname", "hydra:job.override_dirname"}


class RunFailed(CompactHydraException):
    """A run of a multirun did not finish (its job, under a cluster launcher, included). Hydra
    finishes the other runs, then prints this alone, and ``main.py`` exits with 1."""


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys (or config groups) that ``overrides`` sweep over more than one value."""
    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    return [o.key_or_group for o in parsed if o.is_sweep_override() and not o.is_hydra_override()]


def keys_missing_from(subdir: str, swept: list[str], excluded_from_dirname: list[str]) -> list[str]:
    """The keys of ``swept`` that do not reach the folder name template ``subdir``."""
    references = set(_INTERPOLATION.findall(subdir))
    if references & _EVERY_JOB:
        return []
    in_dirname = bool(references & _OVERRIDE_DIRNAME)

    def reaches(key: str) -> bool:
        if in_dirname and key not in excluded_from_dirname:
            return True
        return any(ref == key or ref.startswith(key + ".") or ref in (f"hydra:runtime.choices.{key}",
                                                                        f"hydra.runtime.choices.{key}")
                   for ref in references)

    return [key for key in swept if not reaches(key)]


class DistinctRunDirs(Callback):
    """Refuses a multirun whose swept keys do not all reach its runs' folder names."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = _problem(config.hydra)
        if problem:
            # Hydra turns an exception raised by a callback into a warning and goes on.
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(BAD_INPUT)


def _problem(hydra: DictConfig) -> str | None:
    """Why the multirun configured by ``hydra`` (the ``hydra`` node) must not start, if it must not."""
    sweep = OmegaConf.to_container(hydra.sweep, resolve=False)
    if not str(sweep["dir"]).strip():
        return ("hydra.sweep.dir is empty: the runs' records would land in the working directory; "
                "give a folder, e.g. hydra.sweep.dir=multirun/<name>")
    params = hydra.sweeper.get("params")
    overrides = list(hydra.overrides.task) + [f"{k}={v}" for k, v in (params or {}).items()]
    excluded = list(hydra.job.config.override_dirname.exclude_keys)
    missing = keys_missing_from(str(sweep["subdir"]), swept_keys(overrides), excluded)
    if not missing:
        return None
    example = "-".join(
        f"{key.rsplit('.', 1)[-1]}${{hydra:runtime.choices.{key}}}" if key in hydra.runtime.choices
        else f"{key.rsplit('.', 1)[-1]}${{{key}}}" for key in missing
    )
    return (f"main.py -m sweeps {', '.join(missing)}, which the runs' folder names "
            f"(hydra.sweep.subdir={sweep['subdir']}) do not contain: several runs would share one folder. "
            f"Add {'it' if len(missing) == 1 else 'them'} to the name, e.g. "
            f"'hydra.sweep.subdir={sweep['subdir']}-{example}'")
