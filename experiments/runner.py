"""Builds a run from its config, trains it, and writes its record.

config -> (checks) -> data -> model -> optimizer (+ schedule) -> loggers -> trainer -> summary.
Everything that can be wrong with the config is checked before the data is touched; the run
directory gets ``summary.json`` with ``status: running`` at the start and ``finished`` or
``failed`` (with the error) at the end.
"""

from __future__ import annotations

import importlib.metadata
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from optim import ClosureOptimizer

from . import distributed
from .checkpoint import load_latest_checkpoint
from .config import ConfigError, Device, check_build_blocks, check_values
from .logging import SUMMARY, Loggers, MetricsSink, RunRecord, WandbSink, check_wandb
from .param_groups import DecayScope, parameter_groups
from .trainer import Interrupted, Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: Device) -> torch.device:
    if choice == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu")
    if choice == Device.cpu or (choice == Device.auto and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def cosine_warmup(warmup_fraction: float, final_factor: float, total_steps: int):
    """The paper's schedule as a LambdaLR factor: linear warm-up from 0 over
    W = ceil(warmup_fraction * T) steps times a cosine from 1 to ``final_factor`` over T."""
    warmup = math.ceil(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        cosine = final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        return cosine * (step / warmup if step <= warmup and warmup else 1.0)

    return factor


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (read from metadata: nothing is imported)."""
    found = {}
    for name in ("torch", "transformers", "torchvision", "datasets", "salsa-linesearch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def build(cfg: DictConfig, group: str, **objects: Any) -> Any:
    """Call the ``_target_`` of ``cfg.<group>.build`` with its keys and ``objects``.

    The objects are passed to a partial rather than merged into the config (Hydra would convert
    them); a value the target rejects becomes a :class:`ConfigError` naming the group.
    """
    factory = instantiate(cfg[group].build, _partial_=True, _convert_="all")
    try:
        return factory(**objects)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{group}.build: {error}") from error


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run must not write into the record of another one."""
    if not resume and (run_dir / SUMMARY).exists():
        raise ConfigError(
            f"{run_dir} already holds a run record; pass trainer.resume=true to continue it, "
            "or choose another hydra.run.dir"
        )


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the run described by ``cfg`` in ``run_dir``; returns its summary.

    Under ``torchrun`` every rank calls this: each joins the process group, trains its shard of
    the data through DistributedDataParallel, and leaves the group at the end (also on failure).
    Only rank 0 writes the run record, wandb and the checkpoints, in rank 0's ``run_dir``.
    """
    process = distributed.setup(pick_device(cfg.trainer.device))
    try:
        return _run(cfg, Path(distributed.broadcast_from_main(str(run_dir))), process)
    finally:
        distributed.teardown()


def _run(cfg: DictConfig, run_dir: Path, process: distributed.Process) -> dict[str, Any]:
    check_values(cfg)
    if cfg.trainer.threads is not None:  # before the data and model: building them uses threads too
        torch.set_num_threads(cfg.trainer.threads)
    check_build_blocks(cfg)
    check_run_dir(run_dir, cfg.trainer.resume)
    if cfg.logger.wandb is not None:
        check_wandb(cfg.logger.wandb)
    distributed.barrier()  # every rank has checked run_dir before rank 0 writes to it
    device = process.device
    seed_everything(cfg.seed)  # the same seed on every rank: the same initial model

    data = build(cfg, "dataset")
    model = build(cfg, "model", spec=data.spec).to(device)
    forward_model = model  # the trainer saves `model`'s state; the closure calls its DDP wrapper
    if process.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        forward_model = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = build(cfg, "optimizer", params=parameter_groups(model, DecayScope(cfg.optimizer.weight_decay_on)))
    if cfg.optimizer.schedule is not None and isinstance(optimizer, ClosureOptimizer):
        raise ConfigError(
            f"optimizer={cfg.optimizer.name} chooses its own step size; set optimizer.schedule=null"
        )

    checkpoint = load_latest_checkpoint(run_dir) if cfg.trainer.resume else None
    # Resuming keeps the rows up to the checkpoint (all of them are logged again otherwise).
    resume_from_step = (checkpoint["trainer"]["step"] if checkpoint else 0) if cfg.trainer.resume else None
    # Only rank 0 writes the record and wandb; the other ranks log nowhere.
    record = RunRecord(run_dir, cfg, resume_from_step=resume_from_step) if process.is_main else None
    sinks: list[MetricsSink] = []
    if cfg.logger.wandb is not None and process.is_main:
        sinks.append(WandbSink(cfg.logger.wandb, cfg, run_dir, name=run_dir.name))
    loggers = Loggers(record, sinks)

    trainer_cfg = OmegaConf.to_object(cfg.trainer)
    trainer = Trainer(trainer_cfg, model, optimizer, None, data, loggers, run_dir, device, cfg.seed,
                      forward_model=forward_model, rank=process.rank, world_size=process.world_size)
    if cfg.optimizer.schedule is not None:
        schedule = cfg.optimizer.schedule
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_warmup(schedule.warmup_fraction, schedule.final_factor, trainer.total_steps)
        )
    if checkpoint is not None:
        trainer.load(checkpoint)

    header = {
        "run_dir": str(run_dir), "optimizer": cfg.optimizer.name, "label": cfg.optimizer.label,
        "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
        "total_steps": trainer.total_steps, "world_size": process.world_size, "versions": versions(),
    }
    if record is not None:
        record.write_summary({"status": "running", **header})
    started = time.perf_counter()
    try:
        summary = {"status": "finished", **header, **trainer.fit()}
    except BaseException as error:  # the record says what happened, then the error propagates
        summary = {"status": "interrupted" if isinstance(error, Interrupted) else "failed", **header,
                   "error": f"{type(error).__name__}: {error}", "steps": trainer.state.step,
                   "final_loss": trainer.state.last_loss, "bad_steps": trainer.state.bad_steps}
        raise
    finally:
        summary["wall_time"] = time.perf_counter() - started
        loggers.finish(summary)
    return summary
