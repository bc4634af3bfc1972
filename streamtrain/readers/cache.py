"""A bounded LRU of decoded chunks, shared by the threads reading one dataset."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

__all__ = ["ChunkCache"]

Block = tuple[np.ndarray, "np.ndarray | None"]


def _size(block: Block) -> int:
    return block[0].nbytes + (0 if block[1] is None else block[1].nbytes)


class ChunkCache:
    """Decoded chunks by index, at most ``capacity`` bytes, least recently used dropped first.

    Two threads (the loader and its chunk prefetcher) may ask for the same chunk: the first
    decodes it, the other waits for that result instead of decoding it again.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._blocks: OrderedDict[int, Block] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[int, threading.Event] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def nbytes(self) -> int:
        """Bytes of the chunks held."""
        return self._bytes

    def get(self, i: int) -> Block | None:
        with self._lock:
            return self._blocks.get(i)

    def get_or_load(self, i: int, load: Callable[[], Block]) -> tuple[Block, bool]:
        """``(block, loaded)``: the cached chunk ``i``, or ``load()``'s result, remembered."""
        with self._lock:
            hit = self._blocks.get(i)
            if hit is not None:
                self._blocks.move_to_end(i)
                return hit, False
            pending = self._inflight.get(i)
            if pending is None:
                self._inflight[i] = threading.Event()
        if pending is not None:
            pending.wait()
            hit = self.get(i)
            return (hit, False) if hit is not None else (load(), True)  # evicted meanwhile: uncached
        try:
            block = load()
            self._remember(i, block)
        finally:
            with self._lock:
                self._inflight.pop(i).set()
        return block, True

    def _remember(self, i: int, block: Block) -> None:
        size = _size(block)
        if size > self.capacity:
            return
        with self._lock:
            if i in self._blocks:
                return
            self._blocks[i] = block
            self._bytes += size
            while self._bytes > self.capacity:
                self._bytes -= _size(self._blocks.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0
