"""What every source hands the service: entries, refusals, and the interface (see the package's docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .claim import Claims

__all__ = ['Entry', 'Rejected', 'StreamSource']


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
    """The interface; see the module's docstring."""

    name = "source"
    accepts_posts = False  # rows come from POST /learn (the HTTP log), not from elsewhere

    def start(self, position: Any, state: dict) -> None:
        """Continue after ``position`` (None: from the beginning); ``state`` as ``state()`` gave it."""

    def poll(self, timeout: float) -> list:
        """The next entries (``Entry`` or ``Rejected``), waiting up to ``timeout`` seconds for one."""
        raise NotImplementedError

    def ack(self, position: Any) -> None:
        """A durable checkpoint covers everything up to ``position``."""

    def reject(self, item: Rejected) -> None:
        """Record input that was refused (beyond the service's own log of it)."""

    def state(self) -> dict:
        """What the checkpoint keeps besides the position."""
        return {}

    def lag(self) -> float | None:
        """Entries (or rows) the source holds beyond the position, where it can tell."""
        return None

    def close(self) -> None:
        pass

    # -- what the service asks of a source that takes posts (``accepts_posts``) ----------------------
    def queued_rows(self) -> int:
        """Rows accepted but not yet handed over (the HTTP log's queue)."""
        return 0

    def saturated(self) -> bool:
        """Whether accepting more would pass the queue's bound (``/learn`` answers 429)."""
        return False
