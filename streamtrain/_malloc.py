"""Let glibc reuse freed chunk-sized blocks instead of mapping fresh pages for each.

By default glibc serves allocations above a (dynamic) threshold with mmap and
returns them to the OS on free, so every new chunk or batch array costs a page
fault per 4 KiB page: for uncompressed data that is as expensive as reading it
(measured: a scan of uncompressed HDF5 ran 10M instead of 55M rows/s). Raising
the mmap and trim thresholds keeps such blocks on the heap for reuse. Only the
command line and the benchmark call this; a library does not change its host
process's allocator.

``touch_pages`` and ``PagesAhead`` map a large array's pages in a thread ahead of its first real
writes (a table's initial draw, its optimiser's zeros): mapping a fresh page costs the system a
page fault and a page of zeros, which in a virtual machine can cost as much as the writes.
"""

from __future__ import annotations

import ctypes

__all__ = ["reuse_freed_memory", "touch_pages", "PagesAhead"]

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


def touch_pages(a) -> None:
    """Write zero to an element of each page of the C-contiguous array ``a`` (which holds zeros, or
    is about to be overwritten): the system maps its pages now, not at their first real write.
    numpy lets the GIL go while it writes."""
    flat = a.reshape(-1)
    every = max(1, 4096 // a.itemsize)
    for s in range(0, flat.size, 1 << 22):
        flat[s:s + (1 << 22):every] = 0


class PagesAhead:
    """A thread mapping the pages of an array's blocks (``bounds``: row ranges, in order) ahead of
    a writer that fills them in order and calls ``claim(k)`` before writing block ``k``: a block
    the thread is on is waited for, one the writer has claimed is left alone (the thread stops
    there). Mapping a page costs about as much as drawing its random values; the two overlap."""

    def __init__(self, a, bounds: list[tuple[int, int]]):
        import threading

        self.a, self.bounds = a, bounds
        self.state = bytearray(len(bounds))  # 0 untouched, 1 being mapped, 2 the writer's, 3 mapped
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="streamtrain-pages", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for k in range(1, len(self.bounds)):
            with self.cond:
                if self.state[k]:
                    return
                self.state[k] = 1
            try:
                touch_pages(self.a[self.bounds[k][0]:self.bounds[k][1]])
            finally:
                with self.cond:
                    self.state[k] = 3
                    self.cond.notify_all()

    def claim(self, k: int) -> None:
        """Block ``k`` is the writer's from now on (back once the thread is not on it)."""
        with self.cond:
            while self.state[k] == 1:
                self.cond.wait()
            self.state[k] = 2

    def close(self) -> None:
        """Stop the thread (the blocks left are the writer's) and wait for it."""
        with self.cond:
            for k, s in enumerate(self.state):
                if s == 0:
                    self.state[k] = 2
        self.thread.join()
