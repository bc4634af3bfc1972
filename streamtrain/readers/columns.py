"""Column-oriented sources: each feature is a named column (a Parquet column, a field of an
HDF5 table, a 1-D Zarr array), possibly one element of a vector-valued column."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import DataError, nearest

__all__ = ["Column", "vector_columns", "select_columns", "left_out", "fill_features", "find_key", "FEATURE_KEYS",
           "LABEL_KEYS"]

# Auto-detection, documented in the README: an array/dataset named like a feature
# matrix and one named like a label; for column formats a label column and every
# other numeric column as a feature.
FEATURE_KEYS = ("X", "x", "features", "data", "inputs")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def find_key(available: list[str], wanted: str | None, candidates: tuple[str, ...],
             what: str, path: str, required: bool) -> str | None:
    """The array/column name to use: ``wanted`` if given, else the first candidate present
    (``wanted=False``: none, do not look for one)."""
    if wanted is False:
        return None
    if wanted is not None:
        if wanted not in available:
            near = nearest(wanted, available)
            if near is not None:
                raise DataError(f"{path}: no {what} named {wanted!r} (did you mean {near!r}?)")
            raise DataError(f"{path}: no {what} named {wanted!r} (found: "
                            f"{', '.join(map(repr, available)) or 'nothing'})")
        return wanted
    for name in candidates:
        # A candidate matches a top-level name first, then the last part of a nested path.
        for key in [k for k in available if k == name] + [k for k in available if k.split("/")[-1] == name]:
            return key
    if required:
        raise DataError(f"{path}: no {what} found; name it with --{what.split()[0]} "
                        f"(looked for {', '.join(candidates)}; found: {', '.join(available) or 'nothing'})")
    return None


@dataclass(frozen=True)
class Column:
    """One feature or label: ``name`` as the user sees it, stored in ``key`` (at ``index`` if vector-valued)."""

    name: str
    key: str
    index: int | None = None
    numeric: bool = True
    auto: bool = True  # chosen as a feature when features are not named (not a hive partition key)
    type: str = ""  # the stored type, as the format names it (for what is left out)


def vector_columns(key: str, width: int | None, numeric: bool = True, names: list[str] | None = None,
                   type: str = "") -> list[Column]:
    """The columns of one stored key: itself if scalar, else ``key[0]``... (or ``names``) for each element."""
    if width is None:
        return [Column(key, key, None, numeric, type=type)]
    names = names if names and len(names) == width else [f"{key}[{i}]" for i in range(width)]
    return [Column(n, key, i, numeric, type=type) for i, n in enumerate(names)]


def select_columns(columns: list[Column], features: list[str] | str | None, label: str | None,
                   path: str) -> tuple[list[Column], Column | None]:
    """Feature and label columns from explicit names, globs, or auto-detection.

    Without ``features`` every numeric column except the label is a feature.
    """
    by_name = {c.name: c for c in columns}
    label_name = find_key(list(by_name), label, LABEL_KEYS, "label column", path, required=False)
    label_col = by_name.get(label_name) if label_name else None
    if label_col is not None and not label_col.numeric:
        raise DataError(f"{path}: label column {label_name!r} is not numeric")
    if features is None:
        chosen = [c for c in columns if c.numeric and c.auto and c.name != label_name]
    else:
        chosen, seen = [], set()
        for pat in [features] if isinstance(features, str) else list(features):
            hits = [c for c in columns if fnmatch.fnmatchcase(c.name, pat) or c.key == pat]
            if not hits:
                raise DataError(f"{path}: no column matches {pat!r} (columns: {_listing(columns)})")
            for c in hits:
                if c.name not in seen and c.name != label_name:
                    seen.add(c.name)
                    chosen.append(c)
        bad = [c for c in chosen if not c.numeric]
        if bad:
            raise DataError(f"{path}: feature column {bad[0].name!r} is not numeric")
    if not chosen:
        raise DataError(f"{path}: no numeric feature columns (columns: {_listing(columns)})")
    return chosen, label_col


def left_out(columns: list[Column], chosen: list[Column], label: Column | None) -> list[tuple[str, str]]:
    """``(name, why)`` of each column that is neither a feature nor the label, where the features
    were found by themselves (named ones leave the rest out by the user's own choice)."""
    used = {c.name for c in chosen} | ({label.name} if label is not None else set())
    out = []
    for c in columns:
        if c.name in used:
            continue
        if not c.numeric:
            out.append((c.name, f"{c.type or 'not numeric'}: streamtrain does not encode such columns yet"))
        elif not c.auto:
            out.append((c.name, "a hive partition key: used only when named in --features"))
    return out


def _listing(columns: list[Column], most: int = 12) -> str:
    names = [c.name for c in columns]
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


# Rows per block of ``fill_features``: its column-major scratch stays about 2 MiB, within cache.
_FILL_BYTES = 2 << 20


def fill_features(columns: list[Column], n: int, dtype, fetch: Callable[[str], np.ndarray]) -> np.ndarray:
    """A ``(n, len(columns))`` array filled column by column; ``fetch(key)`` is called once per key."""
    cache: dict[str, np.ndarray] = {}
    sources = []
    for c in columns:
        a = cache.get(c.key)
        if a is None:
            a = cache[c.key] = np.asarray(fetch(c.key))
        a = a if c.index is None else a[:, c.index]
        if a.shape[:1] != (n,):
            raise ValueError(f"column {c.name!r} has {a.shape[0] if a.ndim else 1} values, not {n}")
        sources.append(a)
    X = np.empty((n, len(columns)), dtype=dtype)
    # Writing a column of a row-major array strides through all of it (several times slower for
    # tens of columns): each block of rows is gathered column-major, then transposed in.
    rows = max(256, _FILL_BYTES // max(1, len(columns) * X.itemsize))
    scratch = np.empty((len(columns), min(rows, n)), dtype=dtype)
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf, which the NaN/Inf screen names
        for a0 in range(0, n, rows):
            m = min(rows, n - a0)
            for j, a in enumerate(sources):
                scratch[j, :m] = a[a0:a0 + m]
            X[a0:a0 + m] = scratch[:, :m].T
    return X
