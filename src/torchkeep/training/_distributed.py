"""Training past one process: the process group torchrun sets up, the global batch cut across ranks, and the
few collectives the loop needs.

The unit is the global batch. The order of an epoch is a permutation of the training set that depends only on
``(seed, epoch)``; it is cut into global batches of ``--batch-size`` images and rank ``r`` of ``W`` takes the
``r``-th contiguous share of each (sizes differ by at most one). A checkpoint records how many samples of the
epoch were consumed, so a run resumed on any number of processes continues with exactly the remaining samples,
in the same global order.

Two traps of ``torch.distributed`` are handled here (see the project's field notes):

* workers restarted by torchrun (``--max-restarts``) sometimes reconnect to the dead workers' gloo addresses;
  the process group lives on a store prefix keyed by ``TORCHELASTIC_RESTART_COUNT``, so each restart meets only
  its own generation;
* a DDP run sometimes aborts at exit ("terminate called without an active exception"); :func:`shutdown`
  drops the DDP wrapper and collects garbage before ``destroy_process_group``.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from torchkeep.errors import UsageError

__all__ = [
    "Dist",
    "GlobalBatchSampler",
    "epoch_seed",
    "init_from_env",
    "share",
    "shutdown",
]

# test hooks (hidden): a file prefix to which each rank appends the sample ids of every step, and a rank that
# SIGKILLs itself after a given step of the first attempt ("RANK:STEP") or every rank exits ("STEP")
ENV_LOG_SAMPLES = "TORCHKEEP_LOG_SAMPLES"
ENV_KILL_AT_STEP = "TORCHKEEP_KILL_AT_STEP"


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: ``rank`` of ``world`` processes (``world == 1``: alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restart: int = 0
    owned: bool = False  # this process created the group (and destroys it at the end)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 or (dist.is_available() and dist.is_initialized())


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    """torchrun (or ``torchkeep train --nproc``) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device_type: str, timeout_s: float = 1800.0) -> Dist:
    """Join the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_*``).

    gloo on the CPU, nccl on CUDA. The group is created on a store prefix of this restart's generation.
    """
    if not launched_by_torchrun():
        return SINGLE
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if dist.is_initialized():  # a caller (a notebook, a test) set it up already
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, restart)
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    store = dist.PrefixStore(f"torchkeep/restart{restart}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return Dist(rank, world, local_rank, restart, owned=True)


def shutdown(wrapper: Any = None) -> None:
    """Leave the process group cleanly: drop the DDP wrapper and collect it first (else ~1 run in 5 aborts)."""
    del wrapper
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def checkpoint_group(d: Dist) -> Any:
    """A gloo group of every rank for DCP's background checkpoints (None alone).

    Their collectives run on DCP's writer thread while the training thread all-reduces gradients: on one
    group the two streams of collectives would interleave differently on each rank. A group of its own keeps
    them apart (and gives NCCL runs the CPU backend ``async_save`` requires), as torchtitan does.
    """
    return dist.new_group(backend="gloo") if d.active else None


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def all_sum(d: Dist, values: Sequence[float], dtype: torch.dtype = torch.float64) -> list[float]:
    """Sum of ``values`` over all ranks (one all-reduce)."""
    t = torch.tensor(list(values), dtype=dtype)
    if d.active:
        dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def all_sum_tensor(d: Dist, t: torch.Tensor) -> torch.Tensor:
    if d.active:
        dist.all_reduce(t)
    return t


def broadcast_buffers(d: Dist, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank: the model every rank evaluates is the one saved."""
    if d.active:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def epoch_seed(seed: int, epoch: int) -> int:
    """A per-epoch seed (data order, worker seeds) that does not depend on any global RNG."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63 - 1)


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of a rank's own random draws (augmentation, dropout) in an epoch of a distributed run."""
    return (epoch_seed(seed, epoch) * 31 + 1_000_033 * (rank + 1)) % (2**63 - 1)


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    k, m = divmod(n, world)
    lo = rank * k + min(rank, m)
    return lo, lo + k + (1 if rank < m else 0)


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's share of each global batch of an epoch.

    The epoch's order is ``randperm(n)`` seeded by ``(seed, epoch)``; ``start`` is the number of samples of
    the epoch already consumed (by any number of processes). With ``drop_single`` a last global batch of exactly
    one image is left out (BatchNorm cannot train on it). ``log`` (the test hook) receives each global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, d: Dist = SINGLE, *, drop_single: bool = False):
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.d = d
        self.drop_single = drop_single
        self.epoch = 0
        self.start = 0
        self.last: list[int] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _end(self) -> int:
        if self.drop_single and self.n % self.batch_size == 1 and self.n > 1:
            return self.n - 1
        return self.n

    def global_batches(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        end = self._end()
        for b in range(self.start, end, self.batch_size):
            yield perm[b : min(b + self.batch_size, end)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            lo, hi = share(len(batch), self.d.rank, self.d.world)
            self.last = batch[lo:hi]
            yield self.last

    def __len__(self) -> int:
        left = max(self._end() - self.start, 0)
        return -(-left // self.batch_size)


def check_world(d: Dist, batch_size: int, device_type: str, sync_bn: bool) -> None:
    """Refuse what cannot run in this process group, before any work."""
    if d.world > 1 and batch_size < d.world:
        raise UsageError(
            f"--batch-size {batch_size} is the global batch: it cannot be shared by {d.world} processes",
            fix=f"use --batch-size {d.world} or more, or fewer processes",
        )
    if sync_bn and device_type != "cuda":
        raise UsageError(
            "--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)",
            fix="leave out --sync-bn on the CPU (each process then keeps its own BatchNorm statistics)",
        )
