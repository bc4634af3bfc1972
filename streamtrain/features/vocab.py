"""A vocabulary learned in one streaming pass, with bounded memory, mergeable across ranks.

``Vocabulary`` counts the values of a column chunk by chunk. Up to ``capacity`` distinct values
its counts are exact. Beyond it, it becomes a Misra-Gries summary (the mergeable form of
Agarwal et al., "Mergeable Summaries", 2012; TensorFlow Transform's approximate vocabulary is the
same sketch): after each chunk or merge, if more than ``capacity`` values are tracked, the
(capacity+1)-th largest count ``c`` is subtracted from every count, values left at zero are
forgotten, and ``error`` grows by ``c``. Each such step removes at least ``(capacity+1) * c`` from
the total count, which gives the guarantee, for every value ``v`` seen ``f(v)`` times in ``rows``
non-null values:

    f(v) - error  <=  count(v)  <=  f(v),     error <= (rows - sum of counts) / (capacity + 1)

(``count(v)`` is 0 for an untracked value). So every value more frequent than
``rows / (capacity + 1)`` is kept, and ``error == 0`` means the counts are exact. Memory is
``capacity`` values plus one chunk's distinct values.

Merging adds counts (Arrow's group-by), then prunes as above: while the exact regime holds the
result does not depend on the order of the parts, and the state is stored in a canonical order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .codes import Categories
from .kinds import (MAX_VALUES, VALUE_KINDS, check_header, check_int, count_values, counts_from_json,
                    values_from_json, values_to_json)

__all__ = ["Vocabulary"]

_FORMAT, _VERSION = "streamtrain.vocabulary", 1


class Vocabulary:
    """Counts of a column's values, exact up to ``capacity`` distinct values, a Misra-Gries
    heavy-hitters summary beyond (the module's docstring states the guarantee).

    Parameters
    ----------
    capacity : int
        The most distinct values tracked; memory is O(capacity + one chunk's distinct values).

    Attributes
    ----------
    kind : {"string", "int", "bool"} or None
        Set by the first values counted.
    rows : int
        Non-null values counted.
    nulls : int
        Nulls counted (a dictionary's code pointing at a null entry included).
    error : int
        The most by which any count falls short of the truth; 0 while exact.

    Examples
    --------
    >>> import pyarrow as pa
    >>> v = Vocabulary().update(pa.array(["b", "a", None, "b"])).update(pa.array(["c", "a"]))
    >>> cats = v.finalize(max_size=2)
    >>> cats.values.to_pylist(), v.nulls
    (['a', 'b'], 1)
    >>> cats.encode(pa.array(["b", "c", None])).tolist()
    [3, 1, 0]
    """

    def __init__(self, capacity: int = 100_000):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
                or not 1 <= capacity <= MAX_VALUES:
            raise ConfigError(f"a vocabulary's capacity is an integer in [1, {MAX_VALUES}], not {capacity!r}")
        self.capacity = int(capacity)
        self.kind: str | None = None
        self.rows = self.nulls = self.error = 0
        self._values: pa.Array | None = None
        self._counts = np.empty(0, dtype=np.int64)

    @property
    def exact(self) -> bool:
        """True while every count is exact (never more than ``capacity`` distinct values)."""
        return self.error == 0

    def __len__(self) -> int:
        return len(self._counts)

    def __repr__(self) -> str:
        state = "exact" if self.exact else f"approximate, error <= {self.error}"
        return f"Vocabulary({self.kind}, {len(self)} values of {self.rows} rows, {self.nulls} nulls, {state})"

    def update(self, values) -> Vocabulary:
        """Count a chunk of values.

        Parameters
        ----------
        values : pyarrow Array / ChunkedArray (string, large_string, string_view, dictionary,
            integer or bool), or numpy / list of str, int or bool; shape (n,)

        Returns
        -------
        self
        """
        distinct, counts, nulls, kind = count_values(values)
        self._absorb(kind, distinct, counts, int(counts.sum()), nulls, 0)
        return self

    def merge(self, other: Vocabulary) -> Vocabulary:
        """Add another vocabulary's counts (another rank's or partition's) to these; returns self.

        The guarantee holds for the union when ``other`` is exact or its capacity is at least
        ``self.capacity``; a ConfigError otherwise.
        """
        if not other.exact and other.capacity < self.capacity:
            raise ConfigError(f"cannot merge an approximate vocabulary of capacity {other.capacity} into one "
                              f"of capacity {self.capacity}: its error bound is weaker")
        self._absorb(other.kind, other._values, other._counts, other.rows, other.nulls, other.error)
        return self

    def _absorb(self, kind, values, counts, rows, nulls, error) -> None:
        if kind is not None and self.kind is not None and kind != self.kind:
            raise DataError(f"a vocabulary of {self.kind} values cannot count {kind} values")
        self.rows, self.nulls, self.error = self.rows + rows, self.nulls + nulls, self.error + error
        if kind is None or not len(counts):
            self.kind = self.kind or kind
            return
        if self.kind is None or not len(self._counts):
            self.kind, self._values, self._counts = kind, values, counts.copy()
        else:
            summed = pa.table({"v": pa.concat_arrays([self._values, values]),
                               "c": np.concatenate([self._counts, counts])}).group_by("v").aggregate([("c", "sum")])
            self._values = summed["v"].combine_chunks()
            self._counts = summed["c_sum"].to_numpy().astype(np.int64)
        self._prune()

    def _prune(self) -> None:
        """The Misra-Gries step: keep at most ``capacity`` values."""
        n = len(self._counts)
        if n <= self.capacity:
            return
        c = int(np.partition(self._counts, n - self.capacity - 1)[n - self.capacity - 1])
        left = self._counts - c
        keep = left > 0
        self._values, self._counts = self._values.filter(pa.array(keep)), left[keep]
        self.error += c

    def _ordered(self) -> tuple[pa.Array, np.ndarray]:
        """Values and counts, most frequent first, ties by the value's order (bytewise for strings)."""
        if not len(self._counts):
            return pa.array([], VALUE_KINDS[self.kind or "string"]), self._counts
        order = pc.sort_indices(pa.table({"c": self._counts, "v": self._values}),
                                sort_keys=[("c", "descending"), ("v", "ascending")])
        return self._values.take(order), self._counts[order.to_numpy()]

    def most_common(self, n: int | None = None) -> list[tuple]:
        """The ``n`` most frequent values (all if None) and their counts, as Python pairs."""
        values, counts = self._ordered()
        return list(zip(values[:n].to_pylist(), counts[:n].tolist()))

    def finalize(self, max_size: int | None = None, min_frequency: int = 1, oov_buckets: int = 1,
                 salt: int = 0) -> Categories:
        """The ordered vocabulary and its codes (TFT's ``top_k``, ``frequency_threshold``,
        ``num_oov_buckets``; NVTabular's ``max_size``, ``freq_threshold``, ``num_buckets``).

        Parameters
        ----------
        max_size : int or None
            The most values kept (the null and out-of-vocabulary codes not counted).
        min_frequency : int
            Values counted fewer times are left out (compared with the estimate when approximate).
        oov_buckets : int >= 1
            Codes 1..oov_buckets for values outside the vocabulary.
        salt : int
            Chooses the hash of unseen values into the buckets.

        Returns
        -------
        Categories
            Values most frequent first, ties broken by the values' sort order: the same on every
            machine and whatever the order of the chunks and merges (in the exact regime).
        """
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer))
                                     or max_size < 0):
            raise ConfigError(f"max_size is a non-negative integer or None, not {max_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, (int, np.integer)):
            raise ConfigError(f"min_frequency is an integer, not {min_frequency!r}")
        values, counts = self._ordered()
        n = int(np.searchsorted(-counts, -min_frequency, side="right"))  # counts are sorted descending
        n = n if max_size is None else min(n, int(max_size))
        return Categories(self.kind or "string", values[:n], counts[:n], oov_buckets, salt)

    def state_dict(self) -> dict:
        """A JSON-able dict, values in the canonical order (equal vocabularies give equal states)."""
        values, counts = self._ordered()
        return {"format": _FORMAT, "version": _VERSION, "capacity": self.capacity, "kind": self.kind,
                "rows": self.rows, "nulls": self.nulls, "error": self.error,
                "values": values_to_json(values), "counts": counts.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> Vocabulary:
        """The vocabulary a :meth:`state_dict` describes; a ValueError naming what is wrong."""
        what = "vocabulary state"
        check_header(state, _FORMAT, _VERSION, what)
        v = cls(check_int(state, "capacity", 1, MAX_VALUES, what))
        v.rows, v.nulls, v.error = (check_int(state, k, 0, 2**62, what) for k in ("rows", "nulls", "error"))
        kind = state.get("kind")
        if kind is None:
            if state.get("values") != [] or state.get("counts") != [] or v.rows or v.error:
                raise ValueError(f"{what}: kind is None but values were counted")
            return v
        v.kind = kind
        v._values = values_from_json(state.get("values"), kind, v.capacity, what)
        v._counts = counts_from_json(state.get("counts"), len(v._values), what)
        total = int(v._counts.sum())
        if total > v.rows or (v.error == 0 and total != v.rows):
            raise ValueError(f"{what}: the counts sum to {total}, which does not fit rows {v.rows} "
                             f"with error {v.error}")
        return v
