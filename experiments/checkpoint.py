"""Checkpoints that a killed run resumes from: atomic, complete, and safe to load.

A checkpoint holds the model, optimizer and scheduler state, the trainer's position (step, epoch,
batch within the epoch, smoothed loss) and every RNG state (torch CPU and CUDA, numpy, Python),
in a form ``torch.load(weights_only=True)`` accepts. It is written to a temporary file and renamed
into place, so a kill at any moment leaves the previous checkpoint intact; a file that does not
load is skipped, with a warning, in favour of the one before it.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def capture_rng() -> dict[str, Any]:
    """Every RNG state, as tensors and plain lists (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
         np_state["has_gauss"], np_state["cached"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` atomically as the checkpoint of ``step``; keep the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads, or ``None`` when there is none."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or corrupt: fall back to the previous one
            warnings.warn(f"checkpoint {path} does not load ({error}); trying the previous one", stacklevel=2)
    return None
