"""Process-group helpers: one code path whether launched by `deepspeed` (N ranks) or plain `python`."""

from __future__ import annotations

import atexit
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

# What a launcher (or init_distributed, for a world of one) sets to rendezvous a process group.
RENDEZVOUS_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Start (or join) the process group; returns (rank, world_size)."""
    import deepspeed

    # A plain `python engine/train.py` run is a world of one.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend = "gloo"
    if torch.cuda.is_available():  # GPU path: written for, not yet run on, a GPU machine
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    atexit.register(remove_shm_buffer, shm_buffer_path())
    return dist.get_rank(), dist.get_world_size()


def shm_buffer_path() -> Path:
    """This rank's shared-memory all-reduce workspace, which DeepSpeed's CPU communicator creates at start-up
    (ops/csrc/cpu/comm/shm.cpp, about 70 MB) and never unlinks: each multi-rank run would leave it in RAM."""
    env = os.environ
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_"
                               f"{env['MASTER_PORT']}_{env['RANK']}")


def remove_shm_buffer(path: Path) -> None:
    """At exit; the other ranks have mapped their views at start-up, and a mapping outlives its name."""
    path.unlink(missing_ok=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _reduce(values: list[float], op) -> list[float]:
    # NCCL reduces only GPU tensors; gloo only CPU ones.
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_ranks_sum(values: list[float]) -> list[float]:
    return values if world_size() == 1 else _reduce(values, dist.ReduceOp.SUM)


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    if world_size() == 1:
        return values
    return {k: v / world_size() for k, v in zip(values, _reduce(list(values.values()), dist.ReduceOp.SUM))}


def reduce_max(value: float) -> float:
    return value if world_size() == 1 else _reduce([value], dist.ReduceOp.MAX)[0]
