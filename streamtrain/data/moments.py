"""A block's per-column mean and sum of squared deviations, compiled: two passes over the block in
its own memory order, summed in float64, with no float64 copy of it. numpy's form (a float64 copy,
its mean, the deviations, their squares: four arrays the block's size) was most of the statistics
pass over a click log's hundred-odd dense columns. Imported where used: numba's import is not
every command's."""

from __future__ import annotations

from .._jit import numba
import numpy as np

__all__ = ["column_moments"]


@numba.njit(cache=True, nogil=True)
def _by_rows(X, mean, m2):  # pragma: no cover - compiled
    # X (n, f), rows contiguous: each pass adds row after row into f float64 sums
    n, f = X.shape
    for i in range(n):
        for j in range(f):
            mean[j] += X[i, j]
    for j in range(f):
        mean[j] /= n
    for i in range(n):
        for j in range(f):
            d = X[i, j] - mean[j]
            m2[j] += d * d


@numba.njit(cache=True, nogil=True)
def _by_columns(XT, mean, m2):  # pragma: no cover - compiled
    # XT (f, n): a column-major block's columns, each contiguous and read twice while in cache
    f, n = XT.shape
    for j in range(f):
        s = 0.0
        for i in range(n):
            s += XT[j, i]
        mu = s / n
        q = 0.0
        for i in range(n):
            d = XT[j, i] - mu
            q += d * d
        mean[j], m2[j] = mu, q


def column_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and sum of squared deviations from it, in float64.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, f), n >= 1
        Float32 or float64, in either memory order (another layout is copied first).

    Returns
    -------
    mean, m2 : numpy.ndarray, shape (f,), float64
    """
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    f = X.shape[1]
    mean, m2 = np.zeros(f), np.zeros(f)
    if X.flags.f_contiguous and not X.flags.c_contiguous:
        _by_columns(X.T, mean, m2)
    else:
        _by_rows(np.ascontiguousarray(X), mean, m2)
    return mean, m2
