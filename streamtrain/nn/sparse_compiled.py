"""Compiled pieces of the gathered first layer's step (inputs that are codes): the sum of the
hidden layer's gradient per selected row, lazy Adam over the rows a step touched, and plain SGD's
lazy decay (catching rows up; the penalty's sums over rows). numpy's forms (``network.sum_rows``'
reduceat, ``optim.Adam``'s fancy indexing, ``decay.LazyDecay``'s) took most of a step on a click
log; the arithmetic here is theirs, in the same order."""

from __future__ import annotations

from .._jit import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

from .lanes import SECOND

__all__ = ["add_rows", "row_sums", "adam_rows", "catch_up_rows", "row_square_sums", "take_rows",
           "rows_finite"]

#: Rows ahead whose memory a loop over scattered table rows asks for while it works on the current
#: one (``prefetch``): a table's rows are a random walk over gigabytes, each a wait for memory.
AHEAD = 8


def _prefetch_intrinsic(write: int):
    """An intrinsic ``(arr, i, j)`` asking for the cache line of ``arr[i, j]`` (LLVM's prefetch,
    for writing or for reading, kept close); nothing else happens: what a loop computes is unchanged."""
    @intrinsic
    def prefetch(typingctx, arr, i, j):
        def codegen(context, builder, signature, args):
            aty = signature.args[0]
            ary = context.make_array(aty)(context, builder, args[0])
            at = [context.cast(builder, v, t, numba.types.intp) for v, t in zip(args[1:], signature.args[1:])]
            ptr = cgutils.get_item_pointer(context, builder, aty, ary, at, wraparound=False)
            byte, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
                                                "llvm.prefetch.p0i8")
            builder.call(fn, [builder.bitcast(ptr, byte), ir.Constant(i32, write), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return numba.types.void(arr, i, j), codegen
    return prefetch


_prefetch_write, _prefetch_read = _prefetch_intrinsic(1), _prefetch_intrinsic(0)

if numba.config.DISABLE_JIT:  # (numba's pure-Python mode runs no intrinsic: nothing to ask for there)
    def _prefetch_row(A, r, write=True):
        pass
else:
    @numba.njit(cache=True, nogil=True)
    def _prefetch_row(A, r, write=True):  # pragma: no cover - compiled
        """Ask for every cache line of ``A[r]`` (a row of floats), to write or only to read."""
        w = A.shape[1]
        step = max(1, 64 // A.itemsize)  # (elements in a 64-byte line)
        for j in range(0, w, step):
            if write:
                _prefetch_write(A, r, j)
            else:
                _prefetch_read(A, r, j)
        if w and (w - 1) % step:  # (the last element's line too: a row need not start on a line)
            if write:
                _prefetch_write(A, r, w - 1)
            else:
                _prefetch_read(A, r, w - 1)


@intrinsic
def _bits_finite(typingctx, x):
    """Whether the float ``x`` is finite, from its bits, passed through an empty asm statement: in a
    caller compiled with fastmath (which assumes no inf or NaN) a float test would be folded away."""
    if not isinstance(x, numba.types.Float):
        return None
    width = x.bitwidth
    mask = (0x7FF << 52) if width == 64 else (0xFF << 23)  # (the exponent's bits: all set for inf and NaN)

    def codegen(context, builder, signature, args):
        ity = ir.IntType(width)
        bits = builder.asm(ir.FunctionType(ity, [ity]), "", "=r,0", [builder.bitcast(args[0], ity)], False)
        return builder.icmp_unsigned("!=", builder.and_(bits, ir.Constant(ity, mask)), ir.Constant(ity, mask))
    return numba.types.boolean(x), codegen


if numba.config.DISABLE_JIT:
    def _finite(x):
        return bool(np.isfinite(x))
else:
    @numba.njit(cache=True, nogil=True)
    def _finite(x):  # pragma: no cover - compiled
        """Whether ``x`` is finite, also where the caller is compiled with fastmath."""
        return _bits_finite(x)


@numba.njit(cache=True, nogil=True)
def _add_rows(h, W, picked):  # pragma: no cover - compiled
    for i in range(picked.shape[0]):
        if i + 1 < picked.shape[0]:  # the next sample's rows, while this one's are summed
            for c in range(picked.shape[1]):
                _prefetch_row(W, picked[i + 1, c], False)
        for c in range(picked.shape[1]):
            r = picked[i, c]
            for j in range(h.shape[1]):
                h[i, j] += W[r, j]


def add_rows(h: np.ndarray, W: np.ndarray, picked: np.ndarray) -> None:
    """Add to each row ``i`` of ``h`` (samples, hidden) the rows ``picked[i]`` (samples, code
    columns) of ``W``, column by column: ``for r in picked.T: h += W[r]`` without its
    temporaries, bitwise (each sum in the same order)."""
    _add_rows(h, W, np.ascontiguousarray(picked))


@numba.njit(cache=True, nogil=True)
def _sums(ranked, order, da1, out_rows, out):  # pragma: no cover - compiled
    n, h = da1.shape
    u, prev = -1, -1
    for i in range(ranked.size):
        r, src = ranked[i], order[i] % n
        if r != prev:
            u += 1
            out_rows[u] = r
            prev = r
            for j in range(h):
                out[u, j] = da1[src, j]
        else:
            for j in range(h):
                out[u, j] += da1[src, j]
    return u + 1


def row_sums(picked: np.ndarray, da1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``picked`` ``(samples, code columns)``, sorted, and for each the sum
    of ``da1``'s rows of the samples that selected it (column by column, in sample order)."""
    flat = np.ascontiguousarray(picked.T).reshape(-1)
    order = np.argsort(flat, kind="stable")
    ranked = flat[order]
    out_rows = np.empty(ranked.size, np.intp)
    out = np.empty((ranked.size, da1.shape[1]), da1.dtype)
    u = _sums(ranked, order, np.ascontiguousarray(da1), out_rows, out)
    return out_rows[:u], out[:u]


# (error_model="numpy": a division by zero gives inf, as numpy's, instead of a raising branch that
# keeps the row's loop from vectorising; the values are the same)
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam_rows(p, m, v, rows, g, s):  # pragma: no cover - compiled
    b1, one_b1, b2, one_b2, step, c2, eps = s[0], s[1], s[2], s[3], s[4], s[5], s[6]
    for i in range(rows.size):
        if i + AHEAD < rows.size:
            q = rows[i + AHEAD]
            _prefetch_row(p, q, True)
            _prefetch_row(m, q, True)
            _prefetch_row(v, q, True)
        r = rows[i]
        for j in range(p.shape[1]):
            gi = g[i, j]
            mi = m[r, j] * b1 + one_b1 * gi
            m[r, j] = mi
            vi = v[r, j] * b2 + one_b2 * gi * gi
            v[r, j] = vi
            p[r, j] -= step * mi / (np.sqrt(vi / c2) + eps)


#: Rows from which lazy Adam's update is shared with a second thread (``lanes.SECOND``): a handoff
#: costs tens of microseconds, a row about half of one (a random walk over the table and its
#: moments, their pages written for the first time early on).
SPLIT_ROWS = 2048


def adam_rows(p: np.ndarray, m: np.ndarray, v: np.ndarray, rows: np.ndarray, g: np.ndarray, beta1: float,
              beta2: float, step: float, c2: float, eps: float) -> None:
    """Lazy Adam on ``rows`` of ``p`` ``(rows, columns)`` and its moments, their gradient ``g``;
    ``step``: the learning rate over the first moment's bias correction, ``c2`` the second's.
    Distinct rows (``row_sums``' sorted ones), from ``SPLIT_ROWS`` on and with two cores or
    more, are updated in two halves at once: each row's arithmetic is the same, so are the values."""
    s = np.array([beta1, 1.0 - beta1, beta2, 1.0 - beta2, step, c2, eps], dtype=p.dtype)
    g = np.ascontiguousarray(g, p.dtype)
    h = rows.size // 2
    if rows.size >= SPLIT_ROWS and SECOND.worth_it() and (rows[1:] > rows[:-1]).all():
        SECOND.both(_adam_rows, (p, m, v, rows[:h], g[:h], s), (p, m, v, rows[h:], g[h:], s))
    else:
        _adam_rows(p, m, v, rows, g, s)


@numba.njit(cache=True, nogil=True)
def catch_up_rows(W, stamp, rows, scale):  # pragma: no cover - compiled
    """Multiply each of ``rows`` of ``W`` by ``scale / stamp[row]`` (in float64, rounded once to
    ``W``'s type, as ``LazyDecay.catch_up``) where that is not 1, and stamp it ``scale``."""
    for i in range(rows.size):
        r = rows[i]
        s = stamp[r]
        if s != scale:
            m = scale / s
            for j in range(W.shape[1]):
                W[r, j] = W[r, j] * m
            stamp[r] = scale


@numba.njit(cache=True, nogil=True)
def row_square_sums(W, rows, stamp):  # pragma: no cover - compiled
    """``(sum over rows of (sum of the row's squares) / stamp[row]**2, sum of absolute values)``
    in float64, over ``rows`` of ``W``."""
    sq = 0.0
    ab = 0.0
    for i in range(rows.size):
        r = rows[i]
        q = 0.0
        for j in range(W.shape[1]):
            w = np.float64(W[r, j])
            q += w * w
            ab += abs(w)
        sq += q / (stamp[r] * stamp[r])
    return sq, ab


@numba.njit(cache=True, nogil=True)
def _take_rows(W, rows, out):  # pragma: no cover - compiled
    for i in range(rows.size):
        if i + AHEAD < rows.size:
            _prefetch_row(W, rows[i + AHEAD], False)
        r = rows[i]
        for j in range(W.shape[1]):
            out[i, j] = W[r, j]


def take_rows(W: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``W[rows]`` ``(rows, columns)`` (``rows`` of intp), gathered with the next rows asked for ahead."""
    out = np.empty((rows.size, W.shape[1]), W.dtype)
    _take_rows(W, rows, out)
    return out


# (error_model="numpy": x - x is nan for an infinity or a nan and 0 otherwise, summed per column
# without a branch in the loop, so it vectorises; a sum holds nan once any term is)
@numba.njit(cache=True, nogil=True, error_model="numpy")
def rows_finite(W, rows):  # pragma: no cover - compiled
    """Whether every value of ``W[rows]`` is finite, without gathering them."""
    acc = np.zeros(W.shape[1], W.dtype)
    for i in range(rows.size):
        if i + AHEAD < rows.size:
            _prefetch_row(W, rows[i + AHEAD], False)
        r = rows[i]
        for j in range(W.shape[1]):
            acc[j] += W[r, j] - W[r, j]
    for j in range(W.shape[1]):
        if acc[j] != 0.0:  # (nan != 0 is true)
            return False
    return True
