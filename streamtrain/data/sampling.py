"""Which rows each minibatch holds: pure shuffle plans from (rows, chunks, seed, epoch).

Resume is recomputation, not saved iterators: a ``Sampler``'s state is the
seed, the epoch and the position in it, and an epoch's plan is a pure function
of those, so a resumed run sees exactly the batches the uninterrupted run would
have seen, without reading or replaying what came before. No plan holds an
index per row: memory is O(chunks) (window), O(window) or O(1) (global).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["SHUFFLES", "Sampler", "Plan", "Windows", "FeistelPermutation", "epoch_order"]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def _key(seed: int, epoch: int, stream: int) -> list[int]:
    return [int(seed) & _MASK64, int(epoch), int(stream)]


class FeistelPermutation:
    """A pseudo-random permutation of ``range(n)`` evaluated index by index, in O(1) memory.

    A balanced Feistel network on the smallest even number of bits covering
    ``n``, with cycle walking (re-encrypt until the value falls below ``n``), as
    Grain's ``index_shuffle`` and TensorFlow's ``random_index_shuffle`` do.
    """

    ROUNDS = 8

    def __init__(self, n: int, key: list[int]):
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        bits += bits % 2
        self.half = bits // 2
        self.mask = _U64((1 << self.half) - 1)
        rng = np.random.default_rng(key)
        self.keys = rng.integers(0, 1 << 63, size=self.ROUNDS, dtype=np.uint64)

    def _round(self, r: np.ndarray, k: np.uint64, t: np.ndarray) -> np.ndarray:
        # splitmix64 finaliser of (r, k): cheap and well mixed; uint64 arrays wrap silently.
        # In place, with ``t`` as scratch: temporaries made this the sampler's main cost.
        x = np.add(r, k)
        x *= _U64(0x9E3779B97F4A7C15)
        np.right_shift(x, _U64(31), out=t)
        x ^= t
        x *= _U64(0xBF58476D1CE4E5B9)
        np.right_shift(x, _U64(29), out=t)
        x ^= t
        x &= self.mask
        return x

    def _encrypt(self, v: np.ndarray) -> np.ndarray:
        left, right = v >> _U64(self.half), v & self.mask
        t = np.empty_like(v)
        for k in self.keys:
            x = self._round(right, k, t)
            x ^= left
            left, right = right, x
        left <<= _U64(self.half)
        left |= right
        return left

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The permuted value of each position (int64 array of the same shape)."""
        v = np.asarray(positions, dtype=np.uint64)
        out = self._encrypt(v)
        todo = out >= self.n
        while todo.any():  # cycle walking: the domain is < 4n, so this ends fast
            out[todo] = self._encrypt(out[todo])
            todo = out >= self.n
        return out.astype(np.int64)


@dataclass(frozen=True)
class Windows:
    """An epoch's shuffle windows: ``chunks`` in the order the epoch visits them, window ``w``
    holding ``chunks[chunk_start[w]:chunk_start[w + 1]]`` and serving the epoch's positions
    ``row_start[w]:row_start[w + 1]`` (its rows shuffled among themselves)."""

    chunks: np.ndarray
    chunk_start: np.ndarray
    row_start: np.ndarray

    def __len__(self) -> int:
        return len(self.chunk_start) - 1

    def chunks_of(self, w: int) -> np.ndarray:
        return self.chunks[self.chunk_start[w]:self.chunk_start[w + 1]]

    def of_position(self, positions) -> np.ndarray:
        """The window serving each epoch position."""
        return np.searchsorted(self.row_start, positions, side="right") - 1


class Plan:
    """An epoch's order of rows: ``at(positions) -> rows``. ``windows`` describes a windowed
    order (None otherwise); ``sequential`` is true for storage order. Both tell a loader how
    to read ahead; neither changes which rows come when."""

    windows: Windows | None = None
    sequential: bool = False
    #: Whether the plans of this kind have windows (known before any epoch's plan is made).
    windowed = False

    def at(self, positions: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _NonePlan(Plan):
    sequential = True

    def __init__(self, bounds, seed, epoch, window_rows):
        pass

    def at(self, positions: np.ndarray) -> np.ndarray:
        return positions


class _GlobalPlan(Plan):
    def __init__(self, bounds, seed, epoch, window_rows):
        self.perm = FeistelPermutation(int(bounds[-1]), _key(seed, epoch, 1))

    def at(self, positions):
        return self.perm(positions)


class _RandomPlan(Plan):
    """Batches drawn i.i.d. (with replacement): no order to read ahead in (the sampler draws them)."""

    def __init__(self, bounds, seed, epoch, window_rows):
        pass

    def at(self, positions):  # pragma: no cover - the sampler draws such batches itself
        raise NotImplementedError("batches drawn with replacement have no epoch order")


class _WindowPlan(Plan):
    """Chunks in random order, grouped into windows of at most ``window_rows`` rows (at least
    one chunk), rows shuffled within each window. Every row once per epoch, and each chunk is
    needed by one window only, so with a cache the size of a window each chunk is read once."""

    windowed = True

    def __init__(self, bounds, seed, epoch, window_rows):
        self.bounds, self.seed, self.epoch = bounds, seed, epoch
        sizes = np.diff(bounds)
        chunks = np.random.default_rng(_key(seed, epoch, 2)).permutation(len(sizes))
        cum = np.cumsum(sizes[chunks])
        # Greedy grouping in chunk order: a window closes when the next chunk would overflow it.
        starts, used = [0], 0
        for i in range(len(chunks)):
            size = int(sizes[chunks[i]])
            if used and used + size > window_rows:
                starts.append(i)
                used = 0
            used += size
        chunk_start = np.asarray(starts + [len(chunks)], dtype=np.int64)
        self.windows = Windows(chunks, chunk_start, np.concatenate([[0], cum])[chunk_start])
        self._cached: tuple[int, np.ndarray] | None = None

    def _window_rows(self, w: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == w:
            return self._cached[1]
        rows = np.concatenate([np.arange(self.bounds[c], self.bounds[c + 1], dtype=np.int64)
                               for c in self.windows.chunks_of(w)])
        rows = rows[np.random.default_rng(_key(self.seed, self.epoch, 3 + w)).permutation(len(rows))]
        self._cached = (w, rows)
        return rows

    def at(self, positions):
        win = self.windows.of_position(positions)
        out = np.empty(len(positions), dtype=np.int64)
        lo, hi = (int(win.min()), int(win.max())) if len(win) else (0, -1)
        for w in range(lo, hi + 1):  # positions come in order: a window or two
            sel = slice(None) if lo == hi else win == w
            out[sel] = self._window_rows(w)[positions[sel] - self.windows.row_start[w]]
        return out


SHUFFLES: dict[str, Callable[..., Any]] = {"window": _WindowPlan, "global": _GlobalPlan, "none": _NonePlan}


def epoch_order(shuffle: str, bounds: np.ndarray, seed: int, epoch: int, window_rows: int) -> np.ndarray:
    """The whole order in which an epoch visits the rows (int64, ``(n_rows,)``; for small data and tests)."""
    if shuffle not in SHUFFLES:
        raise ValueError(f"unknown shuffle {shuffle!r}; use one of {', '.join(SHUFFLES)}")
    bounds = np.asarray(bounds, dtype=np.int64)
    return SHUFFLES[shuffle](bounds, seed, epoch, window_rows).at(np.arange(bounds[-1], dtype=np.int64))


class Sampler:
    """Minibatches of sorted row indices, epoch after epoch, resumable mid-epoch.

    ``shuffle`` is "window" (chunk order shuffled, rows shuffled within windows
    of ``window_rows``), "global" (a uniformly random permutation of all rows)
    or "none". ``replacement=True`` draws each batch i.i.d. instead. With
    ``world_size > 1`` the workers share the epoch in one of two ways (``shard``):

    - ``"positions"``: worker ``rank`` gets every ``world_size``-th position of the epoch's
      order, batches of its own (disjoint, equal shares of ``n_rows // world_size`` rows; the
      remainder is left out of that epoch): independent workers, a DataLoader's;
    - ``"batches"``: the epoch's batches are those of one process with ``batch_size`` (the
      global batch), and worker ``rank`` takes every ``world_size``-th row of each: data-parallel
      training, the same run whatever the number of workers; ``position`` is then global.

    ``position`` counts the rows of the epoch already consumed; the consumer calls
    ``advance`` (or ``advance_batch``) after using a batch, so prefetched but unused batches
    are not counted.

    >>> s = Sampler(np.array([0, 4, 10]), batch_size=4, shuffle="none")
    >>> [b.tolist() for b in s.iter_epoch()]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(self, bounds: np.ndarray, batch_size: int = 32, shuffle: str = "window",
                 seed: int = 0, drop_last: bool = False, window_rows: int = 1 << 20,
                 replacement: bool = False, rank: int = 0, world_size: int = 1, shard: str = "positions"):
        if shuffle not in SHUFFLES:
            raise ValueError(f"unknown shuffle {shuffle!r}; use one of {', '.join(SHUFFLES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if shard not in ("positions", "batches"):
            raise ValueError(f"shard must be 'positions' or 'batches', got {shard!r}")
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.n_rows = int(self.bounds[-1])
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), bool(drop_last)
        self.window_rows = max(1, int(window_rows))
        self.replacement = bool(replacement)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shard = shard
        self.epoch = 0
        self.position = 0

    @property
    def _by_position(self) -> bool:
        return self.world_size > 1 and self.shard == "positions"

    @property
    def rows_per_epoch(self) -> int:
        """Rows this worker's epoch counts (every worker's together where batches are shared)."""
        share = self.n_rows // self.world_size if self._by_position else self.n_rows
        return share - share % self.batch_size if self.drop_last else share

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.rows_per_epoch // self.batch_size)

    def plan(self, epoch: int | None = None) -> Plan:
        """The shuffle plan of an epoch (``plan.at(positions) -> rows``; its windows, if any)."""
        e = self.epoch if epoch is None else epoch
        kind = _RandomPlan if self.replacement else SHUFFLES[self.shuffle]
        return kind(self.bounds, self.seed, e, self.window_rows)

    @property
    def windowed(self) -> bool:
        """Whether this sampler's epochs visit the data window by window."""
        return not self.replacement and SHUFFLES[self.shuffle].windowed

    def global_position(self, position: int | np.ndarray):
        """Where this worker's epoch ``position`` lies in the whole epoch's order."""
        return position * self.world_size + self.rank if self._by_position else position

    def iter_epoch(self) -> Iterator[np.ndarray]:
        """The remaining batches of the current epoch, each sorted ascending (int64); where batches
        are shared, this worker's slice of each."""
        if self.world_size > 1 and self.shard == "batches":
            for batch in self._batches(0, 1):
                yield batch[self.rank::self.world_size]
            return
        yield from self._batches(self.rank, self.world_size)

    def _batches(self, rank: int, world: int) -> Iterator[np.ndarray]:
        end, bs = self.rows_per_epoch, self.batch_size
        if self.replacement:
            for start in range(self.position, end, bs):
                rng = np.random.default_rng(_key(self.seed, self.epoch, 1_000_003 + rank) + [start])
                yield np.sort(rng.integers(0, self.n_rows, size=min(bs, end - start), dtype=np.int64))
            return
        plan = SHUFFLES[self.shuffle](self.bounds, self.seed, self.epoch, self.window_rows)
        # Positions are mapped to rows a block at a time, so per-batch work stays small at batch size 1.
        block = max(bs, (65536 // bs) * bs)
        ordered = plan.sequential  # (storage order: each batch ascending already)
        for b0 in range(self.position, end, block):
            local = np.arange(b0, min(b0 + block, end), dtype=np.int64)
            rows = plan.at(local * world + rank)
            full = len(rows) - len(rows) % bs
            whole = rows[:full].reshape(-1, bs)
            yield from (whole if ordered else np.sort(whole, axis=1))  # the block's whole batches, one sort call
            if full < len(rows):
                yield rows[full:] if ordered else np.sort(rows[full:])

    def advance(self, n: int) -> None:
        """Record that ``n`` more rows of this epoch were consumed."""
        self.position += int(n)

    def advance_batch(self, n: int) -> None:
        """Record that the next batch was consumed (``n`` rows here; where batches are shared, the
        whole global batch counts)."""
        if self.world_size > 1 and self.shard == "batches":
            n = min(self.batch_size, self.rows_per_epoch - self.position)
        self.position += int(n)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0

    _FIXED = ("shuffle", "batch_size", "drop_last", "window_rows", "n_rows", "seed", "replacement",
              "rank", "world_size")

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch and position (and the settings they are relative to): all that resuming needs."""
        return {"epoch": self.epoch, "position": self.position, "shard": self.shard,
                **{k: getattr(self, k) for k in self._FIXED}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A position in shared batches (or of a worker alone) is global: any rank of any world size
        # that shares batches continues from it. Batches of its own bind a state to its worker.
        def global_(shard, world):
            return shard == "batches" or world == 1

        mine = global_(self.shard, self.world_size)
        free = ("rank", "world_size") if mine and global_(state.get("shard"), state.get("world_size", 1)) else ()
        for key in self._FIXED:
            if key in state and key not in free and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler {getattr(self, key)!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
