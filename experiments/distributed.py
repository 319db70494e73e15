"""torchrun / DDP: which process this is, and the process group's setup and teardown.

``torchrun --nproc_per_node N main.py ...`` starts N copies of the run with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address) in their environment.
:func:`setup` reads them and joins the default process group; without them the run is a single
process and no group is created. Nothing here keeps state of its own: the process group is
torch.distributed's, and :class:`Process` is a frozen description of this process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Process:
    """This process's place in the run: rank 0 of 1 for a plain ``python main.py``."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one rank that writes the run record, the checkpoints and wandb."""
        return self.rank == 0


def launched_by_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return all(name in environ for name in TORCHRUN_VARIABLES)


def is_main_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is rank 0 (or not launched by torchrun); readable before setup."""
    return int(environ.get("RANK", "0")) == 0


def setup(device: torch.device, environ: Mapping[str, str] = os.environ) -> Process:
    """Join the default process group when launched by torchrun; ``device`` is the device the
    config chose, made ``cuda:LOCAL_RANK`` for a CUDA run. Backend: nccl for CUDA, gloo else."""
    if not launched_by_torchrun(environ):
        return Process(device=device)
    rank, world_size, local_rank = (int(environ[name]) for name in TORCHRUN_VARIABLES)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Process(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown() -> None:
    """Leave the process group (nothing to do for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing to do for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_from_main(value: str) -> str:
    """Rank 0's ``value`` on every rank (``value`` itself for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of a tensor over all ranks (the tensor itself for a single process). The same
    bits on every rank, so decisions taken from it agree."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
