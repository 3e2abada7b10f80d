"""Overlap image I/O with the network: ordered, bounded read-ahead on worker threads.

Decoding a JPEG/PNG or writing one takes milliseconds to tens of milliseconds, the network
hundreds; Pillow and zlib release the GIL, so a worker thread hides that I/O behind the torch
pass instead of adding to it. Read-ahead is bounded so memory stays a few batches deep.

Thread policy for small machines (measured on 2 cores): torch gets every core, I/O gets one
worker there (more workers only steal cycles from the network), more on bigger machines. The
OpenMP threads of torch wait passively (``OMP_WAIT_POLICY=PASSIVE``, set before torch loads
unless the user set it): spinning waiters turn any other busy thread or process on a 2-core
machine into a 3x slowdown (measured: 2 threads beside another job, 62 s spinning, 21 s
passive, 21 s with 1 thread).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def passive_openmp() -> bool:
    """Ask OpenMP for passive waiting; only works before torch is imported (returns whether
    torch was still unloaded). A user's own OMP_WAIT_POLICY wins."""
    import sys

    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True


def available_cores() -> int:
    """Cores this process may run on (affinity / container limits), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_io_workers(cores: int | None = None) -> int:
    cores = cores or available_cores()
    return 1 if cores <= 2 else min(4, cores // 2)


def configure_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` (default: every available core) intra-op threads; returns it.

    One inter-op thread: gqtok never runs independent ops concurrently, and extra pools only
    compete with the intra-op threads and the I/O workers on a 2-core machine.
    """
    import torch

    n = threads or available_cores()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        pass
    return n


def pick_device(name: str) -> str:
    """"cpu" or "cuda" for a user's ``auto``/``cpu``/``cuda``; ValueError for anything else
    or for CUDA on a machine without it. One rule for every command that runs a network."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    return name


def prefetch(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 1, ahead: int = 8
) -> Iterator[tuple[T, R | BaseException]]:
    """``(item, fn(item))`` in input order, computed up to ``ahead`` items in advance on
    ``workers`` threads; an exception is returned in place of its result, not raised, so one
    bad file does not stop a batch. ``workers=0`` runs everything inline."""
    if workers <= 0:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as e:  # noqa: BLE001 - handed to the caller
                yield item, e
        return
    queue: deque[tuple[T, Future[R]]] = deque()
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gqtok-io") as pool:
        try:
            for item in it:
                queue.append((item, pool.submit(fn, item)))
                if len(queue) >= max(1, ahead):
                    yield _result(*queue.popleft())
            while queue:
                yield _result(*queue.popleft())
        finally:
            for _, fut in queue:
                fut.cancel()


def _result(item: T, fut: Future[R]) -> tuple[T, R | BaseException]:
    try:
        return item, fut.result()
    except Exception as e:  # noqa: BLE001 - handed to the caller
        return item, e


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
