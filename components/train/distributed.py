"""One process or many: torchrun's environment -> a process group (gloo on CPU, NCCL on GPU), called once.

The same entry point runs alone (`visionnode train ...`) or under torchrun
(`torchrun --nproc-per-node N -m visionnode.components.train ...`); a process group is created only when
WORLD_SIZE > 1. Only rank 0 writes checkpoints, outputs and MLflow records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from visionnode.components.common.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world_size} but MASTER_ADDR is not set",
                              "start multi-process training with torchrun, which sets both")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when any rank says so (all ranks must stop at the same step)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_floats(value: float, ctx: DistContext) -> list[float]:
    """Every rank's `value`, in rank order (a one-element list without a process group)."""
    if not ctx.distributed:
        return [value]
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    gathered = [torch.zeros_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, tensor)
    return [float(t.item()) for t in gathered]
