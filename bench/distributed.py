"""Data-parallel training across processes (one per GPU, or CPU processes with gloo).

The world comes from the environment Submitit sets up (``submitit.helpers.TorchDistributedEnvironment``) or from
``torchrun``'s variables. One process (or ``WORLD_SIZE`` 1) runs without any of this.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

from bench.adapter import Adapter

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env() -> bool:
    """Join the process group described by ``RANK``/``WORLD_SIZE``/``MASTER_*`` when the world has several
    processes (NCCL on GPUs, gloo on CPUs); returns whether a group is now in use."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


class RankSlice(Sampler[list[T]]):
    """Each global batch of ``batches`` split across ranks: rank r takes items r, r + world, ..."""

    def __init__(self, batches: Sampler[list[T]], rank: int, size: int) -> None:
        self.batches, self.rank, self.size = batches, rank, size

    def __iter__(self) -> Iterator[list[T]]:
        for batch in self.batches:
            if len(batch) % self.size:
                raise ValueError(f"batch of {len(batch)} does not split evenly over {self.size} processes")
            yield batch[self.rank :: self.size]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous share of ``items`` (shares differ by at most one)."""
    rank, size = world()
    n = len(items)
    return list(items[rank * n // size : (rank + 1) * n // size])


def gather_concat(values: Tensor) -> Tensor:
    """The concatenation over ranks, in rank order, of every rank's 1-D ``values`` (of possibly unequal length)."""
    _, size = world()
    if size == 1:
        return values
    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, values.cpu())
    return torch.cat(parts)


def any_across(flags: Tensor) -> Tensor:
    """Element-wise OR of a boolean tensor over ranks."""
    if world()[1] == 1:
        return flags
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    as_int = flags.to(device, torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool().to(flags.device)


class LossModule(nn.Module):
    """The adapter's training loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, images: Tensor, labels: Tensor, forgeries: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.adapter.training_loss(images, labels, forgeries)


def loss_module(adapter: Adapter, device: torch.device) -> nn.Module:
    """The training-loss module, wrapped in DistributedDataParallel when several processes train."""
    module = LossModule(adapter)
    if world()[1] == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
