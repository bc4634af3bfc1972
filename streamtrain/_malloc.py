"""Let glibc reuse freed chunk-sized blocks instead of mapping fresh pages for each.

By default glibc serves allocations above a (dynamic) threshold with mmap and
returns them to the OS on free, so every new chunk or batch array costs a page
fault per 4 KiB page: for uncompressed data that is as expensive as reading it
(measured: a scan of uncompressed HDF5 ran 10M instead of 55M rows/s). Raising
the mmap and trim thresholds keeps such blocks on the heap for reuse. Only the
command line and the benchmark call this; a library does not change its host
process's allocator.
"""

from __future__ import annotations

import ctypes

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory(limit_bytes: int = 64 << 20) -> bool:
    """Keep freed blocks up to ``limit_bytes`` for reuse (glibc only); True if applied."""
    try:
        # The process's own symbols hold the C library's (no ldconfig subprocess, as find_library runs).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, int(limit_bytes))) and bool(mallopt(_M_TRIM_THRESHOLD, int(limit_bytes)))
