"""Shuffle windows decoded in worker processes, so decoding never waits on the trainer's GIL.

On 2 cores a decoding thread and the training loop contend for one GIL: every small
numpy call of a training step hands it over, and the Zarr and Parquet decode paths run
Python between their compiled parts. Worker processes (their own interpreters, their own
GILs; two, each a run of the window's chunks) decode each window straight into shared
memory (a Linux memfd); the parent gathers batches from there. Workers are started
with ``python -m streamtrain.data._worker``, not multiprocessing, so the user's main module
is never re-imported, and they reopen the dataset from its path: no pickle crosses.

Protocol, on two pipes per worker: the parent sends ``{"slot", "offset", "chunks", "rows"}`` requests;
the worker answers with a header (label dtype and shape, NaN/Inf keep mask, what
it read) followed by the raw label and mask bytes, or with an error message.
"""

from __future__ import annotations

import json
import mmap
import os
import queue
import struct
import subprocess
import sys
import threading
import weakref

import numpy as np

from .. import _cores  # (by module: tests set its functions)
from .._cores import usable_cores
from ..errors import DataError

__all__ = ["DecoderProcess", "usable", "usable_cores", "default_workers", "worker_count", "decode_window",
           "MIN_BYTES", "available_memory"]

# Shared window buffers: the one being served, the next (batches straddle the two), the one decoding.
SLOTS = 3
# Below this much feature data the worker's start-up (~0.3 s) costs more than it saves.
MIN_BYTES = 64 << 20
_LEN = struct.Struct("<Q")
# The workers run at a lower priority than the trainer: where decoding and training want more
# cores than there are, the training step (the critical path) keeps its core and decoding takes
# what is left. Measured on 2 cores with two workers: Zarr +10%, Parquet +7%, gzip HDF5 (where
# the trainer waits on decoding) unchanged at 5; at 10 gzip HDF5 lost 5%.
NICENESS = 5


def cores_of_one(processes: int = 1) -> int:
    """This process's share of the cores when ``processes`` training processes run on this machine:
    all it may run on where a launcher bound it to some, else an equal part of the machine's; and
    no more than its share of its cgroup's CPU limit (the processes share the cgroup's)."""
    usable = _cores.affinity_cores()
    if processes > 1 and usable >= (os.cpu_count() or usable):  # not bound: the machine is shared
        usable //= processes
    quota = _cores.quota_cpus()
    if quota is not None:
        usable = min(usable, int(quota / max(1, processes)))
    return max(1, usable)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable(dataset) -> bool:
    """Whether this dataset can be decoded by worker processes here (Linux, reopenable path, 2+ cores)."""
    return hasattr(os, "memfd_create") and getattr(dataset, "reopen", None) is not None and usable_cores() >= 2


def decode_window(ds, X: np.ndarray, chunks, stop: threading.Event | None = None):
    """Decode ``chunks`` in order into consecutive rows of ``X`` (the decoding thread's and
    the worker's loop): ``(y, keep, chunks_read, bytes_read)``, where ``keep`` is the NaN/Inf
    keep mask (None when no row is skipped). A set ``stop`` cuts it short."""
    y = keep = None
    off = chunks_read = bytes_read = 0
    for c in chunks:
        if stop is not None and stop.is_set():
            break
        Xc, yc, mask = ds.load_chunk(int(c))
        n = len(Xc)
        X[off:off + n] = Xc
        chunks_read += 1
        bytes_read += Xc.nbytes + (0 if yc is None else yc.nbytes)
        if yc is not None:
            if y is None:
                y = np.empty((len(X),) + yc.shape[1:], dtype=yc.dtype)
            y[off:off + n] = yc
        if mask is not None:  # rows with NaN/Inf under nonfinite="skip"
            keep = np.ones(len(X), bool) if keep is None else keep
            keep[off:off + n] = mask
        off += n
    return y, keep, chunks_read, bytes_read


def _send(fh, header: dict, *payloads: bytes) -> None:
    data = json.dumps(header).encode()
    fh.write(_LEN.pack(len(data)) + data)
    for p in payloads:
        fh.write(p)
    fh.flush()


def _receive(fh) -> dict | None:
    head = fh.read(_LEN.size)
    if len(head) < _LEN.size:
        return None  # the other side is gone
    return json.loads(fh.read(_LEN.unpack(head)[0]))


def _exact(fh, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError
    return data


class _Worker:
    """One decoding process and its two pipes."""

    def __init__(self, setup: dict, fd: int):
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        setup = {**setup, "memfd": fd, "commands": cmd_r, "replies": rep_w, "parent": os.getpid()}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "streamtrain.data._worker", json.dumps(setup)],
                                         pass_fds=(fd, cmd_r, rep_w), stdin=subprocess.DEVNULL)
        finally:
            os.close(cmd_r)
            os.close(rep_w)
        self.commands = os.fdopen(cmd_w, "wb")
        self.replies = os.fdopen(rep_r, "rb")


class DecoderProcess:
    """Worker processes that decode windows of ``dataset`` into ``SLOTS`` shared buffers.

    Each window's chunks are split between the ``workers`` processes, each decoding
    its run of chunks into its part of the same slot, in parallel: the window's layout
    (chunk order) is the same whatever the number of workers.
    """

    def __init__(self, dataset, slot_rows: int, workers: int | None = None):
        self.ds = dataset
        self.slot_rows = int(slot_rows)
        self.slot_bytes = max(1, self.slot_rows * dataset.n_features * dataset.dtype.itemsize)
        n = default_workers() if workers is None else max(1, int(workers))
        fd = os.memfd_create("streamtrain-windows", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.slot_bytes * SLOTS)
            self.buf = mmap.mmap(fd, self.slot_bytes * SLOTS)
            setup = {"reopen": dataset.reopen, "slot_bytes": self.slot_bytes, "n_rows": int(dataset.n_rows),
                     "n_chunks": int(dataset.n_chunks)}
            self.workers = []
            for i in range(n):  # each touches its share of the shared pages at start-up
                self.workers.append(_Worker({**setup, "populate": [i, n]}, fd))
        finally:
            os.close(fd)
        self.free: queue.Queue = queue.Queue()
        self.begin_epoch()
        self.busy = False
        self._ready = False
        # A forgotten decoder must not outlive its owner.
        self._finalizer = weakref.finalize(self, _shut, [(w.proc, w.commands, w.replies) for w in self.workers])

    def wait_ready(self) -> None:
        """Block until the workers have started and opened the data (decode waits for this itself)."""
        if self._ready:
            return
        errors = []
        for w in self.workers:
            hello = _receive(w.replies)
            if hello is None:
                raise DataError(f"{self.ds.path}: the decoding process did not start (exit code {w.proc.poll()})")
            if "error" in hello:
                errors.append(hello["error"])
        self._ready = True
        if errors:
            raise DataError(errors[0])

    def begin_epoch(self) -> None:
        """All slots free again (the previous epoch's windows are no longer used)."""
        self.free = queue.Queue()
        for s in range(SLOTS):
            self.free.put(s)

    def acquire(self, stop: threading.Event) -> int | None:
        """A free slot, waiting for the consumer to release one; None once ``stop`` is set."""
        while not stop.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def release(self, slot: int) -> None:
        self.free.put(slot)

    def decode(self, slot: int, chunks: np.ndarray, rows: int):
        """Decode ``chunks``, in order, into ``slot``: ``(X, y, keep, chunks_read, bytes_read)``."""
        if rows > self.slot_rows:
            raise ValueError(f"window of {rows} rows exceeds the {self.slot_rows}-row slots")
        self.wait_ready()
        chunks = np.asarray(chunks, dtype=np.int64)
        sizes = self.ds.chunk_sizes[chunks]
        # Consecutive runs of the window's chunks with about equal rows, one per worker.
        ends = np.searchsorted(np.cumsum(sizes), np.arange(1, len(self.workers)) * rows / len(self.workers))
        cuts = np.unique(np.r_[0, np.minimum(ends + 1, len(chunks)), len(chunks)])
        offsets = np.r_[0, np.cumsum(sizes)]
        # (worker, first chunk, end chunk, first row in the slot, rows)
        parts = [(w, int(a), int(b), int(offsets[a]), int(offsets[b] - offsets[a]))
                 for w, (a, b) in zip(self.workers, zip(cuts[:-1], cuts[1:]))]
        self.busy = True
        try:
            for w, a, b, first, n in parts:
                _send(w.commands, {"slot": slot, "offset": first, "chunks": chunks[a:b].tolist(), "rows": n})
            replies = [self._reply(w, n) for w, _, _, _, n in parts]
        except (EOFError, OSError) as e:
            raise DataError(f"{self.ds.path}: lost the decoding process ({e or 'end of stream'})") from None
        finally:
            self.busy = False
        failed = [r["error"] for r, _, _ in replies if "error" in r]
        if failed:
            raise DataError(failed[0])
        y = None if replies[0][1] is None else np.concatenate([yp for _, yp, _ in replies])
        keep = None
        if any(k is not None for _, _, k in replies):
            keep = np.concatenate([np.ones(n, bool) if k is None else k for (_, _, k), (*_, n) in zip(replies, parts)])
        X = np.frombuffer(self.buf, dtype=self.ds.dtype, count=rows * self.ds.n_features,
                          offset=slot * self.slot_bytes).reshape(rows, self.ds.n_features)
        return (X, y, keep, sum(r["chunks_read"] for r, _, _ in replies),
                sum(r["bytes_read"] for r, _, _ in replies))

    def _reply(self, w: _Worker, rows: int):
        """A worker's answer: ``(header, labels or None, keep mask or None)``."""
        reply = _receive(w.replies)
        if reply is None:
            raise DataError(f"{self.ds.path}: the decoding process ended unexpectedly (exit code {w.proc.poll()})")
        y = keep = None
        if "error" not in reply:
            if reply["y_dtype"] is not None:
                shape = tuple(reply["y_shape"])
                n = int(np.prod(shape)) * np.dtype(reply["y_dtype"]).itemsize
                y = np.frombuffer(_exact(w.replies, n), dtype=reply["y_dtype"]).reshape(shape)
            if reply["keep"]:
                keep = np.frombuffer(_exact(w.replies, rows), dtype=bool)
        return reply, y, keep

    def close(self) -> None:
        """Stop the workers (killing them if mid-window) and free the buffers."""
        self._finalizer()
        try:
            self.buf.close()
        except BufferError:  # arrays still view it: freed with them
            pass


def _shut(workers) -> None:
    for proc, commands, replies in workers:
        for fh in (commands, replies):
            try:
                fh.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()  # a window in progress is of no use to anyone now
    for proc, _, _ in workers:
        proc.wait()


def worker_count(dataset, slot_rows: int, workers: int | None = None) -> int:
    """Decoding processes for windows of ``slot_rows`` rows: as asked (None: the default), but no
    more than the cores, nor than the chunks a window holds (each worker decodes whole chunks)."""
    n = default_workers() if workers is None else max(1, int(workers))
    chunks_per_window = max(1, int(slot_rows) // max(1, int(dataset.chunk_sizes.max())))
    return max(1, min(n, usable_cores(), chunks_per_window))


def default_workers() -> int:
    """Decoding processes per loader: two where there are two cores or more.

    Measured on 2 cores: one worker decodes a window at most at the speed of a
    sequential scan, and a little slower while the trainer runs beside it; two
    split each window and finish it in about half the time when a core is free.
    """
    return 2 if usable_cores() >= 2 else 1


def serve(setup: dict) -> None:
    """The worker's loop: decode the windows asked for until the command pipe closes."""
    from ..readers import reopen_dataset

    if hasattr(os, "nice"):
        os.nice(NICENESS)

    commands = os.fdopen(setup["commands"], "rb")
    replies = os.fdopen(setup["replies"], "wb")
    buf = mmap.mmap(setup["memfd"], 0)
    ds, failure = None, None
    try:
        r = setup["reopen"]
        ds = reopen_dataset(r, cache_bytes=0)
        if (ds.n_rows, ds.n_chunks) != (setup["n_rows"], setup["n_chunks"]):
            failure = f"{ds.path}: the file changed while training (row or chunk count differs)"
        else:
            # Read a chunk now: a file that opens but cannot be read is reported at start-up, and the
            # format's first-use costs (thread pools, buffers; 50 ms for Parquet) are paid here.
            ds.load_chunk(setup.get("populate", [0, 1])[0] % ds.n_chunks)
    except Exception as e:
        failure = str(e) if isinstance(e, DataError) else f"{r['source']}: {type(e).__name__}: {e}"
    if not failure:
        # Touch the pages of the shared buffers now, during start-up (which the trainer overlaps
        # with its statistics pass), each worker its share: otherwise each window decoded into a
        # slot for the first time pays a page fault per 4 KB (measured: the first epoch's windows
        # decoded 40% slower).
        part, parts = setup.get("populate", [0, 1])
        pages = np.frombuffer(buf, dtype=np.uint8)[::mmap.PAGESIZE]
        share = -(-len(pages) // parts)
        pages[part * share:(part + 1) * share] = 0
    _send(replies, {"error": failure} if failure else {"ready": True})
    if failure:
        return
    while (req := _receive(commands)) is not None:
        try:
            _send(replies, *_decode_window(ds, buf, setup["slot_bytes"], req))
        except Exception as e:
            _send(replies, {"error": str(e) if isinstance(e, DataError)
                            else f"{ds.path}: {type(e).__name__}: {e}"})


def _decode_window(ds, buf, slot_bytes: int, req: dict):
    rows = req["rows"]
    X = np.frombuffer(buf, dtype=ds.dtype, count=rows * ds.n_features,
                      offset=req["slot"] * slot_bytes + req.get("offset", 0) * ds.n_features * ds.dtype.itemsize
                      ).reshape(rows, ds.n_features)
    y, keep, chunks_read, bytes_read = decode_window(ds, X, req["chunks"])
    header = {"y_dtype": None if y is None else y.dtype.str, "y_shape": None if y is None else list(y.shape),
              "keep": keep is not None, "chunks_read": chunks_read, "bytes_read": bytes_read}
    payloads = [] if y is None else [np.ascontiguousarray(y).tobytes()]
    if keep is not None:
        payloads.append(keep.tobytes())
    return (header, *payloads)
