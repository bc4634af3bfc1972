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
"""

from __future__ import annotations

import importlib.util
import threading

import numpy as np

from . import kernels
from .functions import ACTIVATIONS, TASKS
from .kernels import ACTIVATE, DERIVATIVE, SIGMOID, TANH, TASK_ROW, each_activation, each_task, targets_2d, task_id

__all__ = ["available", "load", "load_in_background", "sgd_step", "loss_and_grads", "step_batches"]

_loaded: set = set()  # (dtype, sgd) entries loaded and run once
_load_lock = threading.RLock()  # load() in a background thread may meet a first call here
_exp_neg_f32 = None  # the shared exponential's name in the generated module, where _activate calls it
_adam_one = None  # optim_compiled's Adam step of one array, in the generated module, where _batches calls it
BLOCK_ROWS = 512  # rows per pass: X, the activations and their gradients, 3 x 128 KB at 64 wide, fit L2


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
            _get("_batches")(*args[:7], v, v + 1, s, *args[7:], 1, not sgd, z, v, z, v, z, v, z, v, np.zeros((1, 2)))
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
    # Not fastmath=True: it assumes no inf/NaN, which would fold away the divergence check; and
    # no reassociation in the exponential, which would undo its exact range reduction.
    # error_model="numpy": no zero-division branch, so the division loops vectorise.
    opts = dict(cache=True, nogil=True, error_model="numpy")
    fast = {"nsz", "arcp", "contract", "afn", "reassoc"}
    from .optim_compiled import _adam_one

    # The scaling and Adam's step as their own compiled forms are (numpy's arithmetic, bitwise), and
    # the batches' loop that calls them without fastmath either: inlined into a fastmath function,
    # Adam's step was contracted and reassociated (seen: its weights differed in the last bits).
    exact = dict(cache=True, nogil=True)
    return [("_exp_neg_f32", kernels.exp_neg_f32, dict(fastmath=fast - {"reassoc"}, **opts)),
            ("_scale_rows", _scale_rows, exact), ("_adam_one", _adam_one.py_func, exact),
            # (by name: once _get has run, the module's names here are bound to the compiled forms)
            *((fn.__name__, fn, exact if fn.__name__ == "_batches" else dict(fastmath=fast, **opts))
              for fn in _FUNCTIONS)]


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
    s = 0.0
    for w in W.reshape(-1):
        s += 0.5 * l2 * w * w + l1 * abs(w)
    return s


def _add_penalty_grad(W, G, l1, l2):  # pragma: no cover - compiled
    # G += l2 W + l1 sign W: the penalty's gradient, from the weights before the step
    w, g = W.reshape(-1), G.reshape(-1)
    if l1 == 0:
        for i in range(w.size):
            g[i] += l2 * w[i]
    else:
        for i in range(w.size):
            g[i] += l2 * w[i] + l1 * np.sign(w[i])


def _grads(W1, b1, W2, b2, X, T, R, l1, l2, act, task, fast_exp, block):  # pragma: no cover - compiled
    # The mean (weighted) loss plus the penalty, its gradients, and the rows classified right. Rows
    # in blocks, so a large batch's activations stay in the core's cache; the gradients add up.
    n = X.shape[0]
    h, o = W2.shape
    gW1, gW2 = np.zeros_like(W1), np.zeros_like(W2)
    gb1, gb2 = np.zeros_like(b1), np.zeros_like(b2)
    one, zero = W1.dtype.type(1), W1.dtype.type(0)
    total = 0.0
    correct = 0
    for r0 in range(0, n, block):
        Xb = X[r0:r0 + block]
        A = np.dot(Xb, W1)
        _activate(A, b1, act, fast_exp)
        Z = np.dot(A, W2)
        rows = Z.shape[0]
        for i in range(rows):
            for m in range(o):
                Z[i, m] += b2[m]
        part, right = _loss_delta(Z, T[r0:r0 + block], R[r0:r0 + block], task, n)
        total += part
        correct += right
        D = np.dot(Z, W2.T)
        for i in range(rows):
            for j in range(h):
                a = A[i, j]
                with each_activation(act):
                    D[i, j] *= DERIVATIVE(a, one, zero)
        gW2 += np.dot(A.T, Z)
        gW1 += np.dot(Xb.T, D)
        for i in range(rows):
            for m in range(o):
                gb2[m] += Z[i, m]
            for j in range(h):
                gb1[j] += D[i, j]
    if l1 != 0 or l2 != 0:
        total += _penalty(W1, l1, l2) + _penalty(W2, l1, l2)
        _add_penalty_grad(W1, gW1, l1, l2)
        _add_penalty_grad(W2, gW2, l1, l2)
    return total, correct, gW1, gb1, gW2, gb2


def _sgd(W1, b1, W2, b2, X, T, R, lr, l1, l2, act, task, fast_exp, block):  # pragma: no cover - compiled
    total, correct, gW1, gb1, gW2, gb2 = _grads(W1, b1, W2, b2, X, T, R, l1, l2, act, task, fast_exp, block)
    if np.isfinite(total):  # (diverged: the caller reports it, the weights stay as they were)
        for W, G in ((W1, gW1), (W2, gW2)):
            w, g = W.reshape(-1), G.reshape(-1)
            for i in range(w.size):  # in place: "W -= lr * G" would allocate lr * G first
                w[i] -= lr * g[i]
        for j in range(b1.size):
            b1[j] -= lr * gb1[j]
        for m in range(b2.size):
            b2[m] -= lr * gb2[m]
    return total, correct


def _scale_rows(X, a, mean, factor, out):  # pragma: no cover - compiled
    # out <- (X[a:a + len(out)] - mean) * factor: numpy's standardize, bitwise (no fastmath here)
    rows, d = out.shape
    for i in range(rows):
        for j in range(d):
            out[i, j] = (X[a + i, j] - mean[j]) * factor[j]


def _batches(W1, b1, W2, b2, X, T, R, mean, factor, S, l1, l2, act, task, fast_exp, block, bs, adam,
             mW1, mb1, mW2, mb2, vW1, vb1, vW2, vb2, out):  # pragma: no cover - compiled
    # Consecutive batches of bs rows of X, each scaled, then stepped: plain SGD (S[k, 0] its rate) or
    # Adam (S[k] its scalars, as adam_update takes them). out[k] <- (batch k's loss, its rows right).
    # Stops at a batch whose loss is not finite, leaving the weights as they were before it; returns
    # the batches stepped. One call with the GIL released: the service's reader runs meanwhile.
    buf = np.empty((bs, X.shape[1]), X.dtype)
    for k in range(X.shape[0] // bs):
        a = k * bs
        _scale_rows(X, a, mean, factor, buf)
        if adam:
            total, correct, gW1, gb1, gW2, gb2 = _grads(W1, b1, W2, b2, buf, T[a:a + bs], R[a:a + bs], l1, l2, act,
                                                        task, fast_exp, block)
            out[k, 0], out[k, 1] = total, correct
            if not np.isfinite(total):
                return k
            _adam_one(W1, gW1, mW1, vW1, S[k])
            _adam_one(b1, gb1, mb1, vb1, S[k])
            _adam_one(W2, gW2, mW2, vW2, S[k])
            _adam_one(b2, gb2, mb2, vb2, S[k])
        else:
            total, correct = _sgd(W1, b1, W2, b2, buf, T[a:a + bs], R[a:a + bs], S[k, 0], l1, l2, act, task, fast_exp,
                                  block)
            out[k, 0], out[k, 1] = total, correct
            if not np.isfinite(total):
                return k
    return X.shape[0] // bs


# The step's functions as written, compiled (with the shared exponential) from the module
# kernels.build writes for the activations table.
_FUNCTIONS = (_activate, _loss_delta, _penalty, _add_penalty_grad, _grads, _sgd, _batches)
# (the tasks' row functions with _loss_delta's flags, as they were when written inside it)
_generated = kernels.Generated("minibatch", ACTIVATIONS, _parts, TASKS,
                               dict(cache=True, nogil=True, error_model="numpy",
                                    fastmath={"nsz", "arcp", "contract", "afn", "reassoc"}))


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
                 scale: tuple[np.ndarray, np.ndarray] | None = None, adam: tuple[dict, dict] | None = None
                 ) -> tuple[int, np.ndarray]:
    """Consecutive batches of ``batch_size`` rows of ``X`` (rows, features; a whole number of
    them), each one stepped in turn, in one compiled call: what ``sgd_step`` (or ``loss_and_grads``
    then ``optim_compiled.adam_update``) makes of each batch, bitwise.

    ``scale=(mean, factor)`` makes each batch ``(X - mean) * factor`` first (``Scaler``'s standard
    scaling, bitwise). ``scalars`` (batches, 7): per batch, plain SGD's learning rate in column 0,
    or with ``adam=(m, v)`` (the moments, created) the scalars ``adam_update`` takes, in its order.
    Returns the batches stepped (they stop before the first whose loss is not finite: the weights
    are left as they were before it) and each batch's (mean loss plus the penalty, rows right),
    shape (batches, 2); rows past the batches stepped hold the failed batch's, or nothing.
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
    done = compiled._batches(params["W1"], params["b1"], params["W2"], params["b2"], X, targets_2d(T, X.dtype),
                             _weights(weights, len(X), X.dtype), mean, factor,
                             np.ascontiguousarray(scalars, dtype=X.dtype), dt(l1), dt(l2), act, task_id(task),
                             X.dtype == np.float32, BLOCK_ROWS, int(batch_size), adam is not None, *moments, out)
    return int(done), out
