"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

glibc serves every block above 128 KiB with its own mmap and unmaps it on free, and trims
the heap top above 128 KiB; a later tensor of the same size then page-faults all of its
memory in again. The networks make tens of fresh 2-25 MB tensors per image; keeping freed
memory made them a few % to 10 % faster on 2 cores (bench/codec_speed.py, 4 interleaved pairs
against GQTOK_MALLOC=system: encoder network 262-307 -> 240-276 ms, 768x512 decode 653-706 ->
598-616 ms). The price is that the process keeps up to TRIM_BYTES of freed memory for reuse
instead of returning it (peak RSS is unchanged).

Set GQTOK_MALLOC=system to keep the platform's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # from glibc's <malloc.h>
MMAP_BYTES = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit systems
TRIM_BYTES = 1 << 30
TOP_PAD_BYTES = 64 * 2**20

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; returns whether they are set.

    A no-op (False) off Linux/glibc, or when GQTOK_MALLOC=system.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("GQTOK_MALLOC", "").lower() == "system" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_BYTES),
            (M_TRIM_THRESHOLD, TRIM_BYTES),
            (M_TOP_PAD, TOP_PAD_BYTES),
        )
    )
    return _done
