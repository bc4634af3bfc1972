"""Sampler + dataset -> (X, y) batches, read and decoded in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from .readers.base import Dataset
from .sampling import Sampler

__all__ = ["Loader", "window_rows_for"]

_DONE = object()
# Rows gathered per read: big enough that per-chunk bookkeeping is amortised over many batches.
GROUP_ROWS = 32768
# How many groups ahead the chunk prefetcher may decode.
AHEAD = 2


def window_rows_for(budget_bytes: float, dataset: Dataset) -> int:
    """Rows per shuffle window so that the loader's cache (two windows) fits in ``budget_bytes``."""
    row_bytes = dataset.n_features * dataset.dtype.itemsize + 8
    return max(1, int(budget_bytes / 2 / row_bytes))


class Loader:
    """Iterate ``(rows, X, y)`` batches of a dataset in the sampler's order.

    A background thread reads ahead into a bounded queue, so decoding overlaps
    with training. It reads groups of consecutive batches with one sorted
    gather each (every touched chunk once per group) and splits them again, so
    the per-batch cost is a slice. Stopping early, an exception on either side,
    or Ctrl-C all stop and join the thread.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, prefetch: int = 2):
        self.dataset, self.sampler, self.prefetch = dataset, sampler, max(1, int(prefetch))
        if sampler.shuffle == "window":
            # A group of batches at a window boundary needs two windows at once: hold both,
            # or the second would evict chunks the first still needs.
            row_bytes = dataset.n_features * dataset.dtype.itemsize + 8
            need = (2 * sampler.window_rows + 2 * int(dataset.chunk_sizes.max())) * row_bytes
            dataset.cache_bytes = max(dataset.cache_bytes, need)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        return self.iter_epoch()

    def _row_groups(self):
        """The epoch's remaining batches (index arrays), in lists of about GROUP_ROWS rows."""
        group, size = [], 0
        limit = max(GROUP_ROWS, self.sampler.batch_size)
        for rows in self.sampler.iter_epoch():
            group.append(rows)
            size += len(rows)
            if size >= limit:
                yield group
                group, size = [], 0
        if group:
            yield group

    def _prefetch_chunks(self, done: threading.Semaphore, stop: threading.Event) -> None:
        """Decode the chunks of upcoming groups into the cache while the gather thread works.

        Runs at most AHEAD groups ahead, and only where those chunks fit in the cache
        (window and sequential order; not global shuffle of compressed chunks).
        """
        ds = self.dataset
        chunk_bytes = int(ds.chunk_sizes.max()) * (ds.n_features * ds.dtype.itemsize + 8)
        capacity = ds.cache_bytes // max(chunk_bytes, 1)
        recent: list[set[int]] = []  # chunks of the groups that may still be in use
        for group in self._row_groups():
            chunks = set((np.searchsorted(ds.bounds, np.concatenate(group), side="right") - 1).tolist())
            recent = (recent + [chunks])[-(AHEAD + 2):]
            while not done.acquire(timeout=0.1):
                if stop.is_set():
                    return
            # Decoding more than the cache holds would evict chunks still to be gathered
            # (global shuffle of compressed chunks): then the gatherer reads them itself.
            if len(set().union(*recent)) > capacity:
                continue
            for c in sorted(chunks):
                if stop.is_set():
                    return
                ds.read_chunk(c)

    def _read_group(self, group: list[np.ndarray]):
        if len(group) == 1:
            X, y = self.dataset.read(group[0])
            return [(group[0], X, y)]
        rows = np.concatenate(group)
        order = np.argsort(rows, kind="stable")
        X_sorted, y_sorted = self.dataset.read(rows[order])
        if len(X_sorted) != len(rows):  # rows skipped for NaN/Inf: read batch by batch instead
            return [(r, *self.dataset.read(r)) for r in group]
        X = np.empty_like(X_sorted)
        X[order] = X_sorted
        y = None
        if y_sorted is not None:
            y = np.empty_like(y_sorted)
            y[order] = y_sorted
        out, a = [], 0
        for r in group:
            out.append((r, X[a:a + len(r)], None if y is None else y[a:a + len(r)]))
            a += len(r)
        return out

    def iter_epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """The remaining batches of the sampler's current epoch."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        # The prefetcher may start AHEAD groups before the gatherer; each group gathered frees one more.
        done = threading.Semaphore(AHEAD)
        helpers = []
        if self.dataset.prefetchable:
            helpers.append(threading.Thread(target=self._swallow(self._prefetch_chunks), args=(done, stop),
                                            name="streamtrain-prefetch", daemon=True))

        def produce():
            try:
                for group in self._row_groups():
                    if not put(self._read_group(group)):
                        return
                    done.release()
                item = _DONE
            except BaseException as e:  # handed to the consumer, re-raised there
                item = e
            put(item)

        thread = threading.Thread(target=produce, name="streamtrain-loader", daemon=True)
        for t in [thread, *helpers]:
            t.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            stop.set()
            for t in [thread, *helpers]:
                t.join()

    @staticmethod
    def _swallow(fn):
        """Prefetching is only a speed-up: its errors surface when the gatherer reads the chunk."""
        def run(*args):
            try:
                fn(*args)
            except Exception:
                pass
        return run
