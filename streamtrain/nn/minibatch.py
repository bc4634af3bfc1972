"""The compiled minibatch step: forward, loss, backward (and for plain SGD the update) of a batch in one call.

A numpy step is some thirty array operations, each paying Python's call overhead
and writing a temporary; at batch 256 they cost more than the two matrix
products. Here the products go to BLAS (numba's ``np.dot``, through scipy) and
everything else runs in fused loops that LLVM vectorises. It computes what
``TwoLayerNet.loss_and_grads`` followed by ``SGD.step`` computes, up to float
rounding: the float32 sigmoid uses a polynomial exponential (within 2.5 ulp) that
vectorises where the C library's ``expf`` does not. The step is written with its
activation open and compiled from the module ``kernels.build`` writes, one branch
per entry of ``functions.ACTIVATIONS``.

A hidden layer even and at least 16 wide is worked as two halves of its columns
(``split``): each half's products ran faster per FLOP than the whole width's, and
two threads (``lanes``) can each take one, meeting once per block of rows to add
their halves of the output layer's input, in the same order as one thread does.
"""

from __future__ import annotations

import importlib.util
import threading

import numpy as np

from . import kernels
from . import lanes as _lanes
from .functions import ACTIVATIONS, TASKS
from .kernels import ACTIVATE, DERIVATIVE, SIGMOID, TANH, TASK_ROW, each_activation, each_task, targets_2d, task_id
from .lanes import barrier

__all__ = ["available", "load", "load_in_background", "sgd_step", "loss_and_grads", "step_batches", "split"]

_loaded: set = set()  # (dtype, sgd) entries loaded and run once
_load_lock = threading.RLock()  # load() in a background thread may meet a first call here
_exp_neg_f32 = None  # the shared exponential's name in the generated module, where _activate calls it
_adam_one = None  # optim_compiled's Adam step of one array, in the generated module, where _batches calls it
BLOCK_ROWS = 256  # rows per pass: X, the activations and their gradients stay in L2 (half-width products
# ran 1.3x faster per row at 256 rows than at 512 here, one lane or two)


def available() -> bool:
    """True when numba and scipy are importable (numba's matrix product calls BLAS through scipy)."""
    return kernels.available() and importlib.util.find_spec("scipy") is not None


def load(dtype="float32", sgd: bool = True) -> None:
    """Compile (or load from numba's cache) the entry a run will use (``sgd_step``, or
    ``loss_and_grads`` for other optimisers) and run it once: the first product loads scipy's
    BLAS, which a thread limit set afterwards (``Loader.sharing_cores``) must see."""
    key = (np.dtype(dtype), sgd)
    with _load_lock:
        if key not in _loaded:
            z = np.zeros((1, 1), key[0])
            args = (z, z[0], z, z[0], z, z, z[0], z[0, 0], z[0, 0], 0, 0, key[0] == np.float32, BLOCK_ROWS)
            if sgd:
                _get("_sgd")(*args[:7], z[0, 0], *args[7:])
            else:
                _get("_grads")(*args)
            # and the batches' loop (one compiled form for both optimisers), so a run's first
            # batches do not wait for it
            v, s = z[0], np.ones((1, 7), key[0])
            _get("_batches")(0, 1, *args[:7], True, v, v + 1, s, *args[7:], 1, not sgd, z, v, z, v, z, v, z, v,
                             np.zeros((1, 2)), *_exchange(1, 1, 1, key[0]), _lanes.flags())
            _loaded.add(key)


def load_in_background(dtype="float32", sgd: bool = True) -> None:
    """Start ``load`` in a thread: its 0.3-0.5 s (importing numba and scipy's BLAS, reading the
    cached machine code) then overlaps what the caller does before its first step."""
    if (np.dtype(dtype), sgd) not in _loaded:
        # numpy loads these on first use; numba imports them too: imported by both threads at once,
        # the import system can see a deadlock and raise in either (seen under load: numpy.random)
        import numpy.linalg  # noqa: F401
        import numpy.random  # noqa: F401

        from .. import _jit  # noqa: F401  (numba's argument types, all registered before a second thread)

        threading.Thread(target=load, args=(dtype, sgd), name="streamtrain-compile", daemon=True).start()


def _get(name: str):
    """The compiled function ``name`` (an entry point, ``_sgd`` or ``_grads``, or a helper) for
    the activations table as it is now."""
    module = _generated.module()
    if globals()["_sgd"] is not module._sgd:  # bound here too, each under its name: a test calls _activate alone
        globals().update({fn.__name__: getattr(module, fn.__name__) for fn in _FUNCTIONS})
    return getattr(module, name)


def _parts() -> list:
    # Nothing here is compiled with fastmath flags that let the compiler change a value
    # (reassoc, arcp, afn; contract outside the exponential). numba links a copy of every callee
    # into each caller's module and optimises it there, and a call that is not inlined goes to
    # whichever copy the process loaded first (compiled here, or read from the cache): with those
    # flags the copies rounded differently (a loss a last bit apart between a process that compiled
    # the step and one that read it from the cache, so a resumed run and an uninterrupted one).
    # The float32 exponential keeps contract: its multiply-adds are fixed by its source, no caller
    # adds to them. error_model="numpy": no zero-division branch, so the division loops vectorise.
    exact = dict(cache=True, nogil=True, error_model="numpy")
    from .optim_compiled import _adam_one

    return [("_exp_neg_f32", kernels.exp_neg_f32, dict(fastmath={"nsz", "contract"}, **exact)),
            ("_scale_rows", _scale_rows, exact), ("_adam_one", _adam_one.py_func, exact),
            # (by name: once _get has run, the module's names here are bound to the compiled forms)
            *((fn.__name__, fn, exact) for fn in _FUNCTIONS)]


def _activate(Z, b, act, fast_exp):  # pragma: no cover - compiled
    # Z <- act(Z + b), one loop per activation so each vectorises
    rows, h = Z.shape
    one, zero = Z.dtype.type(1), Z.dtype.type(0)
    for i in range(rows):
        for j in range(h):
            Z[i, j] += b[j]
    sigmoid = tanh = False
    with each_activation(act):  # (flags set first, so the exponential below has one call site, as it had)
        sigmoid, tanh = SIGMOID, TANH
    if not sigmoid:
        with each_activation(act):
            for i in range(rows):
                for j in range(h):
                    s = Z[i, j]
                    Z[i, j] = ACTIVATE(s, one, zero)
        return
    if tanh:  # tanh(z) = 2 sigmoid(2z) - 1
        Z *= Z.dtype.type(2)
    if fast_exp:  # float32
        E = np.empty(Z.shape, np.int32)
        _exp_neg_f32(Z, E)
        F = E.view(np.float32)
        for i in range(rows):
            for j in range(h):
                Z[i, j] = one / (one + Z[i, j] * F[i, j])
    else:
        for i in range(rows):
            for j in range(h):
                Z[i, j] = one / (one + np.exp(-Z[i, j]))
    if tanh:
        two = Z.dtype.type(2)
        for i in range(rows):
            for j in range(h):
                Z[i, j] = two * Z[i, j] - one


def _loss_delta(Z, T, R, task, n):  # pragma: no cover - compiled
    # These rows' share of the mean weighted loss over a batch of n, and how many of them the logits
    # classify right (before any update: a progressive score); Z (logits) <- dL/dZ, as functions.TASKS does.
    rows = Z.shape[0]
    total = 0.0
    correct = 0
    for i in range(rows):
        loss, right = 0.0, 0
        with each_task(task):
            loss, right = TASK_ROW(Z[i], T[i], R[i], n)
        total += loss
        correct += right
    return total / n, correct


def _penalty(W, l1, l2):  # pragma: no cover - compiled
    # in 8 running sums, added in order at the end (independent sums: the loop vectorises without
    # reassociating, which would make the order depend on the caller it is inlined into)
    w = W.reshape(-1)
    n8 = w.size - w.size % 8
    acc = np.zeros(8)
    for i in range(0, n8, 8):
        for k in range(8):
            x = w[i + k]
            acc[k] += 0.5 * l2 * x * x + l1 * abs(x)
    s = 0.0
    for k in range(8):
        s += acc[k]
    for i in range(n8, w.size):
        x = w[i]
        s += 0.5 * l2 * x * x + l1 * abs(x)
    return s


def _add_column_sums(M, out):  # pragma: no cover - compiled
    # out[j] += the sum of M's column j, rows in order
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            out[j] += M[i, j]


def _add_penalty_grad(W, G, l1, l2):  # pragma: no cover - compiled
    # G += l2 W + l1 sign W: the penalty's gradient, from the weights before the step
    w, g = W.reshape(-1), G.reshape(-1)
    if l1 == 0:
        for i in range(w.size):
            g[i] += l2 * w[i]
    else:
        for i in range(w.size):
            g[i] += l2 * w[i] + l1 * np.sign(w[i])


def _part_count(h):  # pragma: no cover - compiled
    # The hidden layer's columns in two halves where it is even and at least 16 wide: each half's
    # products ran 1.2-1.5x the FLOP rate of the whole width's (OpenBLAS, one core, 64 wide), and
    # two lanes (threads) can each take one. Always by width alone, so a run's arithmetic is the
    # same on any number of cores.
    return 2 if h >= 16 and h % 2 == 0 else 1


def _split(W, P):  # pragma: no cover - compiled
    # W's columns as P contiguous parts: out[p] = W[:, p c:(p + 1) c]
    rows, h = W.shape
    c = h // P
    out = np.empty((P, rows, c), W.dtype)
    for p in range(P):
        for i in range(rows):
            for j in range(c):
                out[p, i, j] = W[i, p * c + j]
    return out


def _join(parts, W, p0, p1):  # pragma: no cover - compiled
    # W[:, p c:(p + 1) c] = parts[p] for the parts p0..p1 - 1
    c = parts.shape[2]
    for p in range(p0, p1):
        for i in range(W.shape[0]):
            for j in range(c):
                W[i, p * c + j] = parts[p, i, j]


def _descend(w, g, lr):  # pragma: no cover - compiled
    # w -= lr * g, in place ("W -= lr * G" would allocate lr * G first)
    w, g = w.reshape(-1), g.reshape(-1)
    for i in range(w.size):
        w[i] -= lr * g[i]


def _forward(Xb, W1p, b1p, W2p, act, fast_exp, A, Zp):  # pragma: no cover - compiled
    # A <- act(Xb W1p + b1p), Zp <- A W2p: one part of the columns' share of the output's input
    np.dot(Xb, W1p, A)
    _activate(A, b1p, act, fast_exp)
    np.dot(A, W2p, Zp)


def _backward(Xb, A, Z, W2p, act, gW1p, gb1p, gW2p):  # pragma: no cover - compiled
    # One part of the columns' gradients, added to g*: Z is dL/d(output's input), A the part's activations
    rows, c = A.shape
    one, zero = A.dtype.type(1), A.dtype.type(0)
    D = np.dot(Z, W2p.T)
    for i in range(rows):
        for j in range(c):
            a = A[i, j]
            with each_activation(act):
                D[i, j] *= DERIVATIVE(a, one, zero)
    gW2p += np.dot(A.T, Z)
    gW1p += np.dot(Xb.T, D)
    _add_column_sums(D, gb1p)


def _lane_grads(lane, lanes, W1P, b1, W2, b2, X, T, R, l1, l2, act, task, fast_exp, block, gW1P, gb1, gW2, gb2,
                A, Zx, Px, flags, meet):  # pragma: no cover - compiled
    # The batch X's mean (weighted) loss plus the penalty, the rows classified right, and (added to
    # g*) the gradients of this lane's parts of the hidden layer's columns: all P parts with one
    # lane, part `lane` of two with two. Rows in blocks, so a large batch's activations stay in the
    # core's cache. Per block each part's share of the output's input goes to Zx; the lanes meet
    # (their `meet`-th time) and each adds the shares up, in part order: the same arithmetic with
    # one lane or two. Returns (total, correct, meetings so far), meetings -1 where the other lane failed.
    n, P = X.shape[0], W1P.shape[0]
    c, o = W1P.shape[2], b2.shape[0]
    p0, p1 = (0, P) if lanes == 1 else (lane, lane + 1)
    penalised = l1 != 0 or l2 != 0
    total, pens = 0.0, 0.0
    correct = 0
    Z = np.empty((min(block, n), o), W1P.dtype)
    for r0 in range(0, n, block):
        Xb = X[r0:r0 + block]
        rows = Xb.shape[0]
        s = meet % 2  # (two slots: a lane writes a slot again only after the other has read it)
        for p in range(p0, p1):
            _forward(Xb, W1P[p], b1[p * c:(p + 1) * c], W2[p * c:(p + 1) * c], act, fast_exp, A[p, :rows],
                     Zx[s, p, :rows])
            if penalised and r0 == 0:
                Px[s, p] = _part_penalty(W1P, W2, p, l1, l2)
        meet += 1
        if lanes == 2 and not barrier(flags, lane, meet):
            return 0.0, 0, -1
        _add_shares(Zx[s], P, b2, Z[:rows])
        if penalised and r0 == 0:
            pens = _in_part_order(Px[s], P)
        part, right = _loss_delta(Z[:rows], T[r0:r0 + rows], R[r0:r0 + rows], task, n)
        total += part
        correct += right
        for p in range(p0, p1):
            _backward(Xb, A[p, :rows], Z[:rows], W2[p * c:(p + 1) * c], act, gW1P[p], gb1[p * c:(p + 1) * c],
                      gW2[p * c:(p + 1) * c])
        _add_column_sums(Z[:rows], gb2)
    if penalised and n == 0:  # (no block, no meeting: one lane has every part)
        for p in range(P):
            Px[0, p] = _part_penalty(W1P, W2, p, l1, l2)
        pens = _in_part_order(Px[0], P)
    return total + pens, correct, meet


def _part_penalty(W1P, W2, p, l1, l2):  # pragma: no cover - compiled
    # the penalty of part p's weights (its columns of W1, its rows of W2)
    c = W1P.shape[2]
    return _penalty(W1P[p], l1, l2) + _penalty(W2[p * c:(p + 1) * c], l1, l2)


def _in_part_order(values, P):  # pragma: no cover - compiled
    # the parts' values added in part order (one lane or two: the same sum)
    return values[0] + values[1] if P == 2 else values[0]


def _add_shares(shares, P, b2, Z):  # pragma: no cover - compiled
    # Z <- the parts' shares added in part order, plus b2 (one lane or two: the same sums)
    rows, o = Z.shape
    for i in range(rows):
        for m in range(o):
            z = shares[0, i, m]
            if P == 2:
                z += shares[1, i, m]
            Z[i, m] = z + b2[m]


def _grads(W1, b1, W2, b2, X, T, R, l1, l2, act, task, fast_exp, block):  # pragma: no cover - compiled
    # The mean (weighted) loss plus the penalty, its gradients, and the rows classified right: one
    # lane's work on every part (what two lanes compute, bitwise).
    P = _part_count(W1.shape[1])
    W1P = _split(W1, P)
    gW1P, gb1, gW2, gb2 = np.zeros_like(W1P), np.zeros_like(b1), np.zeros_like(W2), np.zeros_like(b2)
    rows, c, o = min(block, X.shape[0]), W1P.shape[2], b2.shape[0]
    A, Zx, Px = np.empty((P, rows, c), W1.dtype), np.empty((2, P, rows, o), W1.dtype), np.zeros((2, P))
    total, correct, _ = _lane_grads(0, 1, W1P, b1, W2, b2, X, T, R, l1, l2, act, task, fast_exp, block, gW1P, gb1,
                                    gW2, gb2, A, Zx, Px, np.zeros(1, np.int64), 0)
    if l1 != 0 or l2 != 0:
        for p in range(P):
            _add_penalty_grad(W1P[p], gW1P[p], l1, l2)
        _add_penalty_grad(W2, gW2, l1, l2)
    gW1 = np.empty_like(W1)
    _join(gW1P, gW1, 0, P)
    return total, correct, gW1, gb1, gW2, gb2


def _sgd(W1, b1, W2, b2, X, T, R, lr, l1, l2, act, task, fast_exp, block):  # pragma: no cover - compiled
    total, correct, gW1, gb1, gW2, gb2 = _grads(W1, b1, W2, b2, X, T, R, l1, l2, act, task, fast_exp, block)
    if np.isfinite(total):  # (diverged: the caller reports it, the weights stay as they were)
        _descend(W1, gW1, lr)
        _descend(b1, gb1, lr)
        _descend(W2, gW2, lr)
        _descend(b2, gb2, lr)
    return total, correct


def _scale_rows(X, a, mean, factor, out):  # pragma: no cover - compiled
    # out <- (X[a:a + len(out)] - mean) * factor: numpy's standardize, bitwise (no fastmath here)
    rows, d = out.shape
    for i in range(rows):
        for j in range(d):
            out[i, j] = (X[a + i, j] - mean[j]) * factor[j]


def _batches(lane, lanes, W1, b1, W2, b2, X, T, R, scaled, mean, factor, S, l1, l2, act, task, fast_exp, block, bs,
             adam, mW1, mb1, mW2, mb2, vW1, vb1, vW2, vb2, out, Zx, Px, flags):  # pragma: no cover - compiled
    # Consecutive batches of bs rows of X, each scaled where `scaled`, then stepped: plain SGD (S[k, 0]
    # its rate) or Adam (S[k] its scalars, as adam_update takes them). out[k] <- (batch k's loss, its rows right).
    # Stops at a batch whose loss is not finite, leaving the weights as they were before it; returns
    # the batches stepped (-1 where the other lane failed). One call with the GIL released: the
    # service's reader runs meanwhile. With two lanes, lane `lane` of them: its part of the hidden
    # layer's columns (W1's columns, b1's and W2's rows, their moments), each lane keeping b2 (and
    # its moments) as the other does; lane 0 writes out and b2. Zx and Px are the slots both lanes
    # share (as _exchange makes them). W1 (and its moments) are written back at the end: a call that
    # fails part of the way leaves them as they were, b1's and W2's steps made.
    d, h = W1.shape
    if X.shape[0] < bs:  # (no batch: nothing to step, and no meeting to order the lanes' copies by)
        return 0
    P = _part_count(h)
    c = h // P
    p0, p1 = (0, P) if lanes == 1 else (lane, lane + 1)
    W1P = _split(W1, P)  # (W1's columns as contiguous parts: each part's products take them whole)
    mW1P, vW1P = (_split(mW1, P), _split(vW1, P)) if adam else (W1P[:, :0].copy(), W1P[:, :0].copy())
    b2l, mb2l, vb2l = b2.copy(), mb2.copy(), vb2.copy()
    gW1P, gb1, gW2, gb2 = np.zeros_like(W1P), np.zeros_like(b1), np.zeros_like(W2), np.zeros_like(b2)
    A = np.empty((P, min(block, bs), c), W1.dtype)
    buf = np.empty((bs if scaled else 0, d), X.dtype)
    done, meet = X.shape[0] // bs, 0
    for k in range(done):
        a = k * bs
        if scaled:
            _scale_rows(X, a, mean, factor, buf)
            Xk = buf
        else:
            Xk = X[a:a + bs]
        gW1P[p0:p1] = 0
        gb1[p0 * c:p1 * c] = 0
        gW2[p0 * c:p1 * c] = 0
        gb2[:] = 0
        total, correct, meet = _lane_grads(lane, lanes, W1P, b1, W2, b2l, Xk, T[a:a + bs], R[a:a + bs], l1, l2, act,
                                           task, fast_exp, block, gW1P, gb1, gW2, gb2, A, Zx, Px, flags, meet)
        if meet < 0:
            return -1
        if lane == 0:
            out[k, 0], out[k, 1] = total, correct
        if not np.isfinite(total):
            done = k
            break
        for p in range(p0, p1):
            W1p, gW1p, b1p, gb1p = W1P[p], gW1P[p], b1[p * c:(p + 1) * c], gb1[p * c:(p + 1) * c]
            W2p, gW2p = W2[p * c:(p + 1) * c], gW2[p * c:(p + 1) * c]
            if l1 != 0 or l2 != 0:
                _add_penalty_grad(W1p, gW1p, l1, l2)
                _add_penalty_grad(W2p, gW2p, l1, l2)
            if adam:
                _adam_one(W1p, gW1p, mW1P[p], vW1P[p], S[k])
                _adam_one(b1p, gb1p, mb1[p * c:(p + 1) * c], vb1[p * c:(p + 1) * c], S[k])
                _adam_one(W2p, gW2p, mW2[p * c:(p + 1) * c], vW2[p * c:(p + 1) * c], S[k])
            else:
                _descend(W1p, gW1p, S[k, 0])
                _descend(b1p, gb1p, S[k, 0])
                _descend(W2p, gW2p, S[k, 0])
        if adam:
            _adam_one(b2l, gb2, mb2l, vb2l, S[k])
        else:
            _descend(b2l, gb2, S[k, 0])
    _join(W1P, W1, p0, p1)
    if adam:
        _join(mW1P, mW1, p0, p1)
        _join(vW1P, vW1, p0, p1)
    if lane == 0:
        b2[:] = b2l
        mb2[:] = mb2l
        vb2[:] = vb2l
    return done


# The step's functions as written, compiled (with the shared exponential) from the module
# kernels.build writes for the activations table.
_FUNCTIONS = (_activate, _loss_delta, _penalty, _add_column_sums, _add_penalty_grad, _part_count, _split, _join,
              _descend, _forward, _backward, _lane_grads, _part_penalty, _in_part_order, _add_shares, _grads,
              _sgd, _batches)
# (the tasks' row functions with _loss_delta's flags, as they were when written inside it)
_generated = kernels.Generated("minibatch", ACTIVATIONS, _parts, TASKS,
                               dict(cache=True, nogil=True, error_model="numpy"))


def _weights(weights, n: int, dtype) -> np.ndarray:
    """Per-row loss weights as the compiled code takes them (all ones where none are given)."""
    if weights is None:
        return np.ones(n, dtype)
    return np.ascontiguousarray(weights, dtype=dtype).reshape(n)


def _args(act, params, X, T, weights, l1, l2, task):
    t = X.dtype.type
    return (params["W1"], params["b1"], params["W2"], params["b2"], np.ascontiguousarray(X), targets_2d(T, X.dtype),
            _weights(weights, len(X), X.dtype), t(l1), t(l2), act, task_id(task), X.dtype == np.float32, BLOCK_ROWS)


def sgd_step(params: dict[str, np.ndarray], X: np.ndarray, T: np.ndarray, lr: float, l1: float, l2: float,
             activation: str, task: str, weights: np.ndarray | None = None) -> tuple[float, int]:
    """One SGD step on the batch ``X`` (rows, features): ``(mean loss plus the penalty, rows the
    network classified right before the step)``.

    ``T`` holds class indices (binary, multiclass) or targets (regression); ``weights`` (rows,),
    if given, weigh each row's loss (the mean is still over the rows). ``params`` is updated in
    place, unless the loss is not finite (the caller reports the divergence).
    """
    compiled, act = _generated.get(activation)
    W1, b1, W2, b2, X, T, R, l1, l2, *rest = _args(act, params, X, T, weights, l1, l2, task)
    total, correct = compiled._sgd(W1, b1, W2, b2, X, T, R, X.dtype.type(lr), l1, l2, *rest)
    return float(total), int(correct)


def loss_and_grads(params: dict[str, np.ndarray], X: np.ndarray, T: np.ndarray, l1: float, l2: float,
                   activation: str, task: str, weights: np.ndarray | None = None
                   ) -> tuple[float, int, dict[str, np.ndarray]]:
    """The batch's mean loss plus the penalty, the rows classified right, and the gradients of that
    loss (as ``TwoLayerNet.loss_and_grads`` returns them), for optimisers other than plain SGD."""
    compiled, act = _generated.get(activation)
    total, correct, *grads = compiled._grads(*_args(act, params, X, T, weights, l1, l2, task))
    return float(total), int(correct), dict(zip(("W1", "b1", "W2", "b2"), grads))


def step_batches(params: dict[str, np.ndarray], X: np.ndarray, T: np.ndarray, batch_size: int, scalars: np.ndarray,
                 l1: float, l2: float, activation: str, task: str, weights: np.ndarray | None = None,
                 scale: tuple[np.ndarray, np.ndarray] | None = None, adam: tuple[dict, dict] | None = None,
                 lanes: int = 1) -> tuple[int, np.ndarray]:
    """Consecutive batches of ``batch_size`` rows of ``X`` (rows, features; a whole number of
    them), each one stepped in turn, in one compiled call: what ``sgd_step`` (or ``loss_and_grads``
    then ``optim_compiled.adam_update``) makes of each batch, bitwise.

    ``scale=(mean, factor)`` makes each batch ``(X - mean) * factor`` first (``Scaler``'s standard
    scaling, bitwise). ``scalars`` (batches, 7): per batch, plain SGD's learning rate in column 0,
    or with ``adam=(m, v)`` (the moments, created) the scalars ``adam_update`` takes, in its order.
    Returns the batches stepped (they stop before the first whose loss is not finite: the weights
    are left as they were before it) and each batch's (mean loss plus the penalty, rows right),
    shape (batches, 2); rows past the batches stepped hold the failed batch's, or nothing.

    ``lanes=2`` works each batch on two threads (this one and a lasting helper), each on half of
    the hidden layer's columns, where the layer is split in two (``split(hidden)``); the results
    are those of one lane, bitwise. Both threads spin while they wait for each other: give two
    lanes only where two cores are free for them.
    """
    compiled, act = _generated.get(activation)
    dt = X.dtype.type
    X = np.ascontiguousarray(X)
    if scale is None:
        mean, factor = np.zeros(X.shape[1], X.dtype), np.ones(X.shape[1], X.dtype)
    else:
        mean, factor = (np.ascontiguousarray(a, dtype=X.dtype).reshape(X.shape[1]) for a in scale)
    m, v = adam if adam is not None else ({}, {})
    moments = [a.get(k, params[k][:0]) for a in (m, v) for k in ("W1", "b1", "W2", "b2")]
    out = np.zeros((len(X) // batch_size, 2))
    W1, W2 = params["W1"], params["W2"]
    two = lanes == 2 and split(W1.shape[1]) and _lanes.available()
    meet = _lanes.flags()
    rest = (W1, params["b1"], W2, params["b2"], X, targets_2d(T, X.dtype), _weights(weights, len(X), X.dtype),
            scale is not None, mean, factor, np.ascontiguousarray(scalars, dtype=X.dtype), dt(l1), dt(l2), act,
            task_id(task), X.dtype == np.float32, BLOCK_ROWS, int(batch_size), adam is not None, *moments, out,
            *_exchange(W1.shape[1], min(BLOCK_ROWS, batch_size), W2.shape[1], X.dtype), meet)
    if not two:
        return int(compiled._batches(0, 1, *rest)), out
    done, other = _lanes.run(compiled._batches, lambda lane: (0, 1, *rest) if lane is None else (lane, 2, *rest), meet)
    if done != other:  # (each lane sees the same losses, so they stop together: this is a fault)
        raise RuntimeError(f"the step's two lanes stopped apart (after {done} and {other} batches)")
    return int(done), out


def _exchange(hidden: int, rows: int, outputs: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The slots two lanes meet in: the parts' shares of the output's input and their penalties."""
    P = _part_count(hidden)
    return np.empty((2, P, rows, outputs), dtype), np.zeros((2, P))


def split(hidden: int) -> bool:
    """Whether the step works a hidden layer of ``hidden`` units as two halves of its columns
    (even, at least 16 wide), which two lanes can share."""
    return _part_count(hidden) == 2  # (the compiled step's own rule)
