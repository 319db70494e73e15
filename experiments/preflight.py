"""The checks that run before any work: every one that needs no data, model or run directory.

Interpolations that do not resolve, keys the schema (:mod:`experiments.config`) does not know
("did you mean"), values out of range (NaN and inf, an emptied list, a name that makes a path),
the ``build`` blocks' keys and types against their ``_target_``'s signature, and the optimizer's
values, by building it on a stand-in parameter. Each failure is a :class:`ConfigError` naming the
key and what to do. The library knowledge these checks need (which keys mean the step size,
which ranges a seed or a dropout has, whom ``paper_optimizer`` hands its keys to) lives here.
"""

from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

from optim import ClosureOptimizer
from optim.presets import PAPER_PRESETS, paper_optimizer

from .config import RunConfig, dataclass_of
from .data.tokenizer_names import CHOICES as TOKENIZER_CHOICES
from .errors import ConfigError
from .extras import install_hint


# Values that name folders and files (the run directory, the plots): a name, not a path.
PATH_NAMES = ("optimizer.name", "model.name", "dataset.name")
_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*")
MAX_THREADS = 4096  # more than any machine has cores; torch takes an int32


def check_names(cfg: DictConfig) -> None:
    """The values that name the run's folder are names: letters, digits and ``_.+=-``, not
    empty, not starting with a dot (``..`` would climb out of ``outputs/``)."""
    for key in PATH_NAMES:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value is None or OmegaConf.is_missing(cfg, key):
            continue
        check_name(key, value)


def check_name(key: str, value: Any) -> None:
    """``value`` of ``key`` (one of :data:`PATH_NAMES`) is a name (see :func:`check_names`)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > 100:
        raise ConfigError(f"{key}={value!r} names the run's folder: use letters, digits and _.+=- "
                          "(at most 100, not starting with a dot), e.g. optimizer.name=my_salsa")


def check_interpolations(cfg: DictConfig) -> None:
    """Every ``${...}`` resolves (an unset environment variable, a missing key, a cycle, an
    unknown resolver fail here, naming the key, rather than wherever the value is first read).
    ``???`` values are checked where they are needed."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as error:
        raise ConfigError(f"{error.full_key}: a value it needs must be set ({error.msg})") from error
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{getattr(error, 'full_key', '') or 'the config'} does not resolve: {reason}") from error


def check_finite(key: str, value: Any) -> None:
    """NaN and inf pass every comparison-based range check (``nan <= 0`` is false)."""
    if _is_number(value) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")


def check_values(cfg: DictConfig) -> None:
    """Range checks that types alone do not catch."""
    check_names(cfg)
    for key in ("trainer.loss_smoothing", "trainer.max_grad_norm", "optimizer.schedule.warmup_fraction",
                "optimizer.schedule.final_factor"):
        check_finite(key, OmegaConf.select(cfg, key))
    if cfg.seed not in NAMED_RANGES["seed"]:
        raise ConfigError(f"seed must be in {NAMED_RANGES['seed']} (numpy's seeds), got {cfg.seed}")
    trainer = cfg.trainer
    positive = {
        "trainer.batch_size": trainer.batch_size,
        "trainer.accumulation_steps": trainer.accumulation_steps,
        "trainer.epochs": trainer.epochs,
        "trainer.log_interval": trainer.log_interval,
        "trainer.keep_checkpoints": trainer.keep_checkpoints,
        "trainer.max_bad_steps": trainer.max_bad_steps,
    }
    if trainer.max_steps is not None:
        positive["trainer.max_steps"] = trainer.max_steps
    if trainer.eval_batch_size is not None:
        positive["trainer.eval_batch_size"] = trainer.eval_batch_size
    if trainer.threads is not None:
        positive["trainer.threads"] = trainer.threads
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if trainer.threads is not None and trainer.threads > MAX_THREADS:
        raise ConfigError(f"trainer.threads must be at most {MAX_THREADS}, got {trainer.threads}")
    for key in ("eval_interval", "checkpoint_interval", "checkpoint_minutes", "num_workers"):
        if trainer[key] < 0:
            raise ConfigError(f"trainer.{key} must be >= 0, got {trainer[key]}")
    if not 0.0 <= trainer.loss_smoothing < 1.0:
        raise ConfigError(f"trainer.loss_smoothing must be in [0, 1), got {trainer.loss_smoothing}")
    if trainer.max_grad_norm is not None and trainer.max_grad_norm <= 0:
        raise ConfigError(f"trainer.max_grad_norm must be positive, got {trainer.max_grad_norm}")
    schedule = cfg.optimizer.schedule
    if schedule is not None:
        if not 0.0 <= schedule.warmup_fraction <= 1.0:
            raise ConfigError(f"optimizer.schedule.warmup_fraction must be in [0, 1], got {schedule.warmup_fraction}")
        if schedule.warmup_steps is not None and schedule.warmup_steps < 0:
            raise ConfigError(f"optimizer.schedule.warmup_steps must be >= 0, got {schedule.warmup_steps}")
        if not 0.0 <= schedule.final_factor <= 1.0:
            raise ConfigError(f"optimizer.schedule.final_factor must be in [0, 1], got {schedule.final_factor}")


def check_build_blocks(cfg: DictConfig) -> None:
    """Each ``build`` block names an importable ``_target_`` that accepts its keys.

    ``params`` (optimizer) and ``spec`` (model) are passed by the runner and must not be set.
    Values must fit the parameter's annotation (a scalar type, a ``Literal``, a tuple or list of
    them, or a union), or, without one, the type of its default; keys named in
    :data:`NAMED_RANGES` must lie in their range.
    """
    if OmegaConf.is_missing(cfg.model, "tokenizer"):  # a text model that leaves the choice to the user
        raise ConfigError(f"model.tokenizer must be set for model={cfg.model.name}: {TOKENIZER_CHOICES}")
    for group, passed_by_runner in (("optimizer", {"params"}), ("model", {"spec"}), ("dataset", set())):
        try:
            build = OmegaConf.to_container(cfg[group].build, resolve=True, throw_on_missing=True)
        except (MissingMandatoryValue, InterpolationToMissingValueError) as error:
            raise ConfigError(f"{group}.build: a value it needs must be set ({error.msg})") from error
        if not isinstance(build, dict) or "_target_" not in build:
            raise ConfigError(f"{group}.build must be a mapping with a _target_")
        target = _import(f"{group}.build._target_", build["_target_"])
        _check_arguments(group, target, build, passed_by_runner)


def _import(key: str, dotted: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{key}: cannot import {dotted!r} ({error}){install_hint(error)}") from error


def _check_arguments(group: str, target: Any, build: dict, passed_by_runner: set[str]) -> None:
    parameters = inspect.signature(target).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    receiver = _receiver_of_extra_keys(target, build)
    for key, value in build.items():
        if key.startswith("_"):
            continue
        name = f"{group}.build.{key}"
        if key in passed_by_runner:
            raise ConfigError(f"{name} is passed by the runner; remove it from the config")
        if key in parameters and parameters[key].kind is not inspect.Parameter.VAR_KEYWORD:
            owner = target
        elif receiver is not None:
            owner = receiver
        elif takes_any:
            continue  # handed on to something unknown, which checks it
        else:
            known = sorted(k for k in parameters if k not in passed_by_runner and k != "self")
            raise ConfigError(f"{name}: {build['_target_']} has no parameter {key!r}; "
                              f"{_did_you_mean(key, known, f'{group}.build.')}known: {known}")
        owner_parameters = inspect.signature(owner).parameters
        if key not in owner_parameters:
            known = sorted(k for k in owner_parameters if k not in passed_by_runner and k != "self")
            raise ConfigError(f"{name}: {owner.__qualname__} (which {build['_target_']} passes it to) "
                              f"has no parameter {key!r}; {_did_you_mean(key, known, f'{group}.build.')}"
                              f"known: {known}")
        default = owner_parameters[key].default
        allowed = _expected_instead(value, _hints(owner).get(key), default)
        if allowed is None:
            allowed = _out_of_kind(value, default)
        if allowed is None and key in NAMED_RANGES and _is_number(value) and value not in NAMED_RANGES[key]:
            allowed = f"in {NAMED_RANGES[key]}"
        if allowed is not None:
            raise ConfigError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")


def _out_of_kind(value: Any, default: Any) -> str | None:
    """What a value of the right type still must be: finite (in a list too), unless the default
    is infinite itself (Prodigy's ``growth_rate``: unbounded); not empty where the default is a
    non-empty list (``model.build.channels``)."""
    numbers = value if isinstance(value, (list, tuple)) else [value]
    default_infinite = _is_number(default) and math.isinf(default)
    if any(_is_number(v) and (math.isnan(v) or (math.isinf(v) and not default_infinite)) for v in numbers):
        return "finite"
    if isinstance(value, (list, tuple)) and not value and isinstance(default, (list, tuple)) and default:
        return f"a non-empty list (default {list(default)})"
    return None


def _receiver_of_extra_keys(target: Any, build: dict) -> Any:
    """What a target's ``**kwargs`` go to, when it is known: ``paper_optimizer`` hands them to its
    preset's class, whose signature then checks them (so its ``preset`` must be one it knows)."""
    if target is not paper_optimizer:
        return None
    if build.get("preset") not in PAPER_PRESETS:
        raise ConfigError(f"optimizer.build.preset must be {_one_of([repr(p) for p in PAPER_PRESETS])}, "
                          f"got {build.get('preset')!r}")
    return PAPER_PRESETS[build["preset"]][0]


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: the defaults stand in for them
        return {}


@dataclass(frozen=True)
class Interval:
    """A range of numbers; ``open_low``/``open_high`` leave out an end."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = (str(int(x)) if float(x).is_integer() else f"{x:g}" for x in (self.low, self.high))
        return f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"


# A build key of one of these names means the same thing in every builder (one name for one
# idea), so its range is checked here, before anything is built, rather than by the library that
# receives it (numpy's seeds, scikit-learn's split, torch's dropout), in the library's words.
NAMED_RANGES = {
    "seed": Interval(0, 2**32 - 1),
    "val_fraction": Interval(0.0, 1.0, open_low=True, open_high=True),
    "dropout": Interval(0.0, 1.0),
}

_SCALARS = (int, float, bool, str)


def _expected_instead(value: Any, hint: Any, default: Any = inspect.Parameter.empty) -> str | None:
    """What ``value`` must be instead ("float", "'adam' or 'sgd'"), or ``None`` when it fits
    ``hint`` (or when the hint admits more than a YAML value can be; then the target checks it).
    Without a hint, the default's type stands in: a bool, a number, a string, or a list of so many
    numbers."""
    if hint is None:
        hint = _hint_from_default(default)
    if hint is None or hint is Any:
        return None
    if value is None:  # often an interpolation left unset (${model.tokenizer}): the target says what it needs
        return None
    return None if _fits(value, hint) is not False else _describe(hint)


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; ``None`` when the hint is beyond what can be judged here."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return _matches(value, hint)
    if origin is typing.Literal:
        return any(type(value) is type(option) and value == option for option in args)
    if origin in (typing.Union, types.UnionType):
        # A tensor alternative (torch's `lr: float | Tensor`) cannot come from a YAML file.
        verdicts = [_fits(value, a) for a in args if a is not type(None) and a is not torch.Tensor]
        return True if any(v is True for v in verdicts) else (None if None in verdicts else False)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            verdicts = [_fits(v, a) for v, a in zip(value, args)]
        else:
            verdicts = [_fits(v, args[0]) for v in value] if args else []
        return False if False in verdicts else (None if None in verdicts else True)
    return None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return hint.__name__
    if origin is typing.Literal:
        return _one_of([repr(a) for a in args])
    if origin in (typing.Union, types.UnionType):
        return _one_of([_describe(a) for a in args if a is not torch.Tensor])
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _one_of(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _hint_from_default(default: Any) -> Any:
    if isinstance(default, bool):
        return bool
    if _is_number(default):
        return float  # any number: an int default does not forbid a fraction
    if isinstance(default, str):
        return str
    if isinstance(default, tuple) and default and all(_is_number(d) for d in default):
        return tuple[(float,) * len(default)]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(value: Any, expected: type) -> bool:
    if expected is float:
        return _is_number(value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


# What users of other templates call the learning rate, and the keys it is here, in order: a
# torch optimizer's, a line search's first trial step, L4's fraction of the predicted decrease.
LEARNING_RATE_NAMES = ("lr", "learning_rate")
STEP_SIZE_KEYS = ("lr", "init_step_size", "alpha")


def _did_you_mean(key: str, known: list[str], prefix: str) -> str:
    step_size = [k for k in STEP_SIZE_KEYS if k in known] if key in LEARNING_RATE_NAMES else []
    close = step_size or difflib.get_close_matches(key, known, n=1)
    return f"did you mean {prefix}{close[0]}? " if close else ""


def check_known_keys(cfg: DictConfig) -> None:
    """Every key outside the free-form ``build`` blocks is in the schema. Hydra lets ``+key=value``
    add a key to a structured config (its own advice after a misspelt one), which would otherwise
    be ignored silently; ``main.py`` sends a key Hydra refuses here too, for this message."""
    _check_known(cfg, RunConfig, "", _step_size_key(cfg))


def _step_size_key(cfg: DictConfig) -> str | None:
    """The key that sets this optimizer's step size (``optimizer.build.lr`` for Adam,
    ``optimizer.build.init_step_size`` for SaLSA), for a user who typed ``lr=``."""
    try:
        build = OmegaConf.to_container(cfg.optimizer.build, resolve=True)
        target = _import("optimizer.build._target_", build["_target_"])
        owner = _receiver_of_extra_keys(target, build) or target
        parameters = inspect.signature(owner).parameters
    except (ConfigError, OmegaConfBaseException, KeyError, TypeError, ValueError):
        return None
    return next((f"optimizer.build.{key}" for key in STEP_SIZE_KEYS if key in parameters), None)


def _check_known(node: DictConfig, schema: type, prefix: str, step_size_key: str | None) -> None:
    fields = typing.get_type_hints(schema)
    for key, child in node.items_ex(resolve=False):  # unresolved: a ??? value is checked elsewhere
        name = f"{prefix}{key}"
        if key not in fields:
            hint = _did_you_mean(str(key), list(fields), prefix)
            if key in LEARNING_RATE_NAMES and prefix in ("", "optimizer.") and step_size_key:
                hint = f"the optimizer's step size is {step_size_key}; "
            raise ConfigError(
                f"{name}={child} is not a setting; {hint}"
                f"{prefix.rstrip('.') or 'the top level'} has: {', '.join(fields)}"
            )
        nested = dataclass_of(fields[key])
        if nested is not None and isinstance(child, DictConfig) and child != None:  # noqa: E711 (a None node)
            _check_known(child, nested, f"{name}.", step_size_key)


def check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer on a one-element stand-in parameter, so that a value its constructor
    rejects fails now, before the data and the model are built. The message names the key whose
    removal lets it build, and quotes the library's reason."""
    build = OmegaConf.to_container(cfg.optimizer.build, resolve=True)
    try:
        optimizer = _construct(build)
    except Exception as error:  # whatever the library raises for a value it rejects
        reason = str(error) if isinstance(error, (ValueError, TypeError)) else f"{type(error).__name__}: {error}"
        keys = [key for key in build if not key.startswith("_")]
        culprit = next((key for key in keys if _builds(build, without=key)), None)
        where = f"optimizer.build.{culprit}={build[culprit]!r}" if culprit else "optimizer.build"
        raise ConfigError(f"{where} is rejected by {build['_target_']}: {reason}") from error
    if cfg.optimizer.schedule is not None and isinstance(optimizer, ClosureOptimizer):
        raise ConfigError(
            f"optimizer={cfg.optimizer.name} chooses its own step size; set optimizer.schedule=null"
        )


def _construct(build: dict) -> torch.optim.Optimizer:
    return instantiate(build, _partial_=True, _convert_="all")(params=[torch.nn.Parameter(torch.zeros(1))])


def _builds(build: dict, without: str) -> bool:
    try:
        _construct({k: v for k, v in build.items() if k != without})
    except Exception:
        return False
    return True


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data, model or run directory, in the order a user fixes them:
    interpolations, unknown keys, values, the build blocks' keys and types, the optimizer's values."""
    check_interpolations(cfg)
    check_known_keys(cfg)
    check_values(cfg)
    check_build_blocks(cfg)
    check_optimizer(cfg)
