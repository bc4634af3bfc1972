"""Sampler + dataset -> (X, y) batches, read and decoded in a background thread."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from typing import Callable, Iterator

import numpy as np

from .. import _cores
from ..readers.base import Dataset
from ..readers.layout import kept
from . import decoder as _decoder
from .sampling import Sampler
from .scaling import standardize
from .sources import Stopped, choose_source, row_bytes, slot_rows, wants_process

__all__ = ["Loader", "share_cores", "window_rows_for", "start_decoder", "check_budget", "row_bytes", "GROUP_ROWS"]

_DONE = object()


# Rows gathered per read: big enough that per-chunk bookkeeping is amortised over many batches.
GROUP_ROWS = 32768
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
    return max(1, int(budget_bytes / 3 / row_bytes(dataset)))


def start_decoder(dataset: Dataset, sampler: Sampler, decoder: str = "auto", workers: int | None = None,
                  processes: int = 1):
    """The window-decoding processes for this data (``workers`` of them; None: the default, within
    this process's share of the cores where ``processes`` train on this machine), started now so
    that their start-up (~0.35 s) overlaps other set-up work; hand them to ``Loader(process=...)``.
    None where none are used."""
    if not wants_process(dataset, sampler, decoder):
        return None
    if workers is None and processes > 1:
        workers = min(_decoder.default_workers(), _decoder.cores_of_one(processes))
    rows = slot_rows(dataset, sampler.window_rows)
    return _decoder.DecoderProcess(dataset, rows, _decoder.worker_count(dataset, rows, workers))


class Group(list):
    """A group's batches ``[(rows, X, y), ...]``; ``whole`` is ``(X, y)`` of them all, of which
    the batches are consecutive slices (None where rows were skipped for NaN/Inf)."""

    whole: tuple | None = None


def _split(group: list[np.ndarray], X: np.ndarray, y: np.ndarray | None, keep: np.ndarray | None, transform):
    """The group's arrays cut back into its batches and transformed: ``[(rows, X, y), ...]``."""
    out, a = Group(), 0
    if keep is None:
        X, y = transform(X, y)
        out.whole = (X, y)
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


def share_cores(processes: int = 1) -> None:
    """``Loader.sharing_cores``'s settings while other threads read, for the rest of the process's
    life (a command that owns its process): for the BLAS libraries loaded by now."""
    from threadpoolctl import threadpool_limits

    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    threadpool_limits(max(1, _decoder.cores_of_one(processes) - 1), user_api="blas")


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
        # inline: batches made on the consumer's thread, no thread of the loader's own (sharing_cores
        # sets it where the consumer's steps take both cores: a third thread would preempt one)
        self.inline = False
        dataset.set_budget(3 * sampler.window_rows * row_bytes(dataset))  # what window_rows_for was given

    def _decoder_process(self):
        """The worker processes decoding windows, started on first use and kept across epochs, or None."""
        ds, s = self.dataset, self.sampler
        if not wants_process(ds, s, self.decoder):
            return None
        rows = slot_rows(ds, s.window_rows)
        if self._process is not None and self._process.slot_rows < rows:
            self.close()
        if self._process is None:
            self._process = _decoder.DecoderProcess(ds, rows, _decoder.worker_count(ds, rows, self.workers))
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
    def sharing_cores(self, processes: int = 1, lanes: bool = False):
        """Run the consumer's numerical work in here so that it leaves a core to the loader's threads,
        and, with ``processes`` training processes on this machine, keeps to its share of the cores.
        Yields the lanes (threads) the consumer's own steps may take: 2 where it asks for them
        (``lanes``), is the one process, has two cores or more and nothing works in the background
        (rows in memory, in storage order), else 1. Given two lanes, BLAS keeps to one thread (a
        lane each) and the loader makes its batches on the consumer's thread (``inline``).

        While the loader works in the background (decoding, gathering shuffled rows),
        BLAS is limited to the other cores (OpenBLAS threads busy-wait, and on 2 cores
        a second one takes the loader's core: measured, decoding then stopped
        overlapping with training at all, and in-memory window shuffle trained 10%
        slower) and the GIL switch interval is shortened. Both are restored after.
        In-memory rows in storage order, served as views, change nothing but where two lanes
        are given (measured: limiting BLAS to one thread there cost a one-lane step 10%).
        Several processes would each start a BLAS thread per core of the machine: each keeps to
        its share.
        """
        from threadpoolctl import threadpool_limits

        background = not (self.dataset.capabilities.in_memory and self.sampler.plan().sequential)
        if not background and processes == 1:
            cores = _decoder.cores_of_one(1)
            if lanes and cores >= 2:
                # (two lanes each calling BLAS: one thread each, or each product's threads would
                # take the other lane's core)
                self.inline = True
                try:
                    with threadpool_limits(1, user_api="blas"):
                        yield 2
                finally:
                    self.inline = False
            elif cores < _cores.affinity_cores():  # (a cgroup's CPU limit: BLAS's threads would share it)
                with threadpool_limits(cores, user_api="blas"):
                    yield 1
            else:
                yield 1
            return

        cores = _decoder.cores_of_one(processes)
        interval = sys.getswitchinterval()
        if background:
            sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            with threadpool_limits(max(1, cores - 1) if background else cores, user_api="blas"):
                yield 1
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

    def _groups(self, source):
        """Each group's batches, as the consumer takes them, in order (from ``source``, started)."""
        position = self.sampler.position
        for group in self._row_groups():
            rows = np.concatenate(group) if len(group) > 1 else group[0]
            source.at(position, len(rows) + GROUP_ROWS)
            position += len(rows)
            X, y, keep, owned = source.read(rows)
            X = _scaled(X, self.scale, owned)
            if self.whole_groups:
                yield [(rows, *self.transform(*kept(X, y, keep)))]
            else:
                yield _split(group, X, y, keep, self.transform)
            source.group_done()

    def _inline(self, source, helpers, stop, grouped: bool):
        """``iter_epoch``'s batches made on the consumer's thread, as it asks for them."""
        for t in helpers:
            t.start()
        try:
            for batches in self._groups(source):
                if grouped:
                    yield batches
                else:
                    yield from batches
        except Stopped:
            return
        finally:
            stop.set()
            for t in helpers:
                t.join()

    def iter_epoch(self, grouped: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """The remaining batches of the sampler's current epoch (``grouped``: a ``Group`` of
        consecutive batches at a time)."""
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

        source = choose_source(self.dataset, self.sampler, self._decoder_process())
        helpers = source.start(stop, self._row_groups)
        if self.inline:
            yield from self._inline(source, helpers, stop, grouped)
            return

        def produce():
            try:
                for batches in self._groups(source):
                    if not put(batches):
                        return
                item = _DONE
            except Stopped:
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
                if grouped:
                    yield item
                else:
                    yield from item
        finally:
            stop.set()
            if self._process is not None and self._process.busy:
                self.close()  # mid-window: stopping the worker is the quick way out
            for t in [thread, *helpers]:
                t.join()
