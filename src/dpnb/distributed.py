"""The process group of a run started by ``torchrun``: who this process is, and on which backend.

``torchrun --nproc_per_node N`` starts N copies of a program with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and a rendezvous address in the environment. :func:`init_from_env` joins their
process group (NCCL when the run uses CUDA, gloo on CPUs) and :func:`world` tells the training
loop (:func:`dpnb.train.train`) that it runs as one of several processes; a plain ``python``
process has no world and trains alone.

    >>> world() is None   # not started by torchrun
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["World", "world", "init_from_env", "shutdown", "is_main"]


@dataclass(frozen=True)
class World:
    rank: int  # 0 .. size - 1; rank 0 adds the noise and writes the results
    size: int
    local_rank: int  # the process's GPU on its machine
    backend: str


def world() -> World | None:
    """This process's place in an initialised process group of two or more processes, else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=dist.get_backend())


def init_from_env(*, cuda: bool) -> World | None:
    """Join the process group described by torchrun's environment (none outside torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_main() -> bool:
    """True for rank 0 of a group, and for a process that runs alone."""
    w = world()
    return w is None or w.rank == 0
