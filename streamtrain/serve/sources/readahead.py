"""A source read on its own thread, ahead of training: reading and parsing overlap the updates."""

from __future__ import annotations

import threading
from collections import deque

from .base import Entry, StreamSource

__all__ = ['ReadAhead']


def _nbytes(item) -> int:
    if not isinstance(item, Entry):
        return 0
    return sum(a.nbytes for a in (item.X, item.y, item.t) if a is not None)


class ReadAhead(StreamSource):
    """``source`` polled by a thread of its own into a queue of at most ``max_bytes`` of rows
    (it stops reading while the queue is full: a broker's entries wait in the broker).

    Each poll's pieces reach training together with the source's ``state()`` after them, and
    ``state()`` here is that of the pieces handed out last: a checkpoint, written between two
    polls of the training thread, covers exactly the rows trained, never those read ahead.
    The source's methods run one at a time (a lock), so a source written for one thread needs
    nothing more; ``ack`` and ``reject`` wait at most one short poll.

    Parameters
    ----------
    source : StreamSource
        Started (``start``) already; not one that takes posts (those parse in the request).
    max_bytes : int
        The most bytes of parsed rows waiting for training (the service's ``--queue-mb``).
    """

    _POLL = 0.05  # the reader's wait for a broker: the longest an ack or a refusal waits for the lock

    def __init__(self, source: StreamSource, max_bytes: int):
        self.source, self.name = source, source.name
        self.max_bytes = max(int(max_bytes), 1)
        self.lock = threading.Lock()  # the source's own methods, one thread at a time
        self.ready = threading.Condition()  # the queue below, and the reader's failure
        self.batches: deque = deque()  # (pieces, the source's state after them, bytes)
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
        try:
            while not self.stopping.is_set():
                with self.ready:
                    while self.bytes >= self.max_bytes and not self.stopping.is_set():
                        self.ready.wait(0.2)
                if self.stopping.is_set():
                    return
                with self.lock:
                    items = self.source.poll(self._POLL)
                    state = self.source.state() if items else None
                if items:
                    size = sum(map(_nbytes, items))
                    rows = sum(len(i.X) for i in items if isinstance(i, Entry))
                    with self.ready:
                        self.batches.append((items, state, size, rows))
                        self.bytes += size
                        self.rows += rows
                        self.ready.notify_all()
        except BaseException as e:  # a broker gone, the claim lost: training raises it on its next poll
            with self.ready:
                self.failure = e
                self.ready.notify_all()

    def poll(self, timeout):
        with self.ready:
            if not self.batches and self.failure is None:
                self.ready.wait(timeout)
            if not self.batches:
                if self.failure is not None:
                    raise self.failure
                return []
            items, state, size, rows = self.batches.popleft()
            self.bytes -= size
            self.rows -= rows
            self.ready.notify_all()
        if state is not None:
            self.handed = state
        return items

    def state(self):
        return self.handed

    def ack(self, position):
        with self.lock:
            self.source.ack(position)

    def reject(self, item):
        with self.lock:
            self.source.reject(item)

    def lag(self):
        behind = self.source.lag()
        with self.ready:  # the pieces read but not trained are behind too
            waiting = sum(len(b[0]) for b in self.batches)
        return None if behind is None else behind + waiting

    def queued_rows(self) -> int:
        return self.rows

    def close(self):
        self.stopping.set()
        with self.ready:
            self.ready.notify_all()
        if self.thread is not None:
            self.thread.join(30)
        with self.lock:
            self.source.close()
