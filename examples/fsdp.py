"""SaLSA under FSDP2: every rank holds a shard of each parameter and trains on its own batch.

    pip install -e .                                 # from the checkout: torch and this library
    torchrun --nproc-per-node 2 examples/fsdp.py     # any number of ranks, CPU (gloo) or GPUs (nccl)
    python examples/fsdp.py                          # starts 2 CPU ranks itself

The optimizer works on the local shards (its moments stay sharded), sums the search's inner
products over the ranks and averages the losses, so every rank accepts the same step size.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from optim import SaLSA


def train(rank: int, world_size: int) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")
    mesh = init_device_mesh(device.type, (world_size,))

    torch.manual_seed(0)  # the same initial model on every rank
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    # The root with reshard_after_forward=True: trials run forward under no_grad, after which FSDP2
    # would otherwise keep the root's parameters gathered and the next trial would not see the move.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    opt = SaLSA(model.parameters())  # after fully_shard: it sees the sharded parameters

    generator = torch.Generator().manual_seed(rank)  # a different batch stream per rank
    for step in range(30):
        x = torch.randn(64, 16, generator=generator).to(device)
        y = (x[:, :4].argmax(dim=1)).to(device)

        def closure(backwards: bool = False) -> torch.Tensor:
            loss = nn.functional.cross_entropy(model(x), y)
            if backwards:
                loss.backward()
            return loss

        opt.zero_grad()
        loss = opt.step(closure)
        if rank == 0 and step % 10 == 9:
            print(f"step {step + 1}: loss {loss.item():.4f}, step size {opt.diagnostics.step_size:.3g}")
    dist.destroy_process_group()


def _spawned(rank: int, world_size: int) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on the loopback device
    train(rank, world_size)


if __name__ == "__main__":
    if "RANK" in os.environ:  # under torchrun
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    else:
        mp.spawn(_spawned, args=(2,), nprocs=2)
