"""Sampler + dataset -> (X, y) batches, read and decoded in a background thread."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from typing import Callable, Iterator

import numpy as np

from ..readers.base import Dataset
from ..readers.layout import kept
from . import decoder as _decoder
from .sampling import Sampler
from .scaling import standardize

__all__ = ["Loader", "window_rows_for", "start_decoder", "check_budget"]

_DONE = object()


class _Stopped(Exception):
    """The consumer went away while the gatherer waited for a window."""
# Rows gathered per read: big enough that per-chunk bookkeeping is amortised over many batches.
GROUP_ROWS = 32768
# How many groups ahead the chunk prefetcher may decode.
AHEAD = 2
# GIL switch interval while a decoding thread shares the process with the trainer. The
# default 5 ms makes a thread returning from a GIL-free decode wait up to 5 ms for a
# Python-busy trainer to let go: measured, reads of gzip HDF5 chunks ran 1.7x slower.
SWITCH_INTERVAL = 0.0002
# Who decodes shuffle windows: "thread" (a helper thread), "process" (worker processes, where
# the platform allows), or "auto" (the processes for compressed data of MIN_BYTES or more).
DECODERS = ("auto", "thread", "process")


def check_budget(window_mb: float) -> None:
    """Refuse a shuffle budget beyond the memory this machine has available now."""
    from ..errors import ConfigError

    available = _decoder.available_memory()
    if available is not None and window_mb * 2**20 > available:
        raise ConfigError(f"--window-mb {window_mb:g} is more than the memory available now "
                          f"({available / 2**20:,.0f} MB); lower it")


def window_rows_for(budget_bytes: float, dataset: Dataset) -> int:
    """Rows per shuffle window so that the loader's buffers (three windows: the one being
    served, the next for batches that straddle the two, and the one being decoded) fit in
    ``budget_bytes``."""
    return max(1, int(budget_bytes / 3 / _row_bytes(dataset)))


def _row_bytes(dataset: Dataset) -> int:
    """Bytes a row takes in the loader's buffers: features, plus up to 8 for its label."""
    return dataset.n_features * dataset.dtype.itemsize + 8


def _buffered(dataset: Dataset, shuffle: str, world_size: int) -> bool:
    """Whether batches come from window buffers: window shuffle of data decoded whole-chunk, one worker.
    (Data gathered in place, memory or uncompressed HDF5, and shards use the gather path.)"""
    return shuffle == "window" and world_size == 1 and dataset.capabilities.decodes_chunks


def _wants_process(dataset: Dataset, shuffle: str, world_size: int, decoder: str) -> bool:
    """Whether windows of this data are decoded by worker processes (see DECODERS)."""
    if decoder == "thread" or not _buffered(dataset, shuffle, world_size) or not _decoder.usable(dataset):
        return False
    return decoder == "process" or dataset.n_rows * dataset.n_features * dataset.dtype.itemsize >= _decoder.MIN_BYTES


def _slot_rows(dataset: Dataset, window_rows: int) -> int:
    """Rows of a shared window buffer: a window (at least a chunk), never more than the data holds."""
    return min(max(int(window_rows), int(dataset.chunk_sizes.max())), int(dataset.n_rows))


def start_decoder(dataset: Dataset, window_rows: int, shuffle: str = "window", world_size: int = 1,
                  decoder: str = "auto", workers: int | None = None):
    """The window-decoding processes for this data (``workers`` of them; None: the default), started
    now so that their start-up (~0.35 s) overlaps other set-up work; hand them to
    ``Loader(process=...)``. None where none are used."""
    if not _wants_process(dataset, shuffle, world_size, decoder):
        return None
    slot_rows = _slot_rows(dataset, window_rows)
    return _decoder.DecoderProcess(dataset, slot_rows, _decoder.worker_count(dataset, slot_rows, workers))


class _WindowBuffers:
    """Window shuffle served from contiguous window buffers.

    A helper thread decodes each window's chunks, in order and once each, into one
    array (or has a ``DecoderProcess`` do so, into shared memory); batches are then
    one fancy index into it, in batch order (no sort, no scatter, no per-chunk work
    per batch).
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, stop: threading.Event, decoder=None):
        self.ds, self.stop, self.decoder = dataset, stop, decoder
        self.plan = sampler.plan()
        plan = self.plan
        self.window_of_chunk = np.empty(dataset.n_chunks, dtype=np.int64)
        for w in range(len(plan.win_chunk_start) - 1):
            self.window_of_chunk[plan.chunks[plan.win_chunk_start[w]:plan.win_chunk_start[w + 1]]] = w
        first = sampler.position * sampler.world_size + sampler.rank
        self.first_window = int(np.searchsorted(plan.win_row_start, first, side="right") - 1)
        self.ready: queue.Queue = queue.Queue(maxsize=1)
        self.resident: dict[int, tuple] = {}

    def build(self) -> None:
        """Decode windows one after another into buffers (runs in the helper thread)."""
        ds, plan = self.ds, self.plan
        for w in range(self.first_window, len(plan.win_chunk_start) - 1):
            chunks = plan.chunks[plan.win_chunk_start[w]:plan.win_chunk_start[w + 1]]
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

    def _hand_over(self, w: int, window) -> bool:
        """Queue a decoded window for the gatherer; False if the consumer stopped meanwhile."""
        while not self.stop.is_set():
            try:
                self.ready.put((w, window), timeout=0.1)
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
                    raise _Stopped from None
                continue
            if isinstance(got, BaseException):
                raise got
            self.resident[got[0]] = got[1]
        for old in [k for k in self.resident if k < w - 1]:
            slot = self.resident.pop(old)[4]  # served: free it for the windows to come
            if slot is not None:
                self.decoder.release(slot)
        return self.resident[w]

    def gather_group(self, group: list[np.ndarray], transform, scale=None):
        """``[(rows, X, y), ...]`` for a list of batches, gathered with one fancy index."""
        return _split(group, *self._gather(np.concatenate(group) if len(group) > 1 else group[0], scale), transform)

    def gather(self, rows: np.ndarray, scale=None):
        """``(X, y)`` of ``rows`` (in this order), less rows skipped for NaN/Inf."""
        return kept(*self._gather(rows, scale))

    def _gather(self, rows: np.ndarray, scale=None):
        # Windows are visited in order and dropped once passed: each group is gathered once.
        chunk = np.searchsorted(self.ds.bounds, rows, side="right") - 1
        wins = self.window_of_chunk[chunk]
        w_lo, w_hi = int(wins.min()), int(wins.max())
        X = np.empty((len(rows), self.ds.n_features), dtype=self.ds.dtype)
        y = keep = None
        for w in range(w_lo, w_hi + 1):
            Xw, yw, kw, offset, _ = self._window(w)
            sel = slice(None) if w_lo == w_hi else (wins == w)
            pos = offset[chunk[sel]] + (rows[sel] - self.ds.bounds[chunk[sel]])
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
        return _scaled(X, scale, owned=True), y, keep


class _ReadAhead:
    """Tells data gathered in place from a file map which chunks come next, so that the OS reads
    them while the current ones are used: the next window (window shuffle) or the next rows
    (storage order), and when a window is done with, so that its pages leave the process.
    Global shuffle touches the whole file at random and gets no hints."""

    def __init__(self, dataset: Dataset, sampler: Sampler):
        self.ds, self.shuffle = dataset, None if sampler.replacement else sampler.shuffle
        self.stride, self.offset = sampler.world_size, sampler.rank
        self.plan = sampler.plan() if self.shuffle == "window" else None
        self.hinted = -1  # the last window (window shuffle) or chunk (storage order) hinted
        self.window = 0  # the window being served

    def at(self, position: int, ahead: int) -> None:
        """The consumer is at ``position`` of its epoch and will soon need the ``ahead`` rows after it."""
        first = position * self.stride + self.offset
        if self.plan is not None:  # the windows of those rows, and the one after
            plan = self.plan
            w0, w1 = np.searchsorted(plan.win_row_start, [first, first + ahead * self.stride], side="right") - 1
            if w0 > self.window:  # the windows before are done with: their pages can go
                self.ds.release()
                self.window = int(w0)
            for v in range(max(int(w0), self.hinted + 1), min(int(w1) + 2, len(plan.win_chunk_start) - 1)):
                for c in plan.chunks[plan.win_chunk_start[v]:plan.win_chunk_start[v + 1]].tolist():
                    self.ds.prefetch(c)
                self.hinted = v
        elif self.shuffle == "none":
            last = min(first + ahead * self.stride, self.ds.n_rows - 1)
            c0, c1 = np.searchsorted(self.ds.bounds, [first, last], side="right") - 1
            for c in range(max(int(c0), self.hinted + 1), int(c1) + 1):
                self.ds.prefetch(c)
            self.hinted = max(self.hinted, int(c1))


def _split(group: list[np.ndarray], X: np.ndarray, y: np.ndarray | None, keep: np.ndarray | None, transform):
    """The group's arrays cut back into its batches and transformed: ``[(rows, X, y), ...]``."""
    if keep is None:
        X, y = transform(X, y)
    out, a = [], 0
    for r in group:
        Xb, yb = X[a:a + len(r)], None if y is None else y[a:a + len(r)]
        if keep is not None:  # rows skipped for NaN/Inf: each batch keeps the rest of its rows
            Xb, yb = transform(*kept(Xb, yb, keep[a:a + len(r)]))
        out.append((r, Xb, yb))
        a += len(r)
    return out


def _as_is(X, y):
    return X, y


def _scaled(X: np.ndarray, scale, owned: bool) -> np.ndarray:
    """The scaler's standardisation, in place where ``X`` is the loader's own array."""
    return X if scale is None else standardize(X, *scale, in_place=owned and X.flags.writeable)


class Loader:
    """Iterate ``(rows, X, y)`` batches of a dataset in the sampler's order.

    A background thread reads ahead into a bounded queue, so decoding overlaps
    with training. It reads groups of consecutive batches with one gather each
    (every touched chunk once per group; windows of compressed data are decoded
    ahead, by worker processes where ``decoder`` allows) and splits them again,
    so the per-batch cost is a slice. ``scale=(mean, factor)`` makes the features
    ``(X - mean) * factor`` in the arrays they were gathered into;
    ``transform(X, y) -> (X, y)``, if given, is applied after it, to whole groups
    (it must work row by row, as feature scaling and label encoding do). Stopping
    early, an exception on either side, or Ctrl-C all stop and join the threads
    and processes.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, prefetch: int = 2, whole_groups: bool = False,
                 transform: Callable | None = None, decoder: str = "auto", process=None,
                 scale: tuple[np.ndarray, np.ndarray] | None = None, workers: int | None = None):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
        self.dataset, self.sampler, self.prefetch = dataset, sampler, max(1, int(prefetch))
        self.transform = transform or _as_is
        # Features become (X - mean) * factor, in the arrays the rows are gathered into, before ``transform``.
        self.scale = None if scale is None else tuple(np.asarray(a, dtype=dataset.dtype) for a in scale)
        self.decoder, self.workers = decoder, workers
        self._process: _decoder.DecoderProcess | None = process  # from start_decoder, if any
        # whole_groups: yield each group of consecutive batches as one (rows, X, y), in order
        # (the compiled online loop takes them so; batch boundaries are then the caller's).
        self.whole_groups = whole_groups
        self.buffered = _buffered(dataset, sampler.shuffle, sampler.world_size)
        dataset.set_budget(3 * sampler.window_rows * _row_bytes(dataset))  # what window_rows_for was given

    def _decoder_process(self):
        """The worker processes decoding windows, started on first use and kept across epochs, or None."""
        ds, s = self.dataset, self.sampler
        if not _wants_process(ds, s.shuffle, s.world_size, self.decoder):
            return None
        slot_rows = _slot_rows(ds, s.window_rows)
        if self._process is not None and self._process.slot_rows < slot_rows:
            self.close()
        if self._process is None:
            self._process = _decoder.DecoderProcess(ds, slot_rows, _decoder.worker_count(ds, slot_rows, self.workers))
        self._process.begin_epoch()
        return self._process

    def close(self) -> None:
        """Stop the decoding process, if one was started (iterating again starts a new one)."""
        if self._process is not None:
            self._process.close()
            self._process = None

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        return self.iter_epoch()

    @contextlib.contextmanager
    def sharing_cores(self):
        """Run the consumer's numerical work in here so that it leaves a core to the loader's threads.

        While the loader works in the background (decoding, gathering shuffled rows),
        BLAS is limited to the other cores (OpenBLAS threads busy-wait, and on 2 cores
        a second one takes the loader's core: measured, decoding then stopped
        overlapping with training at all, and in-memory window shuffle trained 10%
        slower) and the GIL switch interval is shortened. Both are restored after.
        In-memory rows in storage order, served as views, change nothing (measured:
        limiting BLAS there cost the in-memory step 10%).
        """
        s = self.sampler
        if not (not self.dataset.capabilities.in_memory or s.shuffle != "none" or s.replacement):
            yield
            return
        from threadpoolctl import threadpool_limits

        cores = _decoder.usable_cores()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            with threadpool_limits(max(1, cores - 1), user_api="blas"):
                yield
        finally:
            sys.setswitchinterval(interval)

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
        chunk_bytes = int(ds.chunk_sizes.max()) * _row_bytes(ds)
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
                ds.prefetch(c)

    def _read_group(self, group: list[np.ndarray]):
        rows = np.concatenate(group) if len(group) > 1 else group[0]
        got = None
        if hasattr(self.dataset, "view") and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
            # In-memory data in storage order (shuffle="none") is served as views: nothing to copy.
            got = self.dataset.view(int(rows[0]), int(rows[-1]) + 1)
        X, y, keep = (*got, None) if got is not None else self.dataset.gather(rows)
        return _split(group, _scaled(X, self.scale, owned=got is None), y, keep, self.transform)

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
        windows = None
        if self.buffered:
            windows = _WindowBuffers(self.dataset, self.sampler, stop, self._decoder_process())

            def build():
                try:
                    windows.build()
                except BaseException as e:  # re-raised by the gatherer
                    while not stop.is_set():
                        try:
                            windows.ready.put(e, timeout=0.1)
                            return
                        except queue.Full:
                            continue

            helpers.append(threading.Thread(target=build, name="streamtrain-windows", daemon=True))
        elif self.dataset.capabilities.decodes_chunks:
            helpers.append(threading.Thread(target=self._swallow(self._prefetch_chunks), args=(done, stop),
                                            name="streamtrain-prefetch", daemon=True))

        ds = self.dataset
        caps = ds.capabilities
        read_ahead = _ReadAhead(ds, self.sampler) if caps.in_place and not caps.in_memory else None

        def produce():
            try:
                position = self.sampler.position
                for group in self._row_groups():
                    if read_ahead is not None:
                        size = sum(len(r) for r in group)
                        read_ahead.at(position, size + GROUP_ROWS)
                        position += size
                    if self.whole_groups:
                        rows = np.concatenate(group)
                        if windows is not None:
                            X, y = windows.gather(rows, self.scale)
                        else:
                            X, y = kept(*self.dataset.gather(rows))
                            X = _scaled(X, self.scale, owned=True)
                        batches = [(rows, *self.transform(X, y))]
                    elif windows is not None:
                        batches = windows.gather_group(group, self.transform, self.scale)
                    else:
                        batches = self._read_group(group)
                    if not put(batches):
                        return
                    done.release()
                item = _DONE
            except _Stopped:
                return
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
            if self._process is not None and self._process.busy:
                self.close()  # mid-window: stopping the worker is the quick way out
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
