"""Where rollouts run. `colocated`: every rank has its own vLLM engine and a learner shard.
`dedicated`: in a launch of W ranks the last `rollout.workers` ranks run only vLLM (rollout workers)
and the first W-K form the DeepSpeed learner group, so ZeRO shards over learners only.

Process groups in the dedicated layout:
  - learners: the default group (WORLD_SIZE is rewritten to W-K), which DeepSpeed uses as usual;
  - each worker: a default group of its own (a world of one, as a plain `python` run), which vLLM joins;
  - `bridge`: a gloo group over all W ranks, for episodes (worker -> learners, point to point);
  - `fanout`: learner 0 + the workers, for commands and weights (broadcast from learner 0; gloo on the
    CPU, NCCL when CUDA is present).
Both extra groups rendezvous on a TCPStore at MASTER_ADDR:MASTER_PORT+1, hosted by rank 0.
"""

from __future__ import annotations

import datetime
import os
import pickle
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.base.errors import UserError
from engine.runtime.distributed import free_port

BRIDGE_PORT_OFFSET = 1  # the extra groups' store listens on MASTER_PORT + this


@dataclass(frozen=True)
class Placement:
    kind: str  # colocated | dedicated
    rank: int  # this process's rank in the launch
    world: int  # ranks in the launch
    workers: int  # dedicated rollout-worker ranks (0 when colocated)

    @property
    def learners(self) -> int:
        return self.world - self.workers

    @property
    def is_worker(self) -> bool:
        return self.rank >= self.learners

    @property
    def worker_ranks(self) -> list[int]:
        return list(range(self.learners, self.world))


def plan_placement(kind: str, workers: int, rank: int, world: int) -> Placement:
    """Checks that the launch can hold the layout; the workers are the last ranks."""
    if kind == "colocated":
        return Placement(kind, rank, world, 0)
    if workers < 1 or workers >= world:
        raise UserError(f"rollout.placement=dedicated needs 1 <= rollout.workers < the number of ranks; got "
                        f"rollout.workers={workers} with {world} rank(s). Hint: launch more ranks "
                        f"(deepspeed --num_gpus N) or use rollout.placement=colocated.")
    return Placement(kind, rank, world, workers)


def launch_rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def split_default_group(placement: Placement) -> None:
    """Before init_distributed: learners rendezvous as a world of W-K; a worker as a world of its own."""
    if placement.kind != "dedicated":
        return
    if placement.is_worker:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    else:
        os.environ["WORLD_SIZE"] = str(placement.learners)


class Channels:
    """The bridge and fan-out groups of the dedicated layout (gloo; learners and workers both hold one)."""

    def __init__(self, placement: Placement, master_addr: str, master_port: int, timeout_s: float):
        self.placement = placement
        # Learners give up on a silent worker after timeout_s; a worker waits as long as the learners take
        # between commands (model build, evaluation, checkpoints); a dead learner is noticed at once anyway.
        timeout = datetime.timedelta(seconds=timeout_s) if not placement.is_worker else datetime.timedelta(days=1)
        self.store_address = (master_addr, master_port + BRIDGE_PORT_OFFSET)
        # The store outlives slow starts (the built-in model's first build takes minutes).
        self.store = dist.TCPStore(*self.store_address, placement.world, placement.rank == 0,
                                   timeout=datetime.timedelta(hours=2))
        self.bridge = dist.ProcessGroupGloo(dist.PrefixStore("bridge", self.store), placement.rank,
                                            placement.world, timeout)
        self.in_flight = []  # (work, buffer) of posted sends
        self.fanout = None
        self.fanout_device = torch.device("cpu")
        if placement.rank == 0 or placement.is_worker:
            fanout_rank = 0 if placement.rank == 0 else placement.rank - placement.learners + 1
            fanout_store = dist.PrefixStore("fanout", self.store)
            if torch.cuda.is_available():  # weights over NCCL (written for, not yet run on, GPUs)
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
                self.fanout_device = torch.device("cuda", torch.cuda.current_device())
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = timeout
                self.fanout = dist.ProcessGroupNCCL(fanout_store, fanout_rank, placement.workers + 1, options)
            else:
                self.fanout = dist.ProcessGroupGloo(fanout_store, fanout_rank, placement.workers + 1, timeout)

    # --- liveness: a worker's heartbeat counter, so a failed broadcast can name the dead worker ----

    def start_heartbeat(self, period_s: float = 0.5) -> None:
        """A worker counts up f"beat/{rank}" from a thread (its own store connection) while it lives."""
        self.beating = threading.Event()
        self.beating.set()

        def beat():
            try:
                store = dist.TCPStore(*self.store_address, is_master=False, timeout=datetime.timedelta(minutes=5))
                while self.beating.is_set():
                    store.add(f"beat/{self.placement.rank}", 1)
                    time.sleep(period_s)
            except dist.DistError:  # the store (learner 0) is gone: the run is over either way
                return

        threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()

    def stop_heartbeat(self) -> None:
        self.beating.clear()

    def silent_workers(self, wait_s: float = 3.0) -> list[int]:
        """The worker ranks whose heartbeat did not move in `wait_s` seconds."""
        before = {r: self.store.add(f"beat/{r}", 0) for r in self.placement.worker_ranks}
        time.sleep(wait_s)
        return [r for r in self.placement.worker_ranks if self.store.add(f"beat/{r}", 0) == before[r]]

    # --- objects (pickled into uint8 tensors: a length, then the bytes) -------------------------

    def send_object(self, obj, dst: int) -> None:
        """Posted, not waited for: the sender goes on (a worker runs ahead of the learner when asynchronous)
        while gloo's I/O thread delivers it. The buffers stay referenced until then."""
        data = _encode(obj)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        self.in_flight = [(w, b) for w, b in self.in_flight if not w.is_completed()]
        self.in_flight += [(self.bridge.send([size], dst, 0), size), (self.bridge.send([data], dst, 1), data)]

    def recv_object(self, src: int):
        # Only our own ranks' objects are unpickled: the groups are private to this launch.
        size = torch.zeros(1, dtype=torch.int64)
        self.bridge.recv([size], src, 0).wait()
        data = torch.empty(int(size.item()), dtype=torch.uint8)
        self.bridge.recv([data], src, 1).wait()
        return _decode(data)

    def broadcast_object(self, obj=None):
        """From learner 0 to every worker; returns the object on every member."""
        size = torch.zeros(1, dtype=torch.int64)
        data = None
        if self.placement.rank == 0:
            data = _encode(obj)
            size[0] = data.numel()
        self.broadcast_tensor(size)
        if data is None:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        self.broadcast_tensor(data)
        return _decode(data)

    def broadcast_tensor(self, tensor: torch.Tensor) -> None:
        """In place, from learner 0. Over NCCL a CPU tensor is staged through the GPU."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        staged = tensor.to(self.fanout_device)
        self.fanout.broadcast([staged], options).wait()
        if staged is not tensor:
            tensor.copy_(staged)


def _encode(obj) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)


def _decode(data: torch.Tensor):
    return pickle.loads(data.numpy().tobytes())
