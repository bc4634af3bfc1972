"""Compiled element-wise optimiser updates: Adam's step over the four parameter arrays in one call.

numpy's form of the same step makes about eight passes and temporaries per array; at small
batches (32 rows of 64 features) it cost twice the gradients themselves. The arithmetic is
numpy's, in the arrays' own precision (the scalars come in an array of it), element by element:
the results are bitwise numpy's.
"""

from __future__ import annotations

from .._jit import numba
import numpy as np

__all__ = ["adam_update"]


# (error_model="numpy": a division by zero gives inf, as numpy's, instead of a raising branch that
# keeps the loop from vectorising; the values are the same)
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam_one(p, g, m, v, s):  # pragma: no cover - compiled
    b1, one_b1, b2, one_b2, step, c2, eps = s[0], s[1], s[2], s[3], s[4], s[5], s[6]
    p, g, m, v = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] * b1
        mi += one_b1 * gi
        m[i] = mi
        vi = v[i] * b2
        vi += one_b2 * gi * gi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi / c2) + eps)


@numba.njit(cache=True, nogil=True)
def _adam(W1, b1, W2, b2, gW1, gb1, gW2, gb2, mW1, mb1, mW2, mb2, vW1, vb1, vW2, vb2, s):  # pragma: no cover
    _adam_one(W1, gW1, mW1, vW1, s)
    _adam_one(b1, gb1, mb1, vb1, s)
    _adam_one(W2, gW2, mW2, vW2, s)
    _adam_one(b2, gb2, mb2, vb2, s)


NAMES = ("W1", "b1", "W2", "b2")


def adam_update(params: dict, grads: dict, m: dict, v: dict, beta1: float, beta2: float, step: float, c2: float,
                eps: float) -> None:
    """The network's ``params`` (``W1``, ``b1``, ``W2``, ``b2``: C-contiguous, one float dtype, as
    their ``grads``, ``m`` and ``v``) and Adam's moments updated in place; ``step`` is the learning
    rate over the first moment's bias correction, ``c2`` the second's."""
    s = np.array([beta1, 1.0 - beta1, beta2, 1.0 - beta2, step, c2, eps], dtype=params["W1"].dtype)
    _adam(*(params[k] for k in NAMES), *(grads[k] for k in NAMES), *(m[k] for k in NAMES), *(v[k] for k in NAMES), s)
