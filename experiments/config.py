"""The structured config schema and the checks that run before any work.

Hydra merges ``conf/`` into these dataclasses, so a misspelt key or a value of the wrong type in
the trainer, logger or top level fails at composition, naming the key. The ``build`` blocks of
the optimizer, model and dataset are free-form (they are keyword arguments of their
``_target_``); :func:`check_build_blocks` checks them against the target's signature before
anything is built.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from .data.tokenizer_names import CHOICES as TOKENIZER_CHOICES


class Precision(enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Device(enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class WandbMode(enum.Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class ScheduleConfig:
    """Cosine decay with linear warm-up (the paper's baselines), stepped every batch:
    factor(t) = (t / W if t <= W else 1) * (final + (1 - final) * 0.5 (1 + cos(pi t / T))),
    W = ceil(warmup_fraction * T)."""

    warmup_fraction: float = 0.1
    final_factor: float = 0.0


@dataclass
class OptimizerConfig:
    name: str = MISSING  # short id, used in run directories
    label: str = MISSING  # the column name in tables, e.g. "ADAM-SaLSa"
    build: Any = MISSING  # {_target_: ..., **kwargs}; the runner passes params=
    schedule: Optional[ScheduleConfig] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    tokenizer: Optional[str] = MISSING  # null for non-text models; text datasets read ${model.tokenizer}
    build: Any = MISSING  # the runner passes spec=


@dataclass
class DatasetConfig:
    name: str = MISSING
    build: Any = MISSING


@dataclass
class TrainerConfig:
    epochs: int = 1
    max_steps: Optional[int] = None  # overrides epochs when set; counts optimizer steps
    batch_size: int = 32  # the micro-batch: a step sees batch_size * accumulation_steps examples
    accumulation_steps: int = 1  # micro-batches whose gradients one optimizer step accumulates
    eval_batch_size: Optional[int] = None  # default: batch_size
    eval_interval: int = 0  # steps between evaluations; 0: at the end of every epoch
    log_interval: int = 1  # steps between metric rows
    precision: Precision = Precision.fp32
    compile: bool = False
    checkpoint_interval: int = 0  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2
    device: Device = Device.auto
    resume: bool = False
    shuffle: bool = True  # the paper's NLP runs kept the stored order (shuffle=false)
    num_workers: int = 0
    loss_smoothing: float = 0.98  # EMA factor of the smoothed training loss
    max_grad_norm: Optional[float] = None  # clip inside the closure (GPT-2 runs: 1.0)
    max_bad_steps: int = 20  # consecutive steps with a non-finite loss or gradient before stopping
    progress: bool = True
    # torch's intra-op CPU threads (torch.set_num_threads), set before anything is built;
    # null keeps torch's default (one per core). Runs side by side on a small machine are much
    # faster with 1: their threads otherwise wait for each other.
    threads: Optional[int] = None


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.online
    project: str = "salsa"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    """The local record is always written; wandb is added when configured."""

    wandb: Optional[WandbConfig] = None


@dataclass
class RunConfig:
    seed: int = 0
    data_dir: str = "data"
    optimizer: OptimizerConfig = MISSING
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_schema() -> None:
    """Make the schema available to ``conf/config.yaml`` as ``base_config``."""
    ConfigStore.instance().store(name="base_config", node=RunConfig)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


def check_values(cfg: DictConfig) -> None:
    """Range checks that types alone do not catch."""
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
    for key in ("eval_interval", "checkpoint_interval", "num_workers"):
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
        if not 0.0 <= schedule.final_factor <= 1.0:
            raise ConfigError(f"optimizer.schedule.final_factor must be in [0, 1], got {schedule.final_factor}")


def check_build_blocks(cfg: DictConfig) -> None:
    """Each ``build`` block names an importable ``_target_`` that accepts its keys.

    ``params`` (optimizer) and ``spec`` (model) are passed by the runner and must not be set.
    Values of keys annotated ``int``/``float``/``bool``/``str`` must have that type.
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
        raise ConfigError(f"{key}: cannot import {dotted!r} ({error})") from error


def _check_arguments(group: str, target: Any, build: dict, passed_by_runner: set[str]) -> None:
    signature = inspect.signature(target)
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: skip the type check, keep the key check
        hints = {}
    for key, value in build.items():
        if key.startswith("_"):
            continue
        if key in passed_by_runner:
            raise ConfigError(f"{group}.build.{key} is passed by the runner; remove it from the config")
        if key not in parameters and not takes_any:
            known = sorted(k for k in parameters if k not in passed_by_runner and k != "self")
            raise ConfigError(
                f"{group}.build.{key}: {build['_target_']} has no parameter {key!r}; known: {known}"
            )
        expected = _scalar_types(hints.get(key))
        if expected and value is not None and not any(_matches(value, t) for t in expected):
            names = " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{group}.build.{key} must be {names}, got {type(value).__name__} {value!r}")


_SCALARS = (int, float, bool, str)


def _scalar_types(hint: Any) -> tuple[type, ...]:
    """The YAML scalar types a parameter accepts, or () when its annotation admits more (then
    the target itself checks the value)."""
    if hint in _SCALARS:
        return (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        scalars = tuple(a for a in options if a in _SCALARS)
        # A tensor alternative (torch's `lr: float | Tensor`) cannot come from a YAML file.
        if scalars and all(a in _SCALARS or a is torch.Tensor for a in options):
            return scalars
    return ()


def _matches(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
