"""Tables whose columns need more than a cast to float (strings, categories, timestamps, missing
values, a string label): which columns a dataset uses and the encoding that turns them into
inputs (``features/encoding.py``), shared by the readers of tables (Parquet, CSV, data frames)."""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

import pyarrow as pa

from ..errors import ConfigError, DataError
from ..features.encoding import Encoding, EncodingOptions
from ..features.learn import identifier_notes, learn_encoding, needs_encoding
from .columns import LABEL_KEYS, find_key

__all__ = ["plan_table", "many_name", "adopt_encoding", "encoded_chunk", "encoded_keys", "chunk_tables"]


def many_name(paths: list[str]) -> str:
    """How messages name a dataset of several files: the first, and how many more."""
    more = len(paths) - 1
    return paths[0] if not more else f"{paths[0]} (+{more} more file{'s' if more > 1 else ''})"


def _candidates(names: list[str], features, label: str | None, hidden: set, path: str) -> list[str]:
    """The feature columns: every column but the label and ``hidden`` ones, or those ``features``
    names (names or globs, in order)."""
    if features is None:
        return [n for n in names if n != label and n not in hidden]
    out: list[str] = []
    for pat in [features] if isinstance(features, str) else list(features):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise DataError(f"{path}: no column matches {pat!r} (columns: {', '.join(names[:12])}"
                            f"{', ...' if len(names) > 12 else ''})")
        out += [n for n in hits if n != label and n not in out]
    return out


def plan_table(schema: pa.Schema, features, label, path: str, tables: Callable[[list[str]], Iterable[pa.Table]],
               null_counts: Callable[[str], int | None], hidden: set = frozenset(), encoding: dict | None = None,
               encode: dict | None = None, nan_missing: bool = False, notes: list | None = None) -> Encoding | None:
    """The encoding a table's chosen columns need, or None where they are plain numbers without
    missing values (read as they are, the fast path).

    ``encoding``: a learned encoding's state (a model's): used as it is, its columns checked to
    be in the table. Otherwise the label is found (``label``, or by name; False: none), the
    features chosen (``features``, or every other column but ``hidden`` ones), and, where they
    need it, an encoding learned in one pass (``tables(columns)`` yields the chunks) with the
    ``encode`` options (:class:`EncodingOptions`' fields). ``nan_missing``: a float column's NaN
    is a missing value (stores without nulls: HDF5, Zarr); such a column alone does not call for
    an encoding (it is screened for NaN as plain numbers are), but in an encoded table it is
    counted in the pass, its NaN imputed. ``notes``: where given, the plain path appends to it
    ``(column, note)`` for each column of whole numbers that looks like an identifier (an encoded
    table's are its encoding's ``notes``).
    """
    names = list(schema.names)
    if encoding is not None:
        try:
            enc = Encoding.from_state(encoding)
        except ValueError as e:
            raise DataError(f"{path}: the model's column encoding is malformed ({e})") from None
        missing = [n for n in enc.inputs if n not in names]
        if missing:
            raise DataError(f"{path}: has no column {missing[0]!r}, which the model encodes "
                            f"(columns: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
        return enc
    label_name = find_key(names, label, LABEL_KEYS, "label column", path, required=False)
    chosen = _candidates(names, features, label_name, set(hidden), path)
    if not chosen:
        raise DataError(f"{path}: no feature columns (columns: {', '.join(names[:12])})")
    if not needs_encoding(schema, chosen, label_name, null_counts) and not (encode or {}).get("overrides"):
        if notes is not None:
            notes.extend(identifier_notes([n for n in chosen if pa.types.is_integer(schema.field(n).type)],
                                          tables).items())
        return None
    try:
        options = EncodingOptions(**(encode or {}))
    except TypeError as e:
        raise ConfigError(f"encoding options: {e}") from None
    if nan_missing:
        counted = null_counts
        null_counts = lambda name: None if pa.types.is_floating(schema.field(name).type) else counted(name)  # noqa: E731
    return learn_encoding(schema, chosen, label_name, tables, options, path, null_counts)


def chunk_tables(n_chunks: int, read: Callable[[int, list[str]], pa.Table], keys: list[str],
                 part: tuple[int, int] | None = None):
    """Every chunk's ``keys`` columns as Arrow tables (``read(i, keys)``), in order, for the
    encoding's pass; with ``part`` (rank, size) only chunks rank, rank + size, ..., as (chunk,
    table) pairs (several processes share the pass: ``features.learn.shared_pass``)."""
    if part is None:
        return (read(i, keys) for i in range(n_chunks))
    rank, size = part
    return ((i, read(i, keys)) for i in range(rank, n_chunks, size))


def adopt_encoding(ds, names: list[str], label, label_type: Callable[[bool], str | None],
                   extra_left_out: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Set an encoded table's ``feature_names``, ``label_name`` and ``left_out`` on dataset ``ds``
    (its ``encoding`` set; ``names``: the table's columns) and return the columns to read.

    ``label_type(plain)``: the label's type as read; ``plain``: the encoding leaves it as it is
    (numbers), else it is read as float64 (class indices; NaN where missing).
    """
    enc = ds.encoding
    has_label = label is not False and enc.label_name is not None and enc.label_name in names
    ds.feature_names = list(enc.feature_names)
    ds.label_name = enc.label_name if has_label else None
    ds._label_type = label_type(enc.label is None) if has_label else None
    ds.left_out = list(enc.left_out) + list(extra_left_out)
    return list(enc.inputs) + ([enc.label_name] if has_label else [])


def encoded_keys(ds) -> list[str]:
    """The raw columns an encoded dataset's chunk reads: all of them, or without the columns read
    as codes alone while ``ds.read_codes`` is False (a statistics pass: codes are not scaled)."""
    if ds.read_codes:
        return ds._keys
    skip = set(ds.encoding.code_inputs)
    return [k for k in ds._keys if k not in skip]


def encoded_chunk(ds, table: pa.Table, where: str):
    """``(X, y)`` of an encoded dataset's chunk, read as the Arrow ``table`` (of ``encoded_keys``)."""
    from .layout import as_labels

    X = ds.encoding.transform(table, ds.dtype, where, ds.read_codes)
    y = as_labels(ds.encoding.labels(table.column(ds.label_name), where), ds.path) if ds.label_name else None
    return X, y
