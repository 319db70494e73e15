"""One closure-based training loop for every optimizer.

Each step builds ``closure(backwards: bool = False)`` over the current batch and calls
``optimizer.step(closure)``: the line searches evaluate it as often as they need; PyTorch's own
optimizers get it wrapped so that it runs the forward and backward they expect. With
``accumulation_steps`` > 1 a step accumulates the gradients of that many micro-batches (DDP
all-reduces only on the last) and hands a line search the loss, the RNG state of its first
forward and a closure of the same loss over all micro-batches for the trials. The loop logs a
metrics row per step, evaluates on the validation split, and checkpoints atomically so that
``trainer.resume=true`` continues the same trajectory. Optimizers with ``train()``/``eval()``
(Schedule-Free) train on one point and evaluate and checkpoint another; the loop switches them.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from optim import ClosureOptimizer, RNGSnapshot

from .checkpoint import capture_rng, restore_rng, save_checkpoint
from .config import Precision, TrainerConfig
from .data import DataBundle
from .data.collate import InMemoryPairs
from .distributed import max_over_ranks, mean_over_ranks
from .errors import ConfigError, Interrupted, TrainingDiverged
from .signals import on_stop_signals, signal_name

Batch = dict[str, Tensor]
from .logging import Loggers


class EpochSampler(Sampler[list[int]]):
    """The batches of one epoch, from index position ``start``: a permutation seeded by
    (seed, epoch) when shuffling, the stored order otherwise, cut into ``batch_size`` slices (the
    last one may be short). Resuming mid-epoch needs only the position.

    With ``world_size`` ranks, every rank builds the same order, pads it by wrap-around to a
    multiple of ``world_size`` and takes every ``world_size``-th index from ``rank`` on: disjoint
    shards of equal length, so all ranks take the same number of steps. ``start`` counts within
    this rank's shard.

    It is a batch sampler because slicing the order is cheaper than having ``DataLoader`` collect
    a batch one index at a time, which on the small default model cost ~5 % of a step."""

    def __init__(self, size: int, seed: int, epoch: int, start: int, shuffle: bool,
                 rank: int = 0, world_size: int = 1, batch_size: int = 1) -> None:
        self.size, self.seed, self.epoch, self.start, self.shuffle = size, seed, epoch, start, shuffle
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.shard_size = math.ceil(size / world_size)

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def _shard(self) -> list[int]:
        order = self._order()
        padded = [order[i % self.size] for i in range(self.shard_size * self.world_size)]
        return padded[self.rank :: self.world_size]

    def indices(self) -> list[int]:
        """This rank's indices from ``start`` to the end of the epoch."""
        return self._shard()[self.start :]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.indices()
        return (indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size))

    def __len__(self) -> int:
        return math.ceil((self.shard_size - self.start) / self.batch_size)


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    loss_ema: float = 0.0
    loss_ema_weight: float = 0.0  # 1 - beta^n, for the bias correction of the EMA
    forwards: int = 0  # for optimizers without diagnostics: one per step
    last_loss: float = math.nan
    elapsed: float = 0.0  # wall time of the steps so far, across resumes
    best_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1
    last_checkpoint_step: int = -1
    bad_steps: int = 0  # steps whose loss or gradient was not finite (skipped)
    consecutive_bad_steps: int = 0
    logged_rows: int = 0  # metrics rows logged so far: a resume tells rows lost from metrics.jsonl
    # What the position (epoch, batch_in_epoch) counts in: the training examples, the ranks and the
    # examples per step of each. A resume mid-epoch continues the same data stream only when they
    # are equal; at an epoch's start, only the examples must be.
    stream: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=lambda: {"data": 0.0, "step": 0.0, "bookkeeping": 0.0, "eval": 0.0})

    def smoothed_loss(self) -> float:
        return self.loss_ema / self.loss_ema_weight if self.loss_ema_weight else math.nan


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over examples (classification) or tokens (language modelling)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


class Trainer:
    """Trains ``model`` with ``optimizer`` on ``data`` as ``cfg`` says, logging to ``loggers``."""

    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        data: DataBundle,
        loggers: Loggers,
        run_dir: Path,
        device: torch.device,
        seed: int,
        *,
        forward_model: nn.Module | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """``model`` is the module whose state is trained and saved; ``forward_model`` (default:
        ``model``) is what the closure and evaluation call, e.g. its DistributedDataParallel
        wrapper. ``rank``/``world_size``: this process's shard of the training data; only rank 0
        writes checkpoints."""
        self.cfg = cfg
        self.model = model
        forward_model = model if forward_model is None else forward_model
        self.forward_model = torch.compile(forward_model) if cfg.compile else forward_model
        self.rank, self.world_size = rank, world_size
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = data
        self.loggers = loggers
        self.run_dir = run_dir
        self.device = device
        self.seed = seed
        self.state = TrainState()
        self.examples_per_step = cfg.batch_size * cfg.accumulation_steps  # per rank
        if not len(data.train):
            raise ConfigError("the training split is empty: there is nothing to train on")
        self.steps_per_epoch = math.ceil(math.ceil(len(data.train) / world_size) / self.examples_per_step)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.language_modeling = data.spec.task == "language_modeling"
        self._stop_signal = 0  # the first stop signal received while training (0: none)
        self._last_checkpoint_time = time.monotonic()  # for trainer.checkpoint_minutes
        self.state.stream = self.data_stream()

    def data_stream(self) -> dict[str, int]:
        """What the position in an epoch counts in (see :attr:`TrainState.stream`)."""
        return {"train_examples": len(self.data.train), "ranks": self.world_size,
                "examples_per_step": self.examples_per_step}

    def resume_problem(self, saved: dict[str, Any]) -> str | None:
        """Why the run cannot continue from the trainer state ``saved`` (a checkpoint's) along the
        same data stream, or ``None`` when it can: the stream it counted in changed, or its place
        lies past the end of an epoch as the epoch is now (a loop there would take no step)."""
        before, now = saved.get("stream") or {}, self.data_stream()
        # At an epoch's start the place means the same in any split of the epoch: a torchrun run
        # may be continued by one process (only the examples themselves must be the same).
        compared = now if saved["batch_in_epoch"] else {"train_examples": now["train_examples"]}
        changed = [f"{key} {before[key]} -> {now[key]}" for key in compared if key in before and before[key] != now[key]]
        if changed:
            return (f"the checkpoint of step {saved['step']} was taken in another data stream ({', '.join(changed)}): "
                    "its place in the epoch means other examples now. Resume with the same data, number of "
                    "processes and batch size, or start a new run in another directory")
        if saved["batch_in_epoch"] >= self.steps_per_epoch:
            return (f"the checkpoint of step {saved['step']} lies at step {saved['batch_in_epoch']} of epoch "
                    f"{saved['epoch']}, past the end of an epoch as it is now ({self.steps_per_epoch} steps): the "
                    "training data, the number of processes or the batch size changed. Resume as the run was "
                    "started, or start a new run in another directory")
        return None

    # -- state ------------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "trainer": asdict(self.state),
            "rng": capture_rng(),
        }

    def load(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint payload (as written by :meth:`checkpoint_payload`), which
        :meth:`resume_problem` has accepted."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload["scheduler"] is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.state = TrainState(**{**payload["trainer"], "stream": self.data_stream()})
        restore_rng(payload["rng"])

    def _checkpoint(self) -> None:
        """Save the run; call it with the evaluation weights in place (:meth:`_evaluation_weights`),
        or, for a timed checkpoint, with the training weights: the optimizer's state records which
        (Schedule-Free's ``train_mode``), and a resume switches to training weights either way."""
        self._last_checkpoint_time = time.monotonic()
        self.state.last_checkpoint_step = self.state.step
        self.loggers.flush()  # a resume drops the rows after the checkpoint, and only those
        if self.rank == 0:  # the ranks hold the same state; every rank reads it on resume
            payload = self.checkpoint_payload()
            save_checkpoint(self.run_dir, self.state.step, payload, self.cfg.keep_checkpoints)

    def forward_backward(self) -> Callable[[], None]:
        """One forward and backward on a training batch, the gradients dropped after: the least a
        step costs (``experiments/speed.py`` times it once training is over)."""
        size = min(self.cfg.batch_size, len(self.data.train))
        closure = self.make_closure(self._to_device(self.data.collate([self.data.train[i] for i in range(size)])))

        def work() -> None:
            closure(backwards=True)
            self.optimizer.zero_grad(set_to_none=True)

        return work

    # -- one step ---------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == Precision.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.cfg.precision == Precision.fp16:  # no GradScaler: the fork's train_old.py had it commented out
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def make_closure(self, batch: dict[str, Tensor]) -> Callable[..., Tensor]:
        """``closure(backwards=False)``: the loss on ``batch``; with ``backwards``, also its
        gradient (clipped to ``max_grad_norm`` when set, as the GPT-2 runs did)."""

        def closure(backwards: bool = False) -> Tensor:
            with self._autocast():
                loss = cross_entropy(self.forward_model(batch), batch["labels"])
            if backwards:
                loss.backward()
                self._clip_gradients()
            return loss

        return closure

    def _clip_gradients(self) -> None:
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)

    def _targets(self, batch: Batch) -> int:
        """How many targets the mean loss of ``batch`` averages over (ignored tokens excluded)."""
        labels = batch["labels"]
        return int((labels != -100).sum()) if self.language_modeling else labels.numel()

    def optimizer_step(self, closure: Callable[..., Tensor]) -> tuple[float, bool]:
        """One optimizer step on one batch; returns the loss and whether the step was skipped
        because the loss or the gradient was not finite."""
        if isinstance(self.optimizer, ClosureOptimizer):
            return self._line_search_step(closure)
        return self._plain_step(closure(backwards=True))

    def accumulated_step(self, micro_batches: list[Batch], weights: list[float]) -> tuple[float, bool]:
        """One optimizer step on several micro-batches (returns what :meth:`optimizer_step` does).

        The step's loss is ``sum_i w_i L_i``, ``w_i`` the share of the step's targets in
        micro-batch ``i``: the mean over all of them, as one batch of the same examples gives.
        Its gradient is accumulated one micro-batch at a time (DDP all-reduces on the last one
        only) and then clipped as a one-batch step's is. A line search gets that loss and the RNG
        state of the first forward, and evaluates its trials on all micro-batches again."""
        no_sync = getattr(self.forward_model, "no_sync", None)  # DDP's, also through torch.compile
        rng = RNGSnapshot(self.model.parameters())  # before the first forward: trials replay it
        parts = []
        for i, (batch, weight) in enumerate(zip(micro_batches, weights)):
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with self._autocast():
                    part = weight * cross_entropy(self.forward_model(batch), batch["labels"])
                part.backward()
            parts.append(part.detach())
        loss = torch.stack(parts).sum()  # summed as the trials sum: a trial at eta = 0 gives L0
        if self.cfg.accumulation_sum:  # the gradient of the summed micro-batch losses, then the clip
            torch._foreach_mul_([p.grad for p in self.model.parameters() if p.grad is not None],
                                float(len(micro_batches)))
        self._clip_gradients()
        if not isinstance(self.optimizer, ClosureOptimizer):
            return self._plain_step(loss)

        def trial_loss(backwards: bool = False) -> Tensor:  # the optimizer calls it under no_grad
            with self._autocast():
                parts = [w * cross_entropy(self.forward_model(b), b["labels"]) for b, w in zip(micro_batches, weights)]
            return torch.stack(parts).sum()

        return self._line_search_step(trial_loss, loss=loss, rng=rng)

    def _line_search_step(self, closure: Callable[..., Tensor], **given: Any) -> tuple[float, bool]:
        skipped_before = self.optimizer.diagnostics.n_skipped
        self.optimizer.step(closure, **given)
        diagnostics = self.optimizer.diagnostics  # optim.Diagnostics
        return float(diagnostics.loss), diagnostics.n_skipped > skipped_before  # L0, averaged over ranks

    def _plain_step(self, loss: Tensor) -> tuple[float, bool]:
        """A PyTorch optimizer's step from the gradients in ``.grad`` for ``loss``.

        They have no skip of their own: a non-finite loss or gradient must not reach them, or it
        lands in the parameters and the moments."""
        loss = mean_over_ranks(loss.detach())  # the same loss on every rank
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.stack(torch._foreach_norm(grads)).norm() if grads else torch.zeros(())
        finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        return loss.item(), not finite

    def _step_size_and_forwards(self) -> tuple[float, int]:
        """The step size (a line search's accepted eta, the scheduled lr, or d * lr) and the forwards
        so far (a line search counts its trials; other optimizers make one per step)."""
        diagnostics = getattr(self.optimizer, "diagnostics", None)
        if diagnostics is not None:
            return float(diagnostics.step_size), int(diagnostics.n_forwards)
        group = self.optimizer.param_groups[0]
        # Prodigy and D-Adaptation step by d * lr, their lr being a multiplier (1 by default).
        return float(group["lr"] * group.get("d", 1.0)), self.state.forwards

    # -- evaluation -------------------------------------------------------------------------
    def _use_weights(self, mode: str) -> None:
        """Call the optimizer's ``train()`` or ``eval()`` (``mode``), when it has them.

        Schedule-Free optimizers keep the parameters at an interpolation y while training and move
        them to the averaged weights x for evaluation, and must be in eval mode when checkpointed
        (their README). Other optimizers have neither method."""
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    @contextlib.contextmanager
    def _evaluation_weights(self) -> Iterator[None]:
        """The evaluation weights in place for the body, the training point again after it.

        A checkpoint therefore holds the evaluation weights with the optimizer in eval mode, and
        :meth:`fit` switches back to train mode on resume: the same ``x -> y`` conversion as after
        the checkpoint of the uninterrupted run, so both continue from the same parameters."""
        self._use_weights("eval")
        try:
            yield
        finally:
            self._use_weights("train")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy (classification) or perplexity (language modelling) on ``val``.

        Under DDP every rank evaluates the whole validation split (no sharding, so no reduction
        and identical numbers on every rank); only rank 0's loggers write them."""
        self.model.eval()
        loader = DataLoader(
            self.data.val,
            batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
            collate_fn=self.data.collate,
            num_workers=self.cfg.num_workers,
            pin_memory=self._pin_memory,
        )
        total_loss, correct, count = 0.0, 0, 0
        for batch in loader:
            batch = self._to_device(batch)
            with self._autocast():
                logits = self.forward_model(batch)
            labels = batch["labels"]
            n = int((labels != -100).sum()) if self.language_modeling else labels.numel()
            total_loss += cross_entropy(logits, labels).item() * n
            if not self.language_modeling:
                correct += int((logits.argmax(dim=-1) == labels).sum())
            count += n
        self.model.train()
        loss = total_loss / max(count, 1)
        if self.language_modeling:
            return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}
        return {"val_loss": loss, "val_accuracy": correct / max(count, 1)}

    def _record_eval(self) -> None:
        """Evaluate and log; call it with the evaluation weights in place (:meth:`_evaluation_weights`)."""
        start = time.perf_counter()
        metrics = self.evaluate()
        self.state.timing["eval"] += time.perf_counter() - start
        self.state.last_eval = metrics
        self.state.last_eval_step = self.state.step
        for key, value in metrics.items():
            better = max if key in ("val_accuracy",) else min
            previous = self.state.best_eval.get(key)
            self.state.best_eval[key] = value if previous is None else better(previous, value)
        self._log({"step": self.state.step, "epoch": self.state.epoch, **metrics})

    # -- the loop ---------------------------------------------------------------------------
    @property
    def _pin_memory(self) -> bool:
        """Page-locked batches let the copy to a GPU overlap the work (``non_blocking``)."""
        return self.device.type == "cuda"

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _batches(self) -> Iterable[dict[str, Tensor]]:
        """The batches of the rest of the current epoch."""
        set_epoch = getattr(self.data.train, "set_epoch", None)  # data drawn afresh every epoch
        if callable(set_epoch):
            set_epoch(self.state.epoch)
        sampler = EpochSampler(
            len(self.data.train), self.seed, self.state.epoch,
            self.state.batch_in_epoch * self.examples_per_step, self.cfg.shuffle,
            rank=self.rank, world_size=self.world_size, batch_size=self.cfg.batch_size,
        )
        if isinstance(self.data.train, InMemoryPairs) and not self.cfg.num_workers:
            return self.data.train.batches(sampler.indices(), self.cfg.batch_size)
        return DataLoader(
            self.data.train,
            batch_sampler=sampler,
            collate_fn=self.data.collate,
            num_workers=self.cfg.num_workers,
            pin_memory=self._pin_memory,
            # Workers take their seeds from this generator, not the global RNG, so starting an
            # iterator mid-epoch (after a resume) does not shift the model's random stream.
            generator=torch.Generator().manual_seed(self.seed + self.state.epoch),
        )

    def _steps(self) -> Iterator[list[Batch]]:
        """The rest of the current epoch, as the micro-batches of each step (the last step of an
        epoch may have fewer)."""
        step: list[Batch] = []
        for batch in self._batches():
            step.append(batch)
            if len(step) == self.cfg.accumulation_steps:
                yield step
                step = []
        if step:
            yield step

    def _on_device(self, micro_batches: list[Batch]) -> tuple[list[Batch], list[float]]:
        """The micro-batches on the device, each with its share of the step's targets (counted
        on the host before the copy, so without a device sync)."""
        counts = [self._targets(batch) for batch in micro_batches] if len(micro_batches) > 1 else [1]
        return [self._to_device(b) for b in micro_batches], [n / sum(counts) for n in counts]

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the summary fields of the run."""
        self.model.train()
        self._use_weights("train")  # a fresh optimizer, or one restored from an eval-mode checkpoint
        if self.scheduler is not None and isinstance(self.optimizer, ClosureOptimizer):
            warnings.warn(f"{type(self.scheduler).__name__} has no effect on {type(self.optimizer).__name__}: a line "
                          "search sets its own step size at every step, and a group's lr only mirrors it; "
                          "drop the scheduler", UserWarning, stacklevel=2)
        state = self.state
        progress = tqdm(total=self.total_steps, initial=state.step, disable=not self.cfg.progress,
                        desc="train", dynamic_ncols=True)
        # A stop signal (SIGTERM; SLURM's time-limit SIGUSR2) means "checkpoint after this step
        # and stop" while training, and "finish the final evaluation and checkpoint" after it.
        with on_stop_signals(self._request_stop):
            self._train(progress)
            progress.close()
            # The trained model is the evaluation weights: those of the final evaluation and
            # checkpoint. A SIGTERM now lets both finish, as one during an evaluation in training
            # does: they complete the run, and stopping between them would lose the training of
            # a run that checkpoints only at the end.
            self._use_weights("eval")
            if state.last_eval_step != state.step:
                self._record_eval()
            if state.last_checkpoint_step != state.step:
                self._checkpoint()
        return self.summary()

    def _train(self, progress: tqdm) -> None:
        state = self.state
        while state.step < self.total_steps:
            t0 = time.perf_counter()
            step_before = state.step
            for micro_batches in self._steps():  # the rest of the current epoch
                micro_batches, weights = self._on_device(micro_batches)
                t1 = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                if len(micro_batches) == 1:
                    loss, skipped = self.optimizer_step(self.make_closure(micro_batches[0]))
                else:
                    loss, skipped = self.accumulated_step(micro_batches, weights)
                if self.scheduler is not None:
                    self.scheduler.step()
                t2 = time.perf_counter()
                self._after_step(loss, t2 - t0)
                self._count_bad_step(skipped or not math.isfinite(loss))
                progress.update(1)
                t3 = time.perf_counter()
                self._evaluate_or_checkpoint_when_due()
                state.timing["data"] += t1 - t0
                state.timing["step"] += t2 - t1
                state.timing["bookkeeping"] += t3 - t2
                signum = self._stop_agreed()
                if signum:
                    with self._evaluation_weights():
                        self._checkpoint()
                    raise Interrupted(
                        f"stopped by {signal_name(signum)} after step {state.step}; a checkpoint is written: "
                        "continue with trainer.resume=true", signum
                    )
                if state.step >= self.total_steps:
                    break
                t0 = time.perf_counter()
            if state.step == step_before:  # a loop must make progress or stop, never spin
                raise RuntimeError(f"epoch {state.epoch} has no batch left from step {state.batch_in_epoch} of "
                                   f"{self.steps_per_epoch}: the position does not fit the data")

    def _request_stop(self, signum: int) -> None:
        self._stop_signal = self._stop_signal or signum

    def _stop_agreed(self) -> int:
        """The stop signal that any rank received (0: none; the larger number where ranks saw
        different ones): the ranks see a signal between different steps, and all must stop after
        the same one (rank 0 would otherwise wait for the others)."""
        signum = self._stop_signal
        if self.world_size > 1:
            signum = int(max_over_ranks(torch.tensor(signum, device=self.device)))
        return signum

    def _count_bad_step(self, bad: bool) -> None:
        """Steps with a non-finite loss or gradient are skipped by the step itself; only a storm
        of them in a row ends the run, with the last good checkpoint kept."""
        state = self.state
        if not bad:
            state.consecutive_bad_steps = 0
            return
        state.bad_steps += 1
        state.consecutive_bad_steps += 1
        if state.consecutive_bad_steps >= self.cfg.max_bad_steps:
            last_good = (
                f"the last good checkpoint is step {state.last_checkpoint_step}"
                if state.last_checkpoint_step >= 0 else "no checkpoint was written before"
            )
            raise TrainingDiverged(
                f"{state.consecutive_bad_steps} consecutive steps (up to step {state.step}) had a "
                f"non-finite loss or gradient; {last_good}. Check the data and the model's numerics "
                "(or raise trainer.max_bad_steps)"
            )

    def _after_step(self, loss: float, seconds: float) -> None:
        """Counters, the smoothed loss and the metrics row of the step just taken."""
        state = self.state
        state.step += 1
        state.batch_in_epoch += 1
        state.forwards += 1
        state.last_loss = loss
        state.elapsed += seconds
        if math.isfinite(loss):
            beta = self.cfg.loss_smoothing
            state.loss_ema = beta * state.loss_ema + (1 - beta) * loss
            state.loss_ema_weight = beta * state.loss_ema_weight + (1 - beta)
        if state.step % self.cfg.log_interval == 0 or state.step == self.total_steps:
            step_size, forwards = self._step_size_and_forwards()
            self._log({
                "step": state.step, "epoch": state.epoch, "loss": loss,
                "smoothed_loss": state.smoothed_loss(), "step_size": step_size,
                "forwards": forwards, "time": state.elapsed,
            })
        if state.batch_in_epoch == self.steps_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0

    def _log(self, row: dict[str, Any]) -> None:
        self.state.logged_rows += 1
        self.loggers.log(row)

    def _evaluate_or_checkpoint_when_due(self) -> None:
        state, cfg = self.state, self.cfg
        epoch_ended = state.batch_in_epoch == 0
        eval_due = state.step % cfg.eval_interval == 0 if cfg.eval_interval else epoch_ended
        checkpoint_due = bool(cfg.checkpoint_interval) and state.step % cfg.checkpoint_interval == 0
        checkpoint_due = checkpoint_due and not state.consecutive_bad_steps  # keep the last good one
        if not (eval_due or checkpoint_due):
            if self._timed_checkpoint_due():
                # At the training weights: switching a Schedule-Free optimizer to its evaluation
                # weights and back is not exact in floating point, and a checkpoint whose timing
                # depends on the machine must leave the trajectory as it is.
                self._as_bookkeeping(self._checkpoint)
            return
        with self._evaluation_weights():  # one switch for both: they see the same weights
            if eval_due:
                self._record_eval()
            if checkpoint_due or self._timed_checkpoint_due():
                self._as_bookkeeping(self._checkpoint)

    def _timed_checkpoint_due(self) -> bool:
        """``trainer.checkpoint_minutes`` have passed since the last checkpoint (or the start of
        this process), and the last step was good (the last good checkpoint is kept)."""
        minutes = self.cfg.checkpoint_minutes
        elapsed = time.monotonic() - self._last_checkpoint_time
        return bool(minutes) and elapsed >= 60 * minutes and not self.state.consecutive_bad_steps

    def _as_bookkeeping(self, work: Callable[[], None]) -> None:
        start = time.perf_counter()
        work()
        self.state.timing["bookkeeping"] += time.perf_counter() - start

    def summary(self) -> dict[str, Any]:
        state = self.state
        timing = dict(state.timing)
        overhead = (timing["data"] + timing["bookkeeping"]) / timing["step"] if timing["step"] else math.nan
        step_size, forwards = self._step_size_and_forwards()
        return {
            "steps": state.step,
            "epochs": state.epoch,
            "forwards": forwards,
            "final_loss": state.last_loss,
            "final_smoothed_loss": state.smoothed_loss(),
            "final_step_size": step_size,
            **{f"final_{k}": v for k, v in state.last_eval.items()},
            **{f"best_{k}": v for k, v in state.best_eval.items()},
            "bad_steps": state.bad_steps,
            "train_time": state.elapsed,
            "timing": timing,
            "harness_overhead": overhead,
        }
