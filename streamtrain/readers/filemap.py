"""A read-only memory map of a file whose pages mapped into this process stay within a budget,
and rows of fixed size read from it in any order (uncompressed HDF5 is read in place this way)."""

from __future__ import annotations

import mmap
import os

import numpy as np

from ..errors import DataError

__all__ = ["FileMap", "RowMap", "FOLIO_BYTES"]

# The largest page-cache folio a fault may map (the PMD size: 2 MB with 4 KB pages).
FOLIO_BYTES = mmap.PAGESIZE * mmap.PAGESIZE // 8


class FileMap:
    """A read-only memory map of a file, whose pages mapped into this process stay within a limit.

    A fault maps a whole page-cache folio (up to FOLIO_BYTES, aligned), so a random
    gather soon maps much of the file. Gathers are therefore planned by chunk: the
    folio-sized blocks of the file that the chunks touched since the last drop
    overlap are counted, and before the count would pass the limit the mapped pages
    are dropped from this process (``MADV_DONTNEED``: the OS keeps them cached, the
    next access maps them again). Resident memory stays bounded by configuration;
    reads run at memory speed.
    """

    def __init__(self, path: str, limit_bytes: int):
        self.path = path
        # kept open: its size is the mapped file's own (a file replaced under the name leaves the map valid)
        self._file = open(path, "rb")
        self.map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            self.map.madvise(mmap.MADV_RANDOM)  # no read-around: a fault maps one folio, not several
        self.bytes = np.frombuffer(self.map, dtype=np.uint8)
        self.limit_bytes = int(limit_bytes)
        self._ranges: list[tuple[np.ndarray, np.ndarray]] = []  # per chunk: first and last block
        self._mapped = np.zeros(-(-len(self.map) // FOLIO_BYTES), dtype=bool)  # blocks since the last drop
        self._n_mapped = 0

    def add_ranges(self, starts: np.ndarray, stops: np.ndarray) -> None:
        """Each chunk's bytes ``starts[c]:stops[c]`` (one call per dataset sharing the chunks)."""
        self._ranges.append((starts // FOLIO_BYTES, (stops - 1) // FOLIO_BYTES))

    def blocks(self, chunks: np.ndarray) -> np.ndarray:
        """The folio-sized blocks of the file that these chunks' bytes overlap (ascending)."""
        firsts = np.concatenate([lo[chunks] for lo, _ in self._ranges])
        counts = np.concatenate([hi[chunks] - lo[chunks] + 1 for lo, hi in self._ranges])
        # Every block of every range: each first block repeated, plus 0, 1, ... within its range.
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.unique(np.repeat(firsts, counts) + within)

    def admit(self, blocks: np.ndarray) -> None:
        """Count ``blocks`` as mapped, first dropping the mapped pages if the count would pass the limit."""
        new = blocks[~self._mapped[blocks]]
        if self._n_mapped and (self._n_mapped + len(new)) * FOLIO_BYTES > self.limit_bytes:
            self.drop()
            new = blocks
        self._mapped[new] = True
        self._n_mapped += len(new)

    def pieces(self, chunk_of: np.ndarray, touched: np.ndarray):
        """Positions into a gather's rows (whose chunks are ``chunk_of``; ``touched``, ascending,
        without repeats), piece by piece, each gathered before the next is asked for: pages are
        dropped in between where needed."""
        self.check()
        blocks = self.blocks(touched)
        capacity = max(1, self.limit_bytes // FOLIO_BYTES)
        if len(blocks) <= capacity:
            self.admit(blocks)
            yield slice(None)
            return
        # More of the file than the limit maps at once (global shuffle of a file larger than it):
        # gather a run of chunks at a time, dropping the pages in between.
        order = np.argsort(chunk_of, kind="stable")
        firsts = np.append(np.searchsorted(chunk_of[order], touched), len(order))
        start, piece = 0, np.zeros(0, dtype=np.int64)
        for k in range(len(touched) + 1):
            if k < len(touched):
                grown = np.union1d(piece, self.blocks(touched[k:k + 1]))
                if k == start or len(grown) <= capacity:
                    piece = grown
                    continue
            self.drop()  # a piece is as much as the limit allows: nothing mapped before can stay
            self.admit(piece)
            yield order[firsts[start]:firsts[k]]
            start, piece = k, np.zeros(0, dtype=np.int64)
            if k < len(touched):
                piece = self.blocks(touched[k:k + 1])

    def check(self) -> None:
        """Refuse to read from a file that has shrunk since it was mapped: a read of a page past its
        new end would kill the process (SIGBUS). A stat per gather; a file cut during one gather
        still cannot be caught."""
        try:
            size = os.fstat(self._file.fileno()).st_size
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: can no longer be read ({getattr(e, 'strerror', None) or e}); it "
                            "changed while training read it") from None
        if size < len(self.map):
            raise DataError(f"{self.path}: shrank from {len(self.map):,} to {size:,} bytes while training read it "
                            "(truncated or rewritten in place); restore the file, then resume")

    def drop(self) -> None:
        """Unmap every page from this process now (the OS keeps them cached)."""
        if hasattr(self.map, "madvise"):  # not on Windows, whose OS trims working sets itself
            self.map.madvise(mmap.MADV_DONTNEED)
        self._mapped[:] = False
        self._n_mapped = 0

    def will_need(self, start: int, stop: int) -> None:
        """Ask the OS to start reading bytes ``start:stop`` (for data not in the page cache yet)."""
        if hasattr(mmap, "MADV_WILLNEED") and stop > start:
            start -= start % mmap.PAGESIZE
            self.map.madvise(mmap.MADV_WILLNEED, start, min(stop, len(self.map)) - start)

    def close(self) -> None:
        self.bytes = None
        try:
            self.map.close()
        except BufferError:  # a row view is still alive somewhere: the map goes with it
            pass
        self._file.close()


class RowMap:
    """Rows of fixed size stored plainly in a file (in chunks at known byte offsets), read through
    a ``FileMap`` of it. The file must not be truncated while open: a mapped read past its end
    would kill the process, so the reader checks its size when it opens it."""

    def __init__(self, file_map: FileMap, chunk_offsets, chunk_rows, row_bytes, dtype, row_shape):
        self.file_map = file_map
        self.chunk_offsets, self.chunk_rows = chunk_offsets, chunk_rows
        self.row_bytes, self.dtype, self.row_shape = row_bytes, dtype, row_shape
        # Every byte offset as the start of a row, each row one opaque item: a gather is then one
        # fancy index copying whole rows (measured twice as fast as indexing rows of numbers).
        self._rows = np.ndarray((len(file_map.map) - row_bytes + 1,), np.dtype((np.void, row_bytes)),
                                buffer=file_map.map, strides=(1,))

    def byte_start(self, rows: np.ndarray) -> np.ndarray:
        """Where each row starts in the file."""
        c = rows // self.chunk_rows
        return self.chunk_offsets[c] + (rows - c * self.chunk_rows) * self.row_bytes

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order), as stored."""
        starts = self.byte_start(rows)
        rb = self.row_bytes
        n = len(rows)
        if n and starts[-1] - starts[0] == (n - 1) * rb and np.all(np.diff(starts) == rb):
            s = int(starts[0])
            out = self.file_map.bytes[s:s + n * rb].copy()  # rows that follow on in the file: one copy
        else:
            out = self._rows[starts]
        return out.view(self.dtype).reshape((n, *self.row_shape))

    def view(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` of one chunk, as stored, viewed in the map (valid while it is open)."""
        return np.ndarray((b - a, *self.row_shape), self.dtype, buffer=self.file_map.map,
                          offset=int(self.byte_start(np.array([a]))[0]))

    def close(self) -> None:
        self._rows = None  # releases the file map's buffer, so that it can close

    def will_need(self, a: int, b: int) -> None:
        """Start reading rows ``a:b`` (of one chunk) into the page cache."""
        if b > a:
            first, last = self.byte_start(np.array([a, b - 1], np.int64))
            self.file_map.will_need(int(first), int(last) + self.row_bytes)
