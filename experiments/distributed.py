"""torchrun / SLURM / DDP: which process this is, and the process group's setup and teardown.

Two launchers start N copies of a run. ``torchrun --nproc_per_node N main.py ...`` gives each
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address); an ``srun`` job step of
N tasks (a SLURM job with ``tasks_per_node``/``nodes``, e.g. through submitit) gives each
``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID`` and the step's node list, whose first
host is the rendezvous (:mod:`experiments.slurm`). :func:`setup` reads whichever is there and
joins the default process group; without either the run is a single process and no group is
created. Nothing here keeps state of its own: the process group is torch.distributed's, and
:class:`Process` is a frozen description of this process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .slurm import step_tasks

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


@dataclass(frozen=True)
class Launch:
    """How the launcher placed this process: its ranks, and where rank 0 waits for the others
    (``None``: torchrun's ``env://`` rendezvous from the environment)."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str | None = None


def launch_of(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """This process's place in a run of several processes (torchrun's variables first, then an
    ``srun`` step of several tasks), or None for a single process."""
    if all(name in environ for name in TORCHRUN_VARIABLES):
        return Launch(*(int(environ[name]) for name in TORCHRUN_VARIABLES))
    tasks = step_tasks(environ)
    if tasks is None:
        return None
    return Launch(tasks.rank, tasks.world_size, tasks.local_rank, f"tcp://{tasks.master_addr}:{tasks.master_port}")


def is_main_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is rank 0 (or a single process); readable before setup."""
    launch = launch_of(environ)
    return launch is None or launch.rank == 0


def setup(device: torch.device, environ: Mapping[str, str] = os.environ) -> Process:
    """Join the default process group when started as one of several processes; ``device`` is
    the device the config chose, made ``cuda:LOCAL_RANK`` for a CUDA run (``cuda:0`` where SLURM
    binds one GPU to each task, so that only one is visible). Backend: nccl for CUDA, gloo else."""
    launch = launch_of(environ)
    if launch is None:
        return Process(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend, init_method=launch.init_method, rank=launch.rank,
                            world_size=launch.world_size)
    return Process(device=device, rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank)


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


def max_over_ranks(value: Tensor) -> Tensor:
    """The largest value of a tensor over all ranks (the tensor itself for a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    largest = value.detach().clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of a tensor over all ranks (the tensor itself for a single process). The same
    bits on every rank, so decisions taken from it agree."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
