"""Distributed helpers; every one is a no-op (or the trivial answer) in a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (unchanged in a single process)."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor)
    return tensor


def wrap_data_parallel(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` as ``DistributedDataParallel`` on ``device`` (one GPU per process, or the CPU).

    Buffers are not broadcast before every forward (on 2 CPU processes that costs 3 % of the quick
    start's iteration, ``benchmarks/quickstart_train.py``; for a frozen BatchNorm it copies constants):
    in training BatchNorm normalises with the batch's statistics, so only rank 0's running statistics
    matter, and they are the ones saved; evaluate the other ranks after :func:`broadcast_buffers`.
    """
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def broadcast_buffers(module: torch.nn.Module, source: int = 0) -> None:
    """Copy the buffers of ``module`` (BatchNorm statistics) from process ``source`` to every process."""
    if is_dist_avail_and_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, source)


def reduce_dict(values: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Reduce scalar tensors over all processes, keyed identically on every rank."""
    world_size = get_world_size()
    if world_size < 2:
        return values
    with torch.no_grad():
        names = sorted(values)
        stacked = torch.stack([values[k] for k in names])
        dist.all_reduce(stacked)
        if average:
            stacked /= world_size
        return dict(zip(names, stacked))


def all_gather_object(obj: object) -> list[object]:
    """Gather a picklable object from every process (a one-element list in a single process)."""
    if get_world_size() == 1:
        return [obj]
    gathered: list[object] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


# ----------------------------------------------------------------------------- process group set-up
@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job; ``distributed`` is False for a plain ``python main.py``."""

    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def init_distributed_mode(device: str, dist_url: str = "env://", local_rank: int | None = None) -> DistributedInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    The backend is NCCL for a CUDA ``device`` (each process uses GPU ``LOCAL_RANK``) and gloo
    otherwise. Without those variables nothing happens and a single-process info is returned.
    ``local_rank`` (``--local_rank``) is used when ``LOCAL_RANK`` is not set: launchers that pass
    it on the command line instead (``torch.distributed.launch`` without ``--use_env``).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedInfo()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank or 0))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=dist_url, world_size=world_size, rank=rank)
    dist.barrier()
    return DistributedInfo(True, rank, world_size, local_rank)
