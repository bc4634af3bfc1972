"""Sampler + dataset -> (X, y) batches, read and decoded in a background thread."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from .readers.base import Dataset
from .sampling import Sampler

__all__ = ["Loader"]

_DONE = object()


class Loader:
    """Iterate ``(rows, X, y)`` batches of a dataset in the sampler's order.

    A background thread reads up to ``prefetch`` batches ahead into a bounded
    queue, so decoding overlaps with training. Stopping early, an exception
    on either side, or Ctrl-C all stop and join the thread.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, prefetch: int = 8):
        self.dataset, self.sampler, self.prefetch = dataset, sampler, max(1, int(prefetch))
        if sampler.shuffle == "window":
            # The cache must hold a whole window, or window shuffle would re-read chunks.
            row_bytes = dataset.n_features * dataset.dtype.itemsize + 8
            dataset.cache_bytes = max(dataset.cache_bytes,
                                      (sampler.window_rows + int(dataset.chunk_sizes.max())) * row_bytes)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        return self.iter_epoch()

    def iter_epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """The remaining batches of the sampler's current epoch."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for rows in self.sampler.iter_epoch():
                    X, y = self.dataset.read(rows)
                    while not stop.is_set():
                        try:
                            q.put((rows, X, y), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                item = _DONE
            except BaseException as e:  # handed to the consumer, re-raised there
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        thread = threading.Thread(target=produce, name="streamtrain-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()
