"""Checkpoints that a killed run resumes from: atomic, complete, and safe to load.

A checkpoint holds the model, optimizer and scheduler state, the trainer's position (step, epoch,
batch within the epoch, smoothed loss) and every RNG state (torch CPU and CUDA, numpy, Python),
in a form ``torch.load(weights_only=True)`` accepts. It is written to a temporary file and renamed
into place, so a kill at any moment leaves the previous checkpoint intact. Beside it lies its
SHA-256 digest (its name + ``.sha256``), written before the checkpoint is renamed into place, so
every checkpoint that exists has one. A file whose bytes do not match its digest (altered,
truncated), that does not load, or that loads but is not a checkpoint of this harness is skipped,
with a warning, in favour of the one before it. Where checkpoints lie in the run folder, and
their names, are the record's (:mod:`experiments.record`).
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .files import remove_temporary_files, write_atomically, write_with
from .record import CHECKPOINTS, checkpoint_path, list_checkpoints

DIGEST_SUFFIX = ".sha256"
# What training_payload writes: a file without these keys is not one of our checkpoints.
PAYLOAD_KEYS = frozenset({"model", "optimizer", "scheduler", "trainer", "rng"})


def capture_rng() -> dict[str, Any]:
    """Every RNG state, as tensors and plain lists (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # The generator of this process's device. Under DDP only rank 0 writes, but every rank
        # seeds alike and draws alike (the same shapes, the same trials), so rank 0's state is
        # each rank's for its own device (all devices' states, as rank 0 sees them, would give
        # rank r the untouched state of cuda:r, and fail on a machine with fewer devices).
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])  # this process's device (see capture_rng)
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
         np_state["has_gauss"], np_state["cached"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def training_payload(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler | None, trainer: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint of a run holds: the state of the model, the optimizer and the scheduler,
    the trainer's place (``trainer``) and every RNG state."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "trainer": trainer,
        "rng": capture_rng(),
    }


def restore_training(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> dict[str, Any]:
    """Load a :func:`training_payload` into the model, the optimizer, the scheduler and the RNGs;
    returns the trainer's place."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    restore_rng(payload["rng"])
    return payload["trainer"]


def digest_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + DIGEST_SUFFIX)


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` atomically as the checkpoint of ``step``, with its digest; keep the
    newest ``keep``. A failed write (a full disk) leaves the earlier checkpoints as they were."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The digest goes first: a kill between the two writes leaves a digest without a checkpoint
    # (ignored), never a checkpoint without its digest.
    write_with(path, lambda f: _save_with_digest(payload, f, digest_path(path)))
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    return path


def _save_with_digest(payload: dict[str, Any], f: BinaryIO, digest: Path) -> None:
    try:
        torch.save(payload, f)
    except RuntimeError as error:
        # torch's zip writer reports a write that failed (a full disk) as an inconsistent file
        # position when it closes the archive; the OSError underneath says what happened.
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise
    f.flush()
    write_atomically(digest, file_digest(Path(f.name)) + "\n")


def remove_unfinished_writes(run_dir: Path) -> None:
    """Delete what an interrupted save left: temporary files, digests without a checkpoint."""
    folder = run_dir / CHECKPOINTS
    remove_temporary_files(folder)
    if folder.is_dir():
        for digest in folder.glob(f"*{DIGEST_SUFFIX}"):
            if not digest.with_name(digest.name.removesuffix(DIGEST_SUFFIX)).exists():
                digest.unlink(missing_ok=True)


def load_checkpoint(path: Path, required: Collection[str] = ()) -> dict[str, Any]:
    """The payload of checkpoint ``path`` once its bytes match its digest and it holds the keys
    ``required`` (the runner asks for :data:`PAYLOAD_KEYS`); ``ValueError`` says why it is not
    usable."""
    try:
        recorded = digest_path(path).read_text().strip()
    except FileNotFoundError:
        raise ValueError("it has no digest file beside it") from None
    if file_digest(path) != recorded:
        raise ValueError("its bytes do not match its digest (altered or truncated)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"it does not unpickle ({type(error).__name__}: {error})") from error
    missing = sorted(set(required) - set(payload)) if isinstance(payload, dict) else sorted(required)
    if missing:
        raise ValueError(f"it is not a checkpoint of this harness (no {', '.join(missing)})")
    return payload


def load_latest_checkpoint(run_dir: Path, required: Collection[str] = ()) -> dict[str, Any] | None:
    """The newest usable checkpoint (see :func:`load_checkpoint`), or ``None`` when there is none;
    each one skipped is named in a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, required)
        except (OSError, ValueError) as error:
            warnings.warn(f"checkpoint {path} does not load: {error}; trying the previous one", stacklevel=2)
    return None
