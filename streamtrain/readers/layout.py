"""Rows and chunks: boundaries, bounds on what a file may declare, and the arrays a reader returns."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import DataError

__all__ = ["uniform_bounds", "virtual_chunk_rows", "check_chunk_size", "as_features", "as_labels", "kept",
           "MAX_CHUNKS", "MAX_CHUNK_BYTES", "VIRTUAL_CHUNK_BYTES"]

# More chunks than this (a 128 MB boundary table) means malformed metadata, not data.
MAX_CHUNKS = 1 << 24
# A declared chunk larger than this is refused before anything is allocated for it.
MAX_CHUNK_BYTES = 1 << 30
# Contiguous (unchunked) sources are split into virtual chunks of about this size.
VIRTUAL_CHUNK_BYTES = 4 << 20


def uniform_bounds(n_rows: int, chunk_rows: int, path: str = "<data>") -> np.ndarray:
    """Chunk boundaries ``[0, r, 2r, ..., n_rows]`` for chunks of ``chunk_rows`` rows."""
    chunk_rows = max(1, int(chunk_rows))
    if -(-int(n_rows) // chunk_rows) > MAX_CHUNKS:
        raise DataError(f"{path}: declares {n_rows} rows in chunks of {chunk_rows}: more than "
                        f"{MAX_CHUNKS} chunks; refused as malformed")
    bounds = np.arange(0, n_rows, chunk_rows, dtype=np.int64)
    return np.append(bounds, np.int64(n_rows))


def virtual_chunk_rows(n_features: int, itemsize: int) -> int:
    """Rows per virtual chunk for a source without a chunk layout of its own."""
    return max(1, VIRTUAL_CHUNK_BYTES // max(1, n_features * itemsize))


def check_chunk_size(nbytes: int, path: str, what: str) -> None:
    """Refuse absurd declared chunk sizes (malformed or hostile metadata) before allocating."""
    if nbytes > MAX_CHUNK_BYTES:
        raise DataError(f"{path}: {what} declares chunks of {nbytes / 2**30:.1f} GiB; refused "
                        f"(more than {MAX_CHUNK_BYTES >> 30} GiB per chunk)")


def as_features(X: np.ndarray, dtype: npt.DTypeLike, path: str) -> np.ndarray:
    """Cast a block of raw feature values to ``dtype`` as a 2-D C-contiguous array."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: features have non-numeric dtype {X.dtype}")
    if X.ndim == 1:
        X = X[:, None]
    with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf, which the NaN/Inf screen names
        return np.ascontiguousarray(X, dtype=dtype)


def as_labels(y: np.ndarray | None, path: str) -> np.ndarray | None:
    """Labels as stored, except bool becomes int8 so arithmetic works."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: label has non-numeric dtype {y.dtype}")
    if y.dtype.kind == "b":
        y = y.astype(np.int8)
    return y


def kept(X: np.ndarray, y: np.ndarray | None, keep: np.ndarray | None = None):
    """``(X, y)`` less the rows that ``keep`` leaves out (rows skipped for NaN/Inf)."""
    if keep is None:
        return X, y
    return X[keep], None if y is None else y[keep]
