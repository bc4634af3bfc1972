"""Which rows each minibatch holds: pure shuffle plans from (rows, chunks, seed, epoch).

Resume is recomputation, not saved iterators: a ``Sampler``'s state is the
seed, the epoch and the position in it, and the plan of an epoch is a pure
function of those, so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["SHUFFLES", "epoch_order", "Sampler"]


def _rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), stream])


def order_none(bounds: np.ndarray, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """Rows in storage order."""
    return np.arange(bounds[-1], dtype=np.int64)


def order_global(bounds: np.ndarray, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """A uniformly random permutation of all rows."""
    return _rng(seed, epoch).permutation(int(bounds[-1])).astype(np.int64)


def order_window(bounds: np.ndarray, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """Chunks in random order, grouped into windows of about ``window_rows`` rows, rows shuffled within each window.

    Every row appears once and every chunk is needed by one window only, so
    with a cache the size of a window each chunk is read once per epoch.
    """
    rng = _rng(seed, epoch)
    sizes = np.diff(bounds)
    chunks = rng.permutation(len(sizes))
    out = np.empty(int(bounds[-1]), dtype=np.int64)
    pos = 0
    i = 0
    while i < len(chunks):
        # At least one chunk per window, then as many as fit in the budget.
        j, rows = i + 1, int(sizes[chunks[i]])
        while j < len(chunks) and rows + sizes[chunks[j]] <= window_rows:
            rows += int(sizes[chunks[j]])
            j += 1
        window = np.concatenate([np.arange(bounds[c], bounds[c + 1], dtype=np.int64) for c in chunks[i:j]])
        out[pos:pos + rows] = window[rng.permutation(rows)]
        pos += rows
        i = j
    return out


SHUFFLES: dict[str, Callable[[np.ndarray, int, int, int], np.ndarray]] = {
    "window": order_window,
    "global": order_global,
    "none": order_none,
}


def epoch_order(shuffle: str, bounds: np.ndarray, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the rows (int64, shape ``(n_rows,)``)."""
    if shuffle not in SHUFFLES:
        raise ValueError(f"unknown shuffle {shuffle!r}; use one of {', '.join(SHUFFLES)}")
    return SHUFFLES[shuffle](np.asarray(bounds, dtype=np.int64), seed, epoch, window_rows)


class Sampler:
    """Minibatches of sorted row indices, epoch after epoch, resumable mid-epoch.

    ``position`` counts the rows of the current epoch already consumed; the
    consumer calls ``advance`` after using a batch, so prefetched but unused
    batches are not counted.

    >>> s = Sampler(np.array([0, 4, 10]), batch_size=4, shuffle="none")
    >>> [b.tolist() for b in s.iter_epoch()]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(self, bounds: np.ndarray, batch_size: int = 32, shuffle: str = "window",
                 seed: int = 0, drop_last: bool = False, window_rows: int = 1 << 20):
        if shuffle not in SHUFFLES:
            raise ValueError(f"unknown shuffle {shuffle!r}; use one of {', '.join(SHUFFLES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.n_rows = int(self.bounds[-1])
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), bool(drop_last)
        self.window_rows = int(window_rows)
        self.epoch = 0
        self.position = 0

    @property
    def rows_per_epoch(self) -> int:
        if self.drop_last:
            return self.n_rows - self.n_rows % self.batch_size
        return self.n_rows

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.rows_per_epoch // self.batch_size)

    def iter_epoch(self) -> Iterator[np.ndarray]:
        """The remaining batches of the current epoch, each sorted ascending."""
        order = epoch_order(self.shuffle, self.bounds, self.seed, self.epoch, self.window_rows)
        end = self.rows_per_epoch
        for a in range(self.position, end, self.batch_size):
            yield np.sort(order[a:min(a + self.batch_size, end)])

    def advance(self, n: int) -> None:
        """Record that ``n`` more rows of this epoch were consumed."""
        self.position += int(n)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch and position: all that resuming needs (JSON-able)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "drop_last": self.drop_last, "window_rows": self.window_rows, "n_rows": self.n_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("shuffle", "batch_size", "drop_last", "window_rows", "n_rows", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler {getattr(self, key)!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
