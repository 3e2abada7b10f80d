"""Where this process stands among the processes of one job: torchrun's ranks or a job array.

gqtok does not launch processes. ``torchrun`` (torch's own launcher: NCCL on GPUs, gloo on
CPUs, several nodes through its c10d rendezvous) sets RANK, WORLD_SIZE and LOCAL_RANK, and
``World.from_env`` reads them; a job array (SLURM arrays, a shell loop over machines sharing a
filesystem) passes ``--rank R --world-size N`` instead and gets a World without a process group,
whose ranks never talk to each other. Every collective here is a no-op for one process, so the
code that calls them reads the same with one process or many.

torch is imported on first use: the CLI's fast commands import this module without it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gqtok.errors import UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# A rank that finishes its share early waits for the others at the final barrier; exports and
# evaluations over millions of images can keep it waiting for hours (gloo's default is 30 min).
DEFAULT_TIMEOUT_S = 24 * 3600
TIMEOUT_ENV = "GQTOK_DIST_TIMEOUT"


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes; ``group`` says whether a torch process
    group connects them (torchrun), as opposed to a job array's independent ranks."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes what the job writes once (manifests, checkpoints, reports)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @staticmethod
    def from_env() -> World:
        """torchrun's ranks when launched by it with more than one process, else one process."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if size <= 1:
            return World()
        if not 0 <= rank < size:
            raise UsageError(f"RANK={rank} is outside WORLD_SIZE={size}")
        return World(rank, size, local, group=True)

    @staticmethod
    def array(rank: int, size: int) -> World:
        """Rank ``rank`` of ``size`` independent processes (--rank / --world-size)."""
        if size < 1 or not 0 <= rank < size:
            raise UsageError(f"--rank {rank} must lie in 0..{size - 1} (--world-size {size})")
        return World(rank, size, rank, group=False)

    def device(self, device: str) -> str:
        """This rank's device for a chosen one: under torchrun ``cuda`` (also what --device
        auto picks on a GPU node) becomes cuda:LOCAL_RANK, one GPU per process, round-robin
        when a node runs more processes than it has GPUs; made the current device."""
        if not self.group or device != "cuda":
            return device
        import torch

        index = self.local_rank % max(1, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return f"cuda:{index}"

    def part(self, items: Sequence[T]) -> list[T]:
        """This rank's share of a list every rank sees in the same order: items rank,
        rank + size, ... (interleaved, so a sorted list spreads its large and small
        images over all ranks)."""
        return list(items[self.rank :: self.size])

    # ---- collectives (only with a process group; identity for one process) -------------------

    def barrier(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None on the other ranks."""
        if not self.group:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` on every rank, in rank order."""
        if not self.group:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.group:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place over all ranks: op is sum, min or max."""
        if self.group:
            import torch.distributed as dist

            ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
            dist.all_reduce(t, op=ops[op])
        return t


def timeout() -> datetime.timedelta:
    """How long a collective may wait for the slowest rank (GQTOK_DIST_TIMEOUT seconds)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return datetime.timedelta(seconds=max(1.0, seconds))


def start(world: World, backend: str | None = None) -> None:
    """Join torchrun's process group (env:// rendezvous). ``backend`` defaults to gloo, which
    carries the small CPU objects of exports and evaluations; training passes nccl on GPUs."""
    if not world.group:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend or "gloo", timeout=timeout())


def stop(world: World) -> None:
    """Leave the process group (torch warns at exit about one that was never destroyed)."""
    if not world.group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
