"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): ``DTensor``s, each rank
holding one shard of every parameter.

The optimizers work on the local shards (moments and buffers stay sharded; no rank ever holds a
full copy of the parameters) and make the two reductions a line search needs across ranks:
losses are averaged (every rank evaluated its own batch) and inner products such as
:math:`\\|g\\|^2` or :math:`\\langle g, P g\\rangle` are summed (every rank holds a part of the vectors).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch.distributed as dist
from torch import Tensor


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor``."""
    # Importing torch.distributed.tensor costs 0.6 s (seconds on a busy machine) in every process,
    # and a DTensor exists only once someone has imported it (fully_shard does): so it is looked up
    # where that import left it, never imported here. A build without distributed support never
    # has it.
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and isinstance(tensor, dtensor)


def local(tensor: Tensor) -> Tensor:
    """This rank's shard of a ``DTensor`` (an alias: writing to it writes the parameter), or the
    tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def check_sharding(params: Iterable[Tensor], process_group: dist.ProcessGroup | None) -> bool:
    """Whether the parameters are FSDP2 shards; raises ``ValueError`` for layouts the search
    cannot reduce correctly: sharded and unsharded parameters mixed (an inner product would count
    the unsharded ones once per rank), or shards over a mesh other than the one ``process_group``
    (default: the world) spans (e.g. HSDP or tensor parallelism)."""
    params = list(params)
    sharded = [p for p in params if is_sharded(p)]
    if not sharded:
        return False
    if len(sharded) != len(params):
        plain = next(p for p in params if not is_sharded(p))
        raise ValueError(
            f"params: {len(sharded)} parameters are FSDP2-sharded DTensors and "
            f"{len(params) - len(sharded)} are not (e.g. one of shape {tuple(plain.shape)}); one "
            "step size needs inner products over all of them summed the same way. Apply "
            "fully_shard to the root module as well (it shards the parameters left over), or "
            "give this optimizer only sharded parameters"
        )
    from torch.distributed.tensor import Shard  # imported already: the parameters are DTensors

    group = process_group if process_group is not None else dist.group.WORLD
    group_size = dist.get_world_size(group)
    for p in sharded:
        mesh = p.device_mesh
        if mesh.ndim != 1 or not all(isinstance(place, Shard) for place in p.placements):
            raise ValueError(
                f"params: a DTensor with placements {p.placements} on a {mesh.ndim}-D mesh; only "
                "FSDP2 sharding over one 1-D mesh (fully_shard) is supported"
            )
        if mesh.size() != group_size:
            raise ValueError(
                f"params: sharded over a mesh of {mesh.size()} ranks but the optimizer's "
                f"process_group has {group_size}; pass process_group=mesh.get_group()"
            )
    return True
