"""How many distinct values a column has, in bounded memory: the k-minimum-values sketch.

The ``k`` smallest distinct 64-bit hashes seen are kept; with ``h_k`` the k-th smallest as a
fraction of 2**64, ``(k - 1) / h_k`` estimates the distinct count (relative standard error about
``1 / sqrt(k - 2)``: 3% at the default k = 1024), and the count is exact while fewer than ``k``
distinct values were seen. Sketches merge exactly (the union's k smallest), in any order, so the
ranks of a run and the files of a dataset agree on one estimate.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .hashing import fmix64, hash64

__all__ = ["DistinctCount"]


class DistinctCount:
    """A mergeable estimate of the distinct non-null values of a column.

    Examples
    --------
    >>> import pyarrow as pa
    >>> d = DistinctCount().update(pa.array(["a", "b", None, "a"]))
    >>> d.estimate(), d.exact
    (2, True)
    """

    def __init__(self, k: int = 1024):
        self.k = int(k)
        self._mins = np.empty(0, dtype=np.uint64)

    @property
    def exact(self) -> bool:
        """True while fewer than ``k`` distinct values were seen (the estimate is the count)."""
        return len(self._mins) < self.k

    def update(self, values) -> DistinctCount:
        """Count a chunk of values (as :func:`hashing.hash64` takes them); returns self."""
        from .hashing import null_mask, _arrow

        arr = _arrow(values)
        if isinstance(arr, pa.ChunkedArray):
            for chunk in arr.chunks:
                self.update(chunk)
            return self
        if pa.types.is_dictionary(arr.type):  # the entries its codes use: the same values, hashed once each
            used = np.zeros(len(arr.dictionary), dtype=bool)
            used[arr.indices.drop_null().to_numpy(zero_copy_only=False)] = True
            arr = arr.dictionary.filter(pa.array(used))
        h = fmix64(hash64(arr))  # fmix64 spreads FNV's poorly mixed high bits over the whole range
        h = h[~null_mask(arr)]
        if len(self._mins) == self.k:  # full: only a hash below the k-th smallest can enter (a chunk's few)
            h = h[h < self._mins[-1]]
        return self._absorb(np.unique(h))

    def merge(self, other: DistinctCount) -> DistinctCount:
        """Add another sketch's values (of the same ``k``); returns self."""
        return self._absorb(other._mins)

    def _absorb(self, hashes: np.ndarray) -> DistinctCount:
        self._mins = np.union1d(self._mins, hashes)[:self.k]
        return self

    def estimate(self) -> int:
        """The distinct count (exact below ``k`` values)."""
        if self.exact:
            return len(self._mins)
        return int(round((self.k - 1) / ((float(self._mins[-1]) + 1.0) / 2.0**64)))
