"""The kinds of category values ("string", "int", "bool"), how chunks of them are counted, and
how they travel through JSON.

A vocabulary keeps its values in one canonical Arrow type per kind (large_string, int64, bool),
so that a column written as string by one file and large_string or dictionary by another, or as
int8 here and int64 there, counts as the same values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError

__all__ = ["VALUE_KINDS", "MAX_VALUES", "as_arrow", "kind_of", "canonical", "count_values", "values_to_json",
           "values_from_json", "counts_from_json", "check_int", "check_header"]

VALUE_KINDS = {"string": pa.large_string(), "int": pa.int64(), "bool": pa.bool_()}
# A value longer than this is text, not a category; the limit also bounds what a state may hold.
MAX_VALUE_BYTES = 1 << 16
# The most values a vocabulary may track or a state may hold (2**24: a few hundred MB at most).
MAX_VALUES = 1 << 24


def as_arrow(values) -> pa.Array | pa.ChunkedArray:
    """An Arrow array (or chunked array) of the values: Arrow as is, numpy and lists converted."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    try:
        if isinstance(values, np.ndarray) and values.dtype.kind in "UTO":
            return pa.array(values, type=pa.large_string())
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise DataError(f"category values must be strings, integers or bools: {str(e).splitlines()[0]}") from None


def kind_of(t: pa.DataType) -> str:
    """The value kind of an Arrow type (a dictionary's by its values); a DataError for any other."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    raise DataError(f"values of type {t} are not categories (strings, integers or bools are); "
                    "bin numbers or cast them to string first")


def canonical(values) -> tuple[pa.Array | pa.ChunkedArray, str]:
    """The values in their kind's canonical type (dictionaries decoded), and the kind."""
    arr = as_arrow(values)
    kind = kind_of(arr.type)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode() if isinstance(arr, pa.Array) else pc.cast(arr, arr.type.value_type)
    if arr.type != VALUE_KINDS[kind]:
        try:
            arr = pc.cast(arr, VALUE_KINDS[kind])
        except pa.ArrowInvalid:
            raise DataError("an unsigned integer above 2**63 - 1 cannot be a category value") from None
    return arr, kind


def count_values(values) -> tuple[pa.Array, np.ndarray, int, str]:
    """The distinct non-null values of a chunk (canonical type), their counts (int64, same length),
    the number of nulls, and the kind (None for values of Arrow's null type: a file whose column
    holds no value at all). Counted by Arrow's ``value_counts``: no Python per row."""
    arr = as_arrow(values)
    if pa.types.is_null(arr.type):
        return pa.array([], pa.large_string()), np.zeros(0, np.int64), len(arr), None
    kind = kind_of(arr.type)
    if pa.types.is_string_view(arr.type):
        arr = pc.cast(arr, pa.large_string())  # pyarrow 26's value_counts counts a null string_view as ""
    counted = pc.value_counts(arr)  # on the stored type: a dictionary column counts its codes, not its strings
    distinct, counts = counted.field("values"), counted.field("counts")
    nulls = 0
    # value_counts counts nulls as a value; a dictionary's null may also be an entry that a code points at
    # (``is_valid`` sees both).
    if distinct.null_count or pa.types.is_dictionary(distinct.type):
        keep = distinct.is_valid()
        nulls = int(pc.sum(counts.filter(pc.invert(keep))).as_py() or 0)
        distinct, counts = distinct.filter(keep), counts.filter(keep)
    dictionary = pa.types.is_dictionary(distinct.type)
    distinct, _ = canonical(distinct)
    if dictionary and len(distinct) and pc.count_distinct(distinct).as_py() < len(distinct):
        # a dictionary that repeats an entry (Parquet's never do; an Arrow body's may): its codes
        # counted apart decode to one value, counted once with their sum
        summed = pa.table({"v": distinct, "c": counts}).group_by("v").aggregate([("c", "sum")])
        distinct, counts = summed["v"].combine_chunks(), summed["c_sum"].combine_chunks()
    if kind == "string" and len(distinct) and pc.max(pc.binary_length(distinct)).as_py() > MAX_VALUE_BYTES:
        raise DataError(f"a value longer than {MAX_VALUE_BYTES} bytes is text, not a category: "
                        "hash the column or drop it")
    return distinct, counts.to_numpy(zero_copy_only=False).astype(np.int64), nulls, kind


def values_to_json(values: pa.Array) -> list:
    """The values as a JSON-able list (str, int or bool)."""
    return values.to_pylist()


def values_from_json(items, kind: str, limit: int, what: str) -> pa.Array:
    """The canonical array of a state's values, each checked; a ValueError naming the problem."""
    if kind not in VALUE_KINDS:
        raise ValueError(f"{what}: unknown value kind {kind!r} (one of {', '.join(VALUE_KINDS)})")
    if not isinstance(items, list) or len(items) > limit:
        raise ValueError(f"{what}: values must be a list of at most {limit} items")
    want = {"string": str, "int": int, "bool": bool}[kind]
    for x in items:
        if type(x) is not want:
            raise ValueError(f"{what}: a value {x!r:.40} is not of kind {kind!r}")
        if kind == "string" and _utf8_length(x, what) > MAX_VALUE_BYTES:
            raise ValueError(f"{what}: a string value is longer than {MAX_VALUE_BYTES} bytes")
        if kind == "int" and not -2**63 <= x < 2**63:
            raise ValueError(f"{what}: an integer value {x} does not fit in int64")
    arr = pa.array(items, type=VALUE_KINDS[kind])
    if len(arr) and pc.count_distinct(arr).as_py() != len(arr):
        raise ValueError(f"{what}: values repeat")
    return arr


def _utf8_length(x: str, what: str) -> int:
    try:
        return len(x.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what}: a string value is not valid Unicode (a lone surrogate)") from None


def check_int(state: dict, key: str, lo: int, hi: int, what: str) -> int:
    """``state[key]``, an integer in ``[lo, hi]``; a ValueError naming the key otherwise."""
    x = state.get(key)
    if type(x) is not int or not lo <= x <= hi:
        raise ValueError(f"{what}: {key} must be an integer in [{lo}, {hi}], not {x!r:.40}")
    return x


def check_header(state, fmt: str, version: int, what: str) -> None:
    """That a state is a dict of the expected format and version."""
    if not isinstance(state, dict):
        raise ValueError(f"{what}: a state is a dict, not {type(state).__name__}")
    if state.get("format") != fmt or state.get("version") != version:
        raise ValueError(f"{what}: not a {fmt} state of version {version} "
                         f"(format {state.get('format')!r:.40}, version {state.get('version')!r:.20})")


def counts_from_json(items, n: int, what: str) -> np.ndarray:
    """A state's counts: a list of ``n`` integers >= 1, as int64."""
    if not isinstance(items, list) or len(items) != n:
        raise ValueError(f"{what}: counts must be a list as long as values ({n})")
    if any(type(c) is not int or not 1 <= c < 2**62 for c in items):
        raise ValueError(f"{what}: counts must be integers in [1, 2**62)")
    return np.array(items, dtype=np.int64)
