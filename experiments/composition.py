"""What Hydra reports itself, before the run starts, answered the project's way: one line, exit 2.

Hydra composes the config, resolves ``hydra.run.dir`` and makes the run directory before
``main.py``'s task function runs, and prints its own failures there (a traceback for most, and
exit 1). :func:`hydra_failures_raised` has Hydra raise them instead (its ``HYDRA_FULL_ERROR``
switch), and :func:`answer` turns each into the line ``main.py`` prints:

* an unknown key (``trainer.batchsize=64``, ``optimizer.build.cc=0.3``, ``lr=0.01``): the
  project's own check of that key (:func:`experiments.preflight.check_config`, on the config
  composed with the key added), which says what was meant;
* any other composition or override-syntax error, an interpolation that does not resolve
  (``${oc.env:UNSET}``, a missing key, a cycle, an unknown resolver), a run directory that
  cannot be made (not writable, a file in the way, a name too long): Hydra's or the system's
  message on one line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError
from .paths import CONF
from .preflight import check_config


@contextlib.contextmanager
def hydra_failures_raised() -> Iterator[None]:
    """Within the body, Hydra raises its failures instead of printing them and exiting with 1."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def answer(error: Exception, overrides: Sequence[str]) -> str | None:
    """The one line (without ``error: ``) for a failure Hydra raised before the run, or ``None``
    for one that is not a bad input (a bug: its traceback is due)."""
    if isinstance(error, ConfigCompositionException) and _unknown_key(error) is not None:
        return unknown_key_answer(_unknown_key(error), overrides) or _flat(error)
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        return _flat(error)
    if isinstance(error, OSError):  # Hydra making the run directory
        where = f" {error.filename}" if error.filename else ""
        return f"cannot make the run directory{where}: {error.strerror or error}"
    return None


def _unknown_key(error: ConfigCompositionException) -> str | None:
    cause = error.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return str(cause.full_key)
    return None


def unknown_key_answer(key: str, overrides: Sequence[str]) -> str | None:
    """The project's message for the override of ``key`` that Hydra found no key for: the config
    is composed with that key added (``+key=value``, as Hydra suggests) and checked as any run's
    is. ``None`` when that composition fails too or the check finds nothing."""
    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    kept = []
    for text, override in zip(overrides, parsed):
        if override.is_hydra_override() or override.is_sweep_override():
            continue  # neither matters for the key's check; a sweep does not compose
        plain = override.input_line.lstrip("+~")
        kept.append(f"+{plain}" if override.key_or_group == key and text == plain else text)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            check_config(compose(config_name="config", overrides=kept))
    except ConfigError as refusal:
        return str(refusal)
    except (HydraException, OmegaConfBaseException):
        return None
    return None


def _flat(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages on one line; the cause's reason added."""
    message = str(error).split("Config search path:")[0]  # Hydra's list of its search path says nothing here
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    cause = error.__cause__
    if cause is not None and str(cause).strip() and str(cause).splitlines()[0] not in text:
        text += f" ({str(cause).splitlines()[0].strip()})"
    return text
