"""What every source hands the service: entries, refusals, and the interface (see the package's docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .claim import Claims

__all__ = ['Entry', 'Rejected', 'StreamSource', 'HANDOVER_BYTES', 'yield_to_requests']

# The most rows (in bytes) one poll hands to training, unless one piece is larger: a training
# thread lagging behind takes that much in one call (tens of milliseconds) and still publishes,
# checkpoints and answers requests between two calls.
HANDOVER_BYTES = 8 << 20


@dataclass
class Entry:
    """A piece of the stream: its rows (``t``: the learner's targets, where the source made them)
    and the position after it."""

    position: Any
    X: np.ndarray
    y: np.ndarray | None
    where: str
    t: np.ndarray | None = None
    raw: Any = None  # what a broker delivered, for a dead letter


@dataclass
class Rejected:
    """A piece of the stream that cannot be used, and why; the position moves past it."""

    position: Any
    where: str
    error: str
    raw: Any = None


class StreamSource(Claims):
    """Where a service's rows come from, in order, each piece with a position the checkpoint keeps.

    The service starts a source after the position of the checkpoint it continues from
    (``start``), takes its pieces (``poll``) from the training thread, has it record refused
    input (``reject``), and tells it once a durable checkpoint covers a position (``ack``): a
    broker acknowledges its messages only then, so a crash before redelivers them, and the
    position skips what the checkpoint already holds. A subclass implements ``poll`` and
    whichever of the others it needs; a broker whose consumer group two services could share
    also claims it (``Claims``). Register it in ``SOURCES`` (``serve/sources/__init__.py``).

    Attributes
    ----------
    name : str
        The source's kind, in messages and ``/healthz`` ("http", "directory", "redis", "nats").
    accepts_posts : bool
        Whether rows come from ``POST /learn`` (the HTTP log: then ``append``, ``queued_rows``
        and ``saturated`` are used), not from elsewhere.
    owner : str or None
        The service's id, set before ``start``: who holds the claim on a broker's consumer group.

    Examples
    --------
    A source of rows held in a list, each piece's position its number:

    >>> import numpy as np
    >>> from streamtrain.serve.sources.base import Entry, StreamSource
    >>> class Listed(StreamSource):
    ...     name = "listed"
    ...     def __init__(self, pieces):
    ...         self.pieces, self.next = pieces, 0
    ...     def start(self, position, state):
    ...         self.next = 0 if position is None else position
    ...     def poll(self, timeout):
    ...         if self.next == len(self.pieces):
    ...             return []
    ...         X, y = self.pieces[self.next]
    ...         self.next += 1
    ...         return [Entry(self.next, X, y, f"piece {self.next}")]
    >>> source = Listed([(np.zeros((2, 3), np.float32), np.array([0, 1]))] * 2)
    >>> source.start(1, {})  # a checkpoint covers the first piece
    >>> [(e.position, e.X.shape, e.where) for e in source.poll(0.1)]
    [(2, (2, 3), 'piece 2')]
    >>> source.poll(0.1)
    []
    """

    name = "source"
    accepts_posts = False  # rows come from POST /learn (the HTTP log), not from elsewhere

    def start(self, position: Any, state: dict) -> None:
        """Continue after ``position``.

        Parameters
        ----------
        position : JSON-able or None
            The position of the last piece the checkpoint holds (as ``Entry.position`` gave
            it); None: from the beginning.
        state : dict
            What ``state()`` returned when that checkpoint was written (``{}`` without one).
        """

    def poll(self, timeout: float) -> list:
        """The next pieces of the stream, in order, waiting up to ``timeout`` seconds for one.

        Parameters
        ----------
        timeout : float
            Seconds to wait where nothing is there yet.

        Returns
        -------
        list of Entry or Rejected
            Each ``Entry`` holds its rows, ``X`` of shape (rows, n_features) and their labels
            ``y`` of shape (rows,) (or the learner's targets ``t`` already made); a
            ``Rejected`` says why a piece cannot be used. Empty if nothing came in time.
        """
        raise NotImplementedError

    def ack(self, position: Any) -> None:
        """A durable checkpoint covers everything up to ``position`` (an ``Entry.position``): a
        broker acknowledges those messages, the HTTP log deletes its segments."""

    def reject(self, item: Rejected) -> None:
        """Record input that was refused (a broker's dead letter), beyond the service's own
        ``rejected.jsonl``."""

    def state(self) -> dict:
        """What the checkpoint keeps besides the position (JSON-able; given back to ``start``).

        Returns
        -------
        dict
            ``{}`` unless the source needs more (the HTTP log: the digests of recent
            idempotency keys; the landing directory: the files done).
        """
        return {}

    def lag(self) -> float | None:
        """Entries (or rows) the source holds beyond the position, where it can tell.

        Returns
        -------
        float or None
            For ``/metrics`` (``streamtrain_source_lag``); None where the source cannot tell.
        """
        return None

    def close(self) -> None:
        """Release connections and files (a claim another service holds is left alone)."""

    # -- what the service asks of a source that takes posts (``accepts_posts``) ----------------------
    def queued_rows(self) -> int:
        """Rows accepted but not yet handed over (the HTTP log's queue)."""
        return 0

    def saturated(self) -> bool:
        """Whether accepting more would pass the queue's bound (``/learn`` answers 429)."""
        return False


#: How much less CPU priority the service's bulk threads take (Linux nice, relative to the process).
BULK_NICENESS = 10


def yield_to_requests() -> None:
    """Give the calling thread (training, or reading ahead) a lower CPU priority than the threads
    that answer requests (threads it starts inherit it): where the cores are busy with it, a
    request's thread waits for the scheduler's next turn (milliseconds) otherwise. Its Python
    name becomes the system's too (``top -H``, ``/proc``). Linux threads only; elsewhere nothing."""
    import ctypes
    import os
    import sys
    import threading

    if not sys.platform.startswith("linux"):  # (elsewhere a thread's id is no process id to renice)
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + BULK_NICENESS, 19))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, threading.current_thread().name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:  # not allowed, or no prctl: as it was (never a reason for the thread to fail)
        pass

