"""Builds a run from its config, trains it, and writes its record.

config -> (checks) -> data -> model -> optimizer (+ schedule) -> loggers -> trainer -> summary.
Everything that can be wrong with the config is checked before the data is touched; the run
directory gets ``summary.json`` with ``status: running`` at the start and ``finished`` or
``failed`` (with the error) at the end.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from optim import ClosureOptimizer

from .checkpoint import load_latest_checkpoint
from .config import ConfigError, Device, check_build_blocks, check_values
from .logging import SUMMARY, Loggers, MetricsSink, RunRecord, WandbSink
from .trainer import Trainer


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
    found = {"torch": torch.__version__}
    for name in ("transformers", "torchvision", "datasets"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    return found


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run must not write into the record of another one."""
    if not resume and (run_dir / SUMMARY).exists():
        raise ConfigError(
            f"{run_dir} already holds a run record; pass trainer.resume=true to continue it, "
            "or choose another hydra.run.dir"
        )


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the run described by ``cfg`` in ``run_dir``; returns its summary."""
    check_values(cfg)
    check_build_blocks(cfg)
    check_run_dir(run_dir, cfg.trainer.resume)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)

    data = instantiate(cfg.dataset.build, _convert_="all")
    # Objects are passed to the partials, not merged into the config (Hydra would convert them).
    model = instantiate(cfg.model.build, _partial_=True, _convert_="all")(spec=data.spec).to(device)
    optimizer = instantiate(cfg.optimizer.build, _partial_=True, _convert_="all")(params=model.parameters())
    if cfg.optimizer.schedule is not None and isinstance(optimizer, ClosureOptimizer):
        raise ConfigError(
            f"optimizer={cfg.optimizer.name} chooses its own step size; set optimizer.schedule=null"
        )

    checkpoint = load_latest_checkpoint(run_dir) if cfg.trainer.resume else None
    record = RunRecord(run_dir, cfg, resume_from_step=checkpoint["trainer"]["step"] if checkpoint else None)
    sinks: list[MetricsSink] = []
    if cfg.logger.wandb is not None:
        sinks.append(WandbSink(cfg.logger.wandb, cfg, run_dir, name=run_dir.name))
    loggers = Loggers(record, sinks)

    trainer_cfg = OmegaConf.to_object(cfg.trainer)
    trainer = Trainer(trainer_cfg, model, optimizer, None, data, loggers, run_dir, device, cfg.seed)
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
        "total_steps": trainer.total_steps, "versions": versions(),
    }
    record.write_summary({"status": "running", **header})
    started = time.perf_counter()
    try:
        summary = {"status": "finished", **header, **trainer.fit()}
    except BaseException as error:  # the record says what happened, then the error propagates
        summary = {"status": "failed", **header, "error": f"{type(error).__name__}: {error}",
                   "steps": trainer.state.step, "final_loss": trainer.state.last_loss}
        raise
    finally:
        summary["wall_time"] = time.perf_counter() - started
        loggers.finish(summary)
    return summary
