"""A source read on its own thread, ahead of training: reading and parsing overlap the updates."""

from __future__ import annotations

import threading
import time
from collections import deque

from .base import HANDOVER_BYTES, Entry, StreamSource, yield_to_requests

__all__ = ['ReadAhead']

# What a piece holds beyond its arrays and its raw payload (the Entry, the arrays' headers, its
# strings, the broker's bookkeeping of it): measured about 1 KB for an entry of one row.
_PIECE_BYTES = 2048


def _raw_bytes(raw, depth: int = 0) -> int:
    """The bytes a broker's delivery (kept for a dead letter) holds: bytes, or containers of them."""
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        return len(raw)
    if depth < 3 and isinstance(raw, (tuple, list)):
        return sum(_raw_bytes(r, depth + 1) for r in raw)
    if depth < 3 and isinstance(raw, dict):
        return sum(_raw_bytes(k, depth + 1) + _raw_bytes(v, depth + 1) for k, v in raw.items())
    return 0


def _nbytes(item) -> int:
    """The memory a piece waiting in the queue holds, refused pieces included."""
    size = _PIECE_BYTES + _raw_bytes(getattr(item, "raw", None))
    if isinstance(item, Entry):
        size += sum(a.nbytes for a in (item.X, item.y, item.t) if a is not None)
    return size


class ReadAhead(StreamSource):
    """``source`` polled by a thread of its own into a queue of at most ``max_bytes`` (the rows,
    the raw deliveries a dead letter would need, and each piece's own cost); it stops reading
    while the queue is full, so a broker's entries wait in the broker. One poll may pass the
    bound (a landing directory's poll reads one chunk of a file).

    Each poll's pieces reach training together with the source's ``state()`` after them, and
    ``state()`` here is that of the pieces handed out last: a checkpoint, written between two
    polls of the training thread, covers exactly the rows trained, never those read ahead.
    The source's methods run one at a time (a lock that the reader yields to ``ack`` and
    ``reject``), so a source written for one thread needs nothing more. Once the reader fails
    (a broker gone, the claim on a consumer group lost), training's next ``poll`` raises that
    failure, whatever is queued, and nothing is acknowledged any more.

    Parameters
    ----------
    source : StreamSource
        Started (``start``) already; not one that takes posts (those parse in the request).
    max_bytes : int
        The most bytes waiting for training (the service's ``--queue-mb``).
    """

    _POLL = 0.05  # the reader's wait for a broker: how long an ack or a refusal may wait for the lock

    def __init__(self, source: StreamSource, max_bytes: int):
        self.source, self.name = source, source.name
        self.max_bytes = max(int(max_bytes), 1)
        self.lock = threading.Lock()  # the source's own methods, one thread at a time
        self.others = 0  # threads waiting for the lock besides the reader (it lets them go first)
        self._counting = threading.Lock()  # (for ``others``)
        self.ready = threading.Condition()  # the queue below, and the reader's failure
        self.batches: deque = deque()  # (pieces, the source's state after them, bytes, rows)
        self.bytes = self.rows = 0
        self.failure: BaseException | None = None
        self.handed = source.state()  # the state after the pieces handed to training
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def begin(self) -> None:
        """Start reading."""
        self.thread = threading.Thread(target=self._read, name=f"reading {self.name}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        yield_to_requests()
        while not self.stopping.is_set():
            with self.ready:
                while self.bytes >= self.max_bytes and not self.stopping.is_set():
                    self.ready.wait(0.2)
            # (a Lock is not fair: released and taken again at once, it would starve them)
            while self.others and not self.stopping.is_set():
                time.sleep(0.001)
            if self.stopping.is_set():
                return
            with self.lock:
                try:
                    items = self.source.poll(self._POLL)
                    state = self.source.state() if items else None
                except BaseException as e:  # a broker gone, the claim lost: training raises it on its next poll
                    with self.ready:  # (set before the lock is let go: no ack slips in after it)
                        self.failure = e
                        self.ready.notify_all()
                    return
            if items:
                size = sum(map(_nbytes, items))
                rows = sum(len(i.X) for i in items if isinstance(i, Entry))
                with self.ready:
                    self.batches.append((items, state, size, rows))
                    self.bytes += size
                    self.rows += rows
                    self.ready.notify_all()

    def poll(self, timeout):
        with self.ready:
            if not self.batches and self.failure is None:
                self.ready.wait(timeout)
            if self.failure is not None:  # at once: after a lost claim, training must not go on
                raise self.failure
            if not self.batches:
                return []
            # The polls queued, at once up to HANDOVER_BYTES: training lagging behind takes them in
            # one call, and still publishes, checkpoints and answers between two such calls.
            items, state, taken = [], None, 0
            while self.batches and (not items or taken + self.batches[0][2] <= HANDOVER_BYTES):
                polled, state, size, rows = self.batches.popleft()
                items += polled
                taken += size
                self.bytes -= size
                self.rows -= rows
            self.ready.notify_all()
        if state is not None:
            self.handed = state
        return items

    def state(self):
        return self.handed

    def _call(self, method, *args):
        with self._counting:
            self.others += 1
        try:
            with self.lock:
                if self.failure is not None:  # (after a lost claim another service acknowledges)
                    raise self.failure
                return method(*args)
        finally:
            with self._counting:
                self.others -= 1

    def ack(self, position):
        self._call(self.source.ack, position)

    def reject(self, item):
        self._call(self.source.reject, item)

    def lag(self):
        return self.source.lag()  # (the rows read ahead are in queued_rows)

    def queued_rows(self) -> int:
        return self.rows

    def halt(self) -> None:
        """Stop reading (what is queued stays; ``failure`` is final after this)."""
        self.stopping.set()
        with self.ready:
            self.ready.notify_all()
        if self.thread is not None:
            self.thread.join(30)

    def close(self):
        self.halt()
        with self.lock:
            self.source.close()
