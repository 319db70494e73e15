"""Builds a run from its config, trains it, and writes its record.

claim of the run directory -> (config checks) -> (record checks) -> data -> model -> optimizer
-> trainer (its step plan, then the schedule) -> loggers -> summary.

Everything that can be wrong with the config, and with the record in the run directory (another
writer, a record a fresh run would overwrite, a resume that changes the trajectory or has no
usable checkpoint), is checked before anything is built: a refused run writes nothing, and its
claim (a lock file, and the directory if it made it) is undone. Once the data, model and
optimizer are built (for a resume, at once: its record exists already), the run directory gets a
small ``summary.json`` with ``status: running``, and ``finished``, ``failed`` or ``interrupted``
(with the error) at the end, whatever ends the run, SIGTERM and a full disk included.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from optim import ClosureOptimizer

from . import distributed, signals, speed
from .checkpoint import PAYLOAD_KEYS, load_latest_checkpoint
from .config import DecayScope, Device
from .data import DataBundle
from .errors import ConfigError, Interrupted, RunRefused, TrainingDiverged
from .logging import Loggers, WandbSink, check_wandb
from .param_groups import parameter_groups
from .preflight import check_config
from .record import RunRecord, Status, read_summary
from .run_dir import Claim, check_record, claimed, clear_interrupted_writes, refuse_unusable_checkpoints
from .signals import signal_name
from .slurm import TIME_LIMIT_SIGNAL, SlurmJob
from .training import Callback, Trainer, build_trainer


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


def set_tf32(enabled: bool | None) -> None:
    """``trainer.tf32``: TF32 for float32 matmuls and cuDNN, or (``None``) PyTorch's defaults."""
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_in_use() -> dict[str, bool]:
    """The TF32 switches as this run has them, for its summary."""
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


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


def run(cfg: DictConfig, run_dir: Path, *, own_dir: bool = False,
        invocation: Mapping[str, str] | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train the run described by ``cfg`` in ``run_dir``; returns its summary.

    ``own_dir``: the caller made ``run_dir`` for this run (Hydra does), so a refused run removes
    it again. ``invocation``: files that record how the run was started (see :class:`RunRecord`).
    ``callbacks``: hooks into the training loop (tests and fault injections use them).

    Under ``torchrun`` every rank calls this: each joins the process group, trains its shard of
    the data through DistributedDataParallel, and leaves the group at the end (also on failure).
    Only rank 0 claims the run directory and writes the run record, wandb and the checkpoints, in
    rank 0's ``run_dir``. The same holds for the tasks of an ``srun`` step of a SLURM job.

    Under SLURM, a requeued attempt of the job that wrote the record continues it (as with
    ``trainer.resume=true``), and a run stopped by the time limit's warning requeues its job
    (:func:`_requeue_if_cut_by_time_limit`).
    """
    # Rank 0 alone claims the directory, first: it alone writes there, and a refused run (a bad
    # config included) then leaves the directory as it found it.
    claim = claimed(run_dir, own_dir) if distributed.is_main_process() else contextlib.nullcontext()
    with signals.stop_signals_raise(_stopped_before_training), claim as held:
        process = distributed.setup(pick_device(cfg.trainer.device))
        try:
            run_dir = Path(distributed.broadcast_from_main(str(run_dir)))
            job = SlurmJob.current()
            if process.is_main and _continues_requeued_job(run_dir, job):
                cfg.trainer.resume = True
            cfg.trainer.resume = distributed.broadcast_from_main(str(cfg.trainer.resume)) == "True"
            check_config(cfg)
            if cfg.logger.wandb is not None:
                check_wandb(cfg.logger.wandb)
            checkpoint = _agreed_resume_point(cfg, run_dir, process)
            return _run(cfg, run_dir, process, checkpoint, held, invocation, job, callbacks)
        finally:
            distributed.teardown()


def _stopped_before_training(signum: int) -> Interrupted:
    return Interrupted(f"stopped by {signal_name(signum)} before training began in this process; "
                       "start it again with trainer.resume=true", signum)


def _continues_requeued_job(run_dir: Path, job: SlurmJob | None) -> bool:
    """Whether this process is a requeued attempt of the SLURM job whose earlier attempt wrote the
    record in ``run_dir``: SLURM starts the same command again, which must continue that record."""
    if job is None or job.restarts == 0:
        return False
    summary = read_summary(run_dir)
    return summary is not None and summary.slurm_job_id == job.job_id


def _agreed_resume_point(cfg: DictConfig, run_dir: Path,
                         process: distributed.Process) -> dict[str, Any] | None:
    """The checkpoint to continue from (``None``: step 0), after rank 0, which holds the claim,
    has checked the record; every rank refuses together when rank 0 refuses."""
    refusal = ""
    if process.is_main:
        try:
            check_record(run_dir, cfg)
        except RunRefused as error:
            refusal = str(error)
    refusal = distributed.broadcast_from_main(refusal)
    if refusal:
        raise RunRefused(refusal)
    if process.is_main:
        clear_interrupted_writes(run_dir)
    if not cfg.trainer.resume:
        return None
    checkpoint = load_latest_checkpoint(run_dir, PAYLOAD_KEYS)
    if checkpoint is None:
        refuse_unusable_checkpoints(run_dir)
        if process.is_main:  # a resume that silently began again would look like a continuation
            print(f"trainer.resume=true: no checkpoint in {run_dir}, starting from step 0", file=sys.stderr)
    return checkpoint


def _build(cfg: DictConfig, process: distributed.Process) -> tuple[DataBundle, Any, Any, Any]:
    """The data, the model, the module the closure calls (the model or its DDP wrapper) and the
    optimizer."""
    device = process.device
    data = build(cfg, "dataset")
    model = build(cfg, "model", spec=data.spec).to(device)
    forward_model = model  # the trainer saves `model`'s state; the closure calls its DDP wrapper
    if process.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        forward_model = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = build(cfg, "optimizer", params=parameter_groups(model, DecayScope(cfg.optimizer.weight_decay_on)))
    if cfg.trainer.accumulation_sum and isinstance(optimizer, ClosureOptimizer):
        raise ConfigError("trainer.accumulation_sum=true is for plain optimizers: a line search compares "
                          "the mean loss with its gradient")
    return data, model, forward_model, optimizer


def _run(cfg: DictConfig, run_dir: Path, process: distributed.Process, checkpoint: dict[str, Any] | None,
         claim: Claim | None, invocation: Mapping[str, str] | None, job: SlurmJob | None,
         callbacks: Sequence[Callback]) -> dict[str, Any]:
    if cfg.trainer.threads is not None:  # before the data and model: building them uses threads too
        torch.set_num_threads(cfg.trainer.threads)
    set_tf32(cfg.trainer.tf32)
    header = {
        "run_dir": str(run_dir), "optimizer": cfg.optimizer.name, "label": cfg.optimizer.label,
        "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
        "world_size": process.world_size, "threads": torch.get_num_threads(), "versions": versions(),
        "tf32": tf32_in_use(),
    }
    if job is not None:  # which job wrote the record, and how often it was requeued
        header.update(slurm_job_id=job.job_id, slurm_restarts=job.restarts)
    start_step = checkpoint["trainer"]["step"] if checkpoint else 0
    # Only rank 0 writes the record and wandb; the other ranks log nowhere.
    record = RunRecord(run_dir) if process.is_main else None
    loggers = Loggers(record, [])
    trainer: Trainer | None = None
    stopped: Interrupted | None = None
    refused = False
    started = time.perf_counter()
    # A record that exists (a resume) says at once that it runs again, so that nothing that ends
    # this process leaves its old status; a fresh run writes nothing until its data and model are
    # built, so that a missing dataset leaves no trace (the claim removes what it made).
    if record is not None and record.has_summary():
        _begin(record, header, claim)
    try:
        seed_everything(cfg.seed)  # the same seed on every rank: the same initial model
        data, model, forward_model, optimizer = _build(cfg, process)
        schedule = OmegaConf.to_object(cfg.optimizer.schedule) if cfg.optimizer.schedule is not None else None
        trainer = build_trainer(OmegaConf.to_object(cfg.trainer), data, model, optimizer, loggers, run_dir, process,
                                seed=cfg.seed, schedule=schedule, forward_model=forward_model, callbacks=callbacks)
        problem = trainer.plan.resume_problem(checkpoint["trainer"]) if checkpoint is not None else None
        if problem is not None:  # before the record is touched: a refused resume leaves it as it was
            raise RunRefused(f"trainer.resume=true refused: {problem}")
        if record is not None and not record.has_begun:
            _begin(record, header, claim)
        if record is not None:
            # Resuming keeps the rows up to the checkpoint (all of them are logged again otherwise).
            resume_from_step = (checkpoint["trainer"]["step"] if checkpoint else 0) if cfg.trainer.resume else None
            kept, skipped = record.start(cfg, resume_from_step, invocation)
            header.update(_rows_lost(checkpoint, kept, skipped))
            if cfg.logger.wandb is not None:
                loggers.sinks.append(WandbSink(cfg.logger.wandb, cfg, run_dir, name=run_dir.name))
        header["total_steps"] = trainer.plan.total_steps
        if checkpoint is not None:
            trainer.load(checkpoint)
        summary = {"status": Status.finished, **header, **trainer.fit()}
        if process.device.type == "cpu" and process.world_size == 1:
            with signals.stop_signals_ignored():  # the run is complete: a stop now must not undo that
                _note_if_slow(summary, trainer)
    except BaseException as error:  # the record says what happened, then the error propagates
        interrupted = isinstance(error, (Interrupted, KeyboardInterrupt))
        summary = {"status": Status.interrupted if interrupted else Status.failed, **header,
                   "error": f"{type(error).__name__}: {error}"}
        if isinstance(error, TrainingDiverged):  # an outcome of the optimizer, not of the machine:
            summary["diverged"] = True  # run again, it diverges again (run_multiple.py skips it)
        if trainer is not None:
            summary.update(steps=trainer.state.step, final_loss=trainer.state.last_loss,
                           bad_steps=trainer.state.bad_steps)
        stopped = error if isinstance(error, Interrupted) else None
        refused = isinstance(error, RunRefused)
        raise
    finally:
        summary["wall_time"] = time.perf_counter() - started
        if record is None or record.has_begun:  # else nothing was written, and nothing is now
            with signals.stop_signals_ignored():  # the record is written in full, whatever arrives now
                if refused and record is not None:
                    record.restore_summary()
                else:
                    if stopped is not None and job is not None and process.is_main:
                        progressed = trainer is not None and trainer.state.step > start_step
                        _requeue_if_cut_by_time_limit(stopped, summary, job, progressed)
                    loggers.finish(summary)
    return summary


def _note_if_slow(summary: dict[str, Any], trainer: Trainer) -> None:
    """Add a note to the summary of a CPU run that was far slower than its model and data need
    (``experiments/speed.py``), with the timings that show it."""
    checked = speed.check(trainer.forward_backward(), train_seconds=summary["train_time"],
                          steps=summary["steps"], forwards=summary["forwards"])
    if checked is None:
        return
    timings, note = checked
    summary["forward_backward_seconds"] = {str(threads): seconds for threads, seconds in timings.items()}
    if note is not None:
        summary["notes"] = [note]


def _requeue_if_cut_by_time_limit(stopped: Interrupted, summary: dict[str, Any], job: SlurmJob,
                                  progressed: bool) -> None:
    """Under SLURM: a run stopped by the time limit's warning (its checkpoint written) asks SLURM
    to run its job again, which continues from that checkpoint, and is recorded ``requeued``. Only
    an attempt that made progress requeues, so that a time limit too short for even one step ends
    the job instead of requeueing it forever. A SIGTERM needs no requeue from us: SLURM sends it
    when it pre-empts or requeues the job itself (or cancels it); the record says so."""
    if stopped.signum != TIME_LIMIT_SIGNAL:
        summary["error"] += (f"; SLURM job {job.job_id} was pre-empted, requeued or cancelled: a requeued "
                             "job continues from the last checkpoint")
        return
    if not progressed:
        summary["error"] += ("; not requeued: this attempt made no step before the time limit's warning "
                             "(give the job a longer time limit)")
        return
    try:
        job.requeue()
    except OSError as error:
        summary["error"] += f"; not requeued: {error}"
        return
    stopped.requeued = True
    summary["status"] = Status.requeued


def _rows_lost(checkpoint: dict[str, Any] | None, kept: int, skipped: str | None) -> dict[str, Any]:
    """What the summary says (and the console) when ``metrics.jsonl`` lost rows before the
    checkpoint a resume continues from (it was cut, or deleted) or held lines that are not rows."""
    noted: dict[str, Any] = {}
    if skipped is not None:
        print(f"warning: {skipped}", file=sys.stderr)
        noted["metrics_skipped"] = skipped
    expected = checkpoint["trainer"].get("logged_rows") if checkpoint else None  # older checkpoints lack it
    if expected is not None and kept < expected:
        noted["metrics_missing_rows"] = expected - kept
        print(f"warning: metrics.jsonl holds {kept} of the {expected} rows logged before the checkpoint of step "
              f"{checkpoint['trainer']['step']}: {expected - kept} are lost (the summary says so as "
              "metrics_missing_rows); the run goes on from the checkpoint", file=sys.stderr)
    return noted


def _begin(record: RunRecord, header: dict[str, Any], claim: Claim | None) -> None:
    """Write the small ``running`` summary: the record's first write, so that if even it fails
    (a full disk) nothing was written; from then on the directory holds this run's record."""
    record.write_summary({"status": Status.running, **header})
    if claim is not None:
        claim.keep()
