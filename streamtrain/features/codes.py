"""A finished vocabulary and the integer codes it gives, in NVTabular's fixed layout:

    0            missing (null)
    1 .. B       out of vocabulary: B >= 1 buckets; with B > 1 an unseen value is hashed into one
    B+1 .. B+V   the vocabulary, most frequent first

so a code is a row of an embedding (or a one-hot position) of ``size = 1 + B + V`` rows, and codes
keep their meaning when later data brings values the vocabulary never saw. (NVTabular's
Categorify keeps 0 for padding and starts at 1 for nulls; streamtrain has no sequences to pad.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .hashing import bucket, null_mask
from .kinds import (MAX_VALUES, VALUE_KINDS, as_arrow, canonical, check_header, check_int, counts_from_json,
                    values_from_json, values_to_json)

__all__ = ["Categories", "MAX_OOV_BUCKETS"]

MAX_OOV_BUCKETS = 1 << 24
_FORMAT, _VERSION = "streamtrain.categories", 1


class Categories:
    """An ordered vocabulary and the codes it gives (the module's docstring has the layout).

    Made by :meth:`Vocabulary.finalize`; holds the values in their kind's canonical Arrow type.

    Parameters
    ----------
    kind : {"string", "int", "bool"}
    values : pyarrow.Array, shape (V,)
        Distinct, non-null; code ``B + 1 + i`` is ``values[i]``.
    counts : array of int, shape (V,)
        How often each value was seen (its estimate, for an approximate vocabulary).
    oov_buckets : int >= 1
        B, the codes for values outside the vocabulary.
    salt : int
        The hash salt choosing an unseen value's bucket when B > 1.

    Examples
    --------
    >>> import pyarrow as pa
    >>> cats = Categories("string", pa.array(["b", "a"]), [5, 2], oov_buckets=1)
    >>> cats.encode(pa.array(["a", None, "zebra", "b"])).tolist()
    [3, 0, 1, 2]
    >>> cats.size
    4
    """

    def __init__(self, kind: str, values, counts, oov_buckets: int = 1, salt: int = 0):
        if kind not in VALUE_KINDS:
            raise ConfigError(f"unknown value kind {kind!r} (one of {', '.join(VALUE_KINDS)})")
        if isinstance(oov_buckets, bool) or not isinstance(oov_buckets, (int, np.integer)) \
                or not 1 <= oov_buckets <= MAX_OOV_BUCKETS:
            raise ConfigError(f"oov_buckets is an integer in [1, {MAX_OOV_BUCKETS}], not {oov_buckets!r}")
        values, got = canonical(values)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if got != kind or values.null_count or (len(values) and pc.count_distinct(values).as_py() != len(values)):
            raise ConfigError(f"a {kind} vocabulary's values must be distinct, non-null {kind}s")
        self.kind, self.values, self.oov_buckets, self.salt = kind, values, int(oov_buckets), int(salt)
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.shape != (len(values),):
            raise ConfigError(f"{len(values)} values but counts of shape {self.counts.shape}")
        bucket(pa.array([], pa.int64()), 1, self.salt)  # checks the salt now, not at the first unseen value

    @property
    def offset(self) -> int:
        """The first vocabulary code, ``1 + oov_buckets``."""
        return 1 + self.oov_buckets

    @property
    def size(self) -> int:
        """How many codes there are (``1 + oov_buckets + len(values)``): an embedding's rows."""
        return self.offset + len(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Categories({self.kind}, {len(self)} values, oov_buckets={self.oov_buckets})"

    def encode(self, values) -> np.ndarray:
        """The code of each value.

        Parameters
        ----------
        values : pyarrow Array / ChunkedArray (any string, integer, bool or dictionary type), or
            numpy / list, shape (n,)

        Returns
        -------
        numpy.ndarray of int64, shape (n,), in ``[0, size)``.
        """
        arr = as_arrow(values)
        if isinstance(arr, pa.ChunkedArray):
            parts = [self.encode(c) for c in arr.chunks]
            return np.concatenate(parts) if parts else np.empty(0, np.int64)
        if pa.types.is_null(arr.type):  # (a file's column with no value at all: every row is missing)
            return np.zeros(len(arr), np.int64)
        if pa.types.is_dictionary(arr.type):
            # A dictionary column: encode its dictionary once, then gather by the row's index.
            table = self.encode(arr.dictionary)
            idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False)
            codes = table[idx] if len(table) else np.zeros(len(arr), np.int64)
            codes[null_mask(arr)] = 0
            return codes
        arr, kind = canonical(arr)
        if kind != self.kind:
            raise DataError(f"it holds {kind} values where training's held {self.kind} values; cast the column "
                            f"to {self.kind} as training's file stored it")
        # index_in: null where the value is absent from the vocabulary (or null itself).
        found = pc.index_in(arr, value_set=self.values).fill_null(-1).to_numpy(zero_copy_only=False)
        codes = found.astype(np.int64) + self.offset
        unseen = found < 0
        missing = null_mask(arr)
        unseen &= ~missing
        if unseen.any():
            codes[unseen] = 1 if self.oov_buckets == 1 else \
                1 + bucket(arr.filter(pa.array(unseen)), self.oov_buckets, self.salt)
        codes[missing] = 0
        return codes

    def decode(self, codes) -> pa.Array:
        """The value of each code: shape (n,) in the kind's Arrow type, null for 0 and the buckets."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.size):
            raise DataError(f"codes must lie in [0, {self.size})")
        i = codes - self.offset
        return self.values.take(pa.array(i, mask=i < 0))

    def state_dict(self) -> dict:
        """A JSON-able dict (:meth:`from_state` reads it back)."""
        return {"format": _FORMAT, "version": _VERSION, "kind": self.kind, "oov_buckets": self.oov_buckets,
                "salt": self.salt, "values": values_to_json(self.values), "counts": self.counts.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> Categories:
        """The categories a :meth:`state_dict` describes; a ValueError naming what is wrong."""
        what = "categories state"
        check_header(state, _FORMAT, _VERSION, what)
        values = values_from_json(state.get("values"), state.get("kind"), MAX_VALUES, what)
        counts = counts_from_json(state.get("counts"), len(values), what)
        return cls(state["kind"], values, counts, check_int(state, "oov_buckets", 1, MAX_OOV_BUCKETS, what),
                   check_int(state, "salt", 0, 2**64 - 1, what))
