"""torchrun support: one process per device, gradients averaged by DistributedDataParallel.

A script started by `torchrun --nproc_per_node=N main_*.py ...` finds RANK, LOCAL_RANK and
WORLD_SIZE in its environment; a plain `python main_*.py` finds none and runs as world size 1, where
every function here is a no-op. Rank 0 alone prints progress, logs, writes checkpoints and exports
masks; the others only compute.
"""
import builtins
import datetime
import functools
import os
from typing import Any, List, Tuple

import torch
import torch.distributed as dist
from tqdm import tqdm

from utils.errors import UserError


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun and return this process's device.

    NCCL on CUDA (one GPU per local rank), gloo on CPU. Without torchrun: `device` itself.
    """
    if not launched_by_torchrun() or is_distributed():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank}: this node has only {torch.cuda.device_count()} GPU(s); "
                            f"lower torchrun's --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    if dist.get_rank() != 0:
        quiet_this_process()
    return device


def quiet_this_process() -> None:
    """Rank 0 speaks for all: the others print nothing and show no progress bars (errors still reach stderr)."""
    builtins.print = lambda *args, **kwargs: None
    tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)  # every module shares this class


def teardown() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_across_ranks(*values: float) -> Tuple[float, ...]:
    """Sums of plain numbers over all ranks (the same on every rank)."""
    if not is_distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tuple(tensor.cpu().tolist())


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shard(indices: List[int], pad: bool) -> List[int]:
    """This rank's share of `indices`: every world_size-th item from position rank.

    With pad the list is first extended with its own head to a multiple of the world size, so that
    every rank takes as many training steps (DDP needs that); evaluation shards without padding so
    that no cell is scored twice. Rank r's k-th batch of size b together with the other ranks' k-th
    batches is then exactly the single-process batch k of size b * world_size.
    """
    count = world_size()
    if count == 1:
        return indices
    if pad and len(indices) % count:
        indices = indices + indices[:count - len(indices) % count]
    return indices[rank()::count]
