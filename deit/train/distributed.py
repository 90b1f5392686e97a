"""Multi-process training through torchrun: detected from the environment (nanoGPT style).

``torchrun --nproc_per_node=N -m deit train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
multi-node runs use torchrun's standard rendezvous (``--nnodes``, ``--rdzv-backend c10d``,
``--rdzv-endpoint host:port``). Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """The process's place in a torchrun job (a single process when not launched by torchrun)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def init(env: DistEnv, device: torch.device) -> None:
    if env.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over processes in place (no-op in a single process): e.g. the slowest
    process's time, which every process then agrees on."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
