"""Where a loader's rows come from: one source per way of reading, chosen in one place.

A source reads the rows of a group of batches in the epoch's order (``read``), may run
helpers in the background (``start``), and may hear where the consumer is (``at``):

- ``InPlace``: rows copied straight from memory or a memory-mapped file in any order
  (arrays, uncompressed HDF5), with read-ahead hints for the file's next chunks;
- ``DecodedWindows``: window shuffle of compressed data: each window's chunks decoded once,
  in order, into one buffer (by a thread or by worker processes), batches indexed from it;
- ``ChunkPrefetch``: other orders of compressed data: a helper decodes upcoming groups'
  chunks into the dataset's cache while the loader gathers.

``choose_source`` decides from the dataset's capabilities and the epoch's plan.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from ..readers.base import Dataset
from . import decoder as _decoder
from .sampling import Plan, Sampler

__all__ = ["Source", "InPlace", "DecodedWindows", "ChunkPrefetch", "choose_source", "wants_process", "slot_rows", "row_bytes",
           "Stopped"]

# How many groups ahead the chunk prefetcher may decode.
AHEAD = 2


def row_bytes(dataset: Dataset) -> int:
    """Bytes a row takes in the loader's buffers: features, plus up to 8 for its label."""
    return dataset.n_features * dataset.dtype.itemsize + 8

class Stopped(Exception):
    """The consumer went away while the loader waited for a window."""


class Source:
    """Rows of a dataset in an epoch's order."""

    def __init__(self, dataset: Dataset, sampler: Sampler, plan: Plan):
        self.ds, self.sampler, self.plan = dataset, sampler, plan

    def start(self, stop: threading.Event, groups) -> list[threading.Thread]:
        """Background helpers for this epoch (``groups()`` iterates the epoch's groups again)."""
        return []

    def at(self, position: int, ahead: int) -> None:
        """The consumer is at ``position`` of its epoch and will soon need the ``ahead`` rows after it."""

    def group_done(self) -> None:
        """A group has been read (and handed on)."""

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, bool]:
        """``(X, y, keep, owned)`` of ``rows`` in this order; ``owned``: X is a new array (may be
        changed in place), not a view of the data."""
        X, y, keep = self.ds.gather(rows)
        return X, y, keep, True


class InPlace(Source):
    """Rows copied from memory or from a mapped file in any order: nothing to decode.

    For files, the OS is told which chunks come next (the next window, or the next rows in
    storage order) so that it reads them while the current ones are used, and when a window
    is done with, so that its pages leave the process. Global shuffle touches the whole
    file at random and gets no hints; arrays in storage order are served as views.
    """

    def __init__(self, dataset, sampler, plan):
        super().__init__(dataset, sampler, plan)
        caps = dataset.capabilities
        self.hints = not caps.in_memory and (plan.windows is not None or plan.sequential)
        self.views = caps.in_memory and plan.sequential and hasattr(dataset, "view")
        self.hinted = -1  # the last window (windowed order) or chunk (storage order) hinted
        self.window = 0  # the window being served

    def at(self, position, ahead):
        if not self.hints:
            return
        s, ds, windows = self.sampler, self.ds, self.plan.windows
        first = s.global_position(position)
        if windows is not None:  # the windows of those rows, and the one after
            w0, w1 = windows.of_position([first, s.global_position(position + ahead)])
            if w0 > self.window:  # the windows before are done with: their pages can go
                ds.release()
                self.window = int(w0)
            for v in range(max(int(w0), self.hinted + 1), min(int(w1) + 2, len(windows))):
                for c in windows.chunks_of(v).tolist():
                    ds.prefetch(c)
                self.hinted = v
        else:
            last = min(s.global_position(position + ahead), ds.n_rows - 1)
            c0, c1 = np.searchsorted(ds.bounds, [first, last], side="right") - 1
            for c in range(max(int(c0), self.hinted + 1), int(c1) + 1):
                ds.prefetch(c)
            self.hinted = max(self.hinted, int(c1))

    def read(self, rows):
        if self.views and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
            got = self.ds.view(int(rows[0]), int(rows[-1]) + 1)  # storage order: nothing to copy
            if got is not None:
                return got[0], got[1], None, False
        return super().read(rows)


class ChunkPrefetch(Source):
    """Compressed chunks decoded ahead into the dataset's cache by a helper thread, at most AHEAD
    groups ahead, and only where those chunks fit in the cache (storage order; not global
    shuffle of compressed chunks, where the gatherer reads them itself)."""

    def __init__(self, dataset, sampler, plan):
        super().__init__(dataset, sampler, plan)
        self.done = threading.Semaphore(AHEAD)  # each group gathered frees one more

    def start(self, stop, groups):
        return [threading.Thread(target=self._prefetch, args=(stop, groups), name="streamtrain-prefetch",
                                 daemon=True)]

    def group_done(self):
        self.done.release()

    def _prefetch(self, stop: threading.Event, groups) -> None:
        ds = self.ds
        capacity = ds.cache_bytes // max(int(ds.chunk_sizes.max()) * row_bytes(ds), 1)
        recent: list[set[int]] = []  # chunks of the groups that may still be in use
        try:
            for group in groups():
                chunks = set((np.searchsorted(ds.bounds, np.concatenate(group), side="right") - 1).tolist())
                recent = (recent + [chunks])[-(AHEAD + 2):]
                while not self.done.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                # Decoding more than the cache holds would evict chunks still to be gathered.
                if len(set().union(*recent)) > capacity:
                    continue
                for c in sorted(chunks):
                    if stop.is_set():
                        return
                    ds.prefetch(c)
        except Exception:  # only a speed-up: errors surface when the gatherer reads the chunk
            pass


class DecodedWindows(Source):
    """Window shuffle served from contiguous window buffers.

    A helper thread decodes each window's chunks, in order and once each, into one array
    (or has a ``DecoderProcess`` do so, into shared memory); batches are then one fancy
    index into it, in batch order (no sort, no scatter, no per-chunk work per batch).
    """

    def __init__(self, dataset, sampler, plan, process=None):
        super().__init__(dataset, sampler, plan)
        self.decoder = process
        windows = plan.windows
        self.window_of_chunk = np.empty(dataset.n_chunks, dtype=np.int64)
        for w in range(len(windows)):
            self.window_of_chunk[windows.chunks_of(w)] = w
        self.first_window = int(windows.of_position(sampler.global_position(sampler.position)))
        self.ready: queue.Queue = queue.Queue(maxsize=1)
        self.resident: dict[int, tuple] = {}
        self.stop: threading.Event | None = None

    def start(self, stop, groups):
        self.stop = stop
        return [threading.Thread(target=self._build_or_report, name="streamtrain-windows", daemon=True)]

    def _build_or_report(self) -> None:
        try:
            self._build()
        except BaseException as e:  # re-raised by the gatherer
            self._hand_over(None, e)

    def _build(self) -> None:
        """Decode windows one after another into buffers (runs in the helper thread)."""
        ds, windows = self.ds, self.plan.windows
        for w in range(self.first_window, len(windows)):
            chunks = windows.chunks_of(w)
            sizes = ds.chunk_sizes[chunks]
            offset = np.full(ds.n_chunks, -1, dtype=np.int64)
            offset[chunks] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            if self.decoder is not None:
                slot = self.decoder.acquire(self.stop)
                if slot is None:
                    return
                X, y, keep, chunks_read, bytes_read = self.decoder.decode(slot, chunks, int(sizes.sum()))
            else:
                slot = None
                X = np.empty((int(sizes.sum()), ds.n_features), dtype=ds.dtype)
                y, keep, chunks_read, bytes_read = _decoder.decode_window(ds, X, chunks, self.stop)
            ds.stats["chunks_read"] += chunks_read
            ds.stats["bytes_read"] += bytes_read
            if self.stop.is_set() or not self._hand_over(w, (X, y, keep, offset, slot)):
                return

    def _hand_over(self, w, window) -> bool:
        """Queue a decoded window (or an error) for the gatherer; False if the consumer stopped meanwhile."""
        while not self.stop.is_set():
            try:
                self.ready.put(window if w is None else (w, window), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _window(self, w: int):
        while w not in self.resident:
            try:
                got = self.ready.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    raise Stopped from None
                continue
            if isinstance(got, BaseException):
                raise got
            self.resident[got[0]] = got[1]
        for old in [k for k in self.resident if k < w - 1]:
            slot = self.resident.pop(old)[4]  # served: free it for the windows to come
            if slot is not None:
                self.decoder.release(slot)
        return self.resident[w]

    def read(self, rows):
        # Windows are visited in order and dropped once passed: each group is gathered once.
        ds = self.ds
        chunk = np.searchsorted(ds.bounds, rows, side="right") - 1
        wins = self.window_of_chunk[chunk]
        w_lo, w_hi = int(wins.min()), int(wins.max())
        X = np.empty((len(rows), ds.n_features), dtype=ds.dtype)
        y = keep = None
        for w in range(w_lo, w_hi + 1):
            Xw, yw, kw, offset, _ = self._window(w)
            sel = slice(None) if w_lo == w_hi else (wins == w)
            pos = offset[chunk[sel]] + (rows[sel] - ds.bounds[chunk[sel]])
            # np.take copies whole rows straight into the output (fancy indexing: a temporary, 2x slower).
            if w_lo == w_hi:
                np.take(Xw, pos, axis=0, out=X)
            else:
                X[sel] = np.take(Xw, pos, axis=0)
            if yw is not None:
                if y is None:
                    y = np.empty((len(rows),) + yw.shape[1:], dtype=yw.dtype)
                y[sel] = np.take(yw, pos, axis=0)
            if kw is not None:
                keep = np.ones(len(rows), bool) if keep is None else keep
                keep[sel] = kw[pos]
        return X, y, keep, True


def windowed(dataset: Dataset, sampler: Sampler) -> bool:
    """Whether an epoch is served from decoded window buffers: windowed order of data decoded
    whole chunks at a time, by one worker or by each of several sharing every batch (their rows
    of a batch lie in the same window); workers with batches of their own gather instead."""
    shared = sampler.world_size == 1 or sampler.shard == "batches"
    return sampler.windowed and shared and dataset.capabilities.decodes_chunks


def wants_process(dataset: Dataset, sampler: Sampler, decoder: str) -> bool:
    """Whether windows of this data are decoded by worker processes (``decoder``: see DECODERS)."""
    if decoder == "thread" or not windowed(dataset, sampler) or not _decoder.usable(dataset):
        return False
    return decoder == "process" or dataset.n_rows * dataset.n_features * dataset.dtype.itemsize >= _decoder.MIN_BYTES


def slot_rows(dataset: Dataset, window_rows: int) -> int:
    """Rows of a shared window buffer: a window (at least a chunk), never more than the data holds."""
    return min(max(int(window_rows), int(dataset.chunk_sizes.max())), int(dataset.n_rows))


def choose_source(dataset: Dataset, sampler: Sampler, process=None) -> Source:
    """The source that serves this epoch of ``dataset`` in ``sampler``'s order (``process``: the
    window-decoding workers, where they are used)."""
    plan = sampler.plan()
    caps = dataset.capabilities
    if caps.in_place:
        return InPlace(dataset, sampler, plan)
    if windowed(dataset, sampler):
        return DecodedWindows(dataset, sampler, plan, process)
    if caps.decodes_chunks:
        return ChunkPrefetch(dataset, sampler, plan)
    return Source(dataset, sampler, plan)
