"""The processes that train together: a small communicator, one implementation per engine.

A communicator has a ``rank`` and a ``size`` and sums a buffer in place across the
processes (``allreduce``); it broadcasts JSON-able values from rank 0 and waits for all
(``barrier``). ``LOCAL`` is the one-process communicator: nothing to reduce, so the training
loop keeps its fused single-process steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Communicator", "LOCAL"]


class Communicator:
    """One process alone (rank 0 of 1)."""

    rank = 0
    size = 1
    name = "none"

    def allreduce(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` over all processes, in place; returns it."""
        return buffer

    def broadcast(self, value: Any, root: int = 0) -> Any:
        """``value`` as rank ``root`` has it."""
        return value

    def barrier(self) -> None:
        """Wait until every process is here."""

    def close(self) -> None:
        pass


LOCAL = Communicator()
