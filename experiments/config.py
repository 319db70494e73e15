"""The structured config schema: what every key outside the ``build`` blocks is, and its type.

Hydra merges ``conf/`` into these dataclasses, so a misspelt key or a value of the wrong type in
the trainer, logger or top level fails at composition, naming the key. The ``build`` blocks of
the optimizer, model and dataset are free-form (they are keyword arguments of their
``_target_``); :mod:`experiments.preflight` checks them, and every value, before anything is
built. Imports neither torch nor (until :func:`register_schema`) Hydra.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


class Precision(enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # float16 autocast without a GradScaler: the GPT-2 fork's AdamW run (train_old.py)


class Device(enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class WandbMode(enum.Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class DecayScope(enum.Enum):
    """``all``: every parameter decays (one param group). ``linear``: nanoGPT's
    ``configure_optimizers``: only the weights of linear layers decay; embeddings (an output layer
    tied to the token embedding included), normalisation weights and biases form a second group
    with ``weight_decay`` 0 (:mod:`experiments.param_groups`)."""

    all = "all"
    linear = "linear"


@dataclass
class ScheduleConfig:
    """Cosine decay with linear warm-up (the paper's baselines), stepped every batch:
    factor(t) = (t / W if t <= W else 1) * (final + (1 - final) * 0.5 (1 + cos(pi s)))
    with W = ceil(warmup_fraction * T) (or ``warmup_steps``) and s = t / T, the paper's NLP
    schedule, or, with ``cosine_after_warmup``, s = (t - W) / (T - W) from W on (nanoGPT's
    ``get_lr``: the cosine starts where the warm-up ends)."""

    warmup_fraction: float = 0.1
    warmup_steps: Optional[int] = None  # a fixed W (nanoGPT's warmup_iters); overrides warmup_fraction
    cosine_after_warmup: bool = False
    final_factor: float = 0.0


@dataclass
class OptimizerConfig:
    name: str = MISSING  # short id, used in run directories
    label: str = MISSING  # the column name in tables, e.g. "ADAM-SaLSa"
    build: Any = MISSING  # {_target_: ..., **kwargs}; the runner passes params=
    schedule: Optional[ScheduleConfig] = None
    weight_decay_on: DecayScope = DecayScope.all  # linear: nanoGPT's groups (linear weights only)


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
    # true: the step's gradient is the sum of the micro-batch gradients, not their mean (the GPT-2
    # fork's train_old.py never divided the loss by the accumulation steps), and the clip acts on
    # that sum; the logged loss stays the mean. Plain PyTorch optimizers only.
    accumulation_sum: bool = False
    eval_batch_size: Optional[int] = None  # default: batch_size
    eval_interval: int = 0  # steps between evaluations; 0: at the end of every epoch
    log_interval: int = 1  # steps between metric rows
    precision: Precision = Precision.fp32
    # TF32 for float32 matmuls and cuDNN (torch.backends.*.allow_tf32), set before the model is
    # built: true or false sets both; null keeps PyTorch's defaults (matmuls off, cuDNN on). The
    # GPT-2 fork set both on.
    tf32: Optional[bool] = None
    compile: bool = False
    checkpoint_interval: int = 0  # steps between checkpoints; 0: only at the end
    # Also a checkpoint once this many minutes of the run passed since the last one (0: never),
    # so that a kill loses minutes of a long run whatever its step interval.
    checkpoint_minutes: float = 10.0
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
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=RunConfig)


def dataclass_of(hint: Any) -> type | None:
    """The dataclass that ``hint`` is, or that an ``Optional[...]`` of it holds."""
    candidates = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)
