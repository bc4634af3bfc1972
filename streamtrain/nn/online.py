"""The compiled per-sample loop for batch_size=1 (pure online learning) with plain SGD (and over
inputs that are codes, with lazy Adam).

One numpy step costs tens of microseconds of call overhead, which caps online
learning near 18k samples/s; this loop runs a whole block of single-sample
updates in compiled code. It computes exactly what ``TwoLayerNet.loss_and_grads``
followed by ``SGD.step`` computes for one row, up to float rounding; in float32
the sigmoid (and tanh through it) takes the minibatch step's polynomial
exponential, which vectorises over the hidden units. The loop is written with its
activation open and compiled from the module ``kernels.build`` writes, one branch
per entry of ``functions.ACTIVATIONS``.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .functions import ACTIVATIONS, TASKS
from .kernels import (ACTIVATE, DERIVATIVE, SIGMOID, TANH, TASK_ROW, available, each_activation, each_task, targets_2d,
                      task_id)

try:  # (an intrinsic's callers: the generated module imports them)
    from .sparse_compiled import _finite, _prefetch_row
except ImportError:  # no numba: nothing here is compiled
    _finite = _prefetch_row = None

__all__ = ["adam_online_codes", "available", "sgd_online", "sgd_online_codes", "sgd_online_codes_decay", "targets_2d"]

_exp_neg_f32 = None  # the shared exponential's name in the generated module, where _sigmoid_f32 calls it


def _parts() -> list:
    # the minibatch step's polynomial exponential (it vectorises; expf does not), without
    # reassociation, which would undo its exact range reduction.
    fast, opts = {"nsz", "arcp", "contract", "afn"}, dict(cache=True, nogil=True, error_model="numpy")
    return [("_exp_neg_f32", kernels.exp_neg_f32, dict(fastmath=fast, **opts)),
            ("_sigmoid_f32", _sigmoid_f32, dict(fastmath=fast | {"reassoc"}, **opts)),
            # (numpy's error model: a diverged row's inf / inf is a NaN that the caller reports, not an exception)
            ("_scratch", _scratch, dict(cache=True, nogil=True)),
            ("_activate", _activate, dict(cache=True, fastmath=True, nogil=True, error_model="numpy")),
            ("_score_and_back", _score_and_back, dict(cache=True, fastmath=True, nogil=True, error_model="numpy")),
            ("_loop", _loop, dict(cache=True, fastmath=True, nogil=True)),
            ("_hidden_of_codes", _hidden_of_codes, dict(cache=True, fastmath=True, nogil=True)),
            ("_loop_codes", _loop_codes, dict(cache=True, fastmath=True, nogil=True, error_model="numpy")),
            ("_row_squares", _row_squares, dict(cache=True, nogil=True)),
            ("_loop_codes_decay", _loop_codes_decay, dict(cache=True, fastmath=True, nogil=True,
                                                          error_model="numpy")),
            # (Adam's arithmetic without fastmath: optim_compiled's and sparse_compiled's, operation for operation)
            ("_adam_at", _adam_at, dict(cache=True, nogil=True, error_model="numpy")),
            ("_loop_codes_adam", _loop_codes_adam, dict(cache=True, fastmath=True, nogil=True, error_model="numpy"))]


# The compiled loop. numba is imported (by the generated module) on first use: it costs 0.1 s of
# start-up to every process that never needs it.
_generated = kernels.Generated("online", ACTIVATIONS, _parts, TASKS, dict(cache=True, fastmath=True, nogil=True))


def _sigmoid_f32(a, E, tanh):  # pragma: no cover - compiled
    # a <- sigmoid(a), or tanh(a) = 2 sigmoid(2a) - 1; E: scratch for the exponential's 2^n
    one, two = np.float32(1.0), np.float32(2.0)
    if tanh:
        for j in range(a.size):
            a[j] *= two
    _exp_neg_f32(a, E)
    F = E.view(np.float32)
    for j in range(a.size):
        a[j] = one / (one + a[j] * F[j])
    if tanh:
        for j in range(a.size):
            a[j] = two * a[j] - one


def _scratch(W1, W2, act):  # pragma: no cover - compiled
    # A row's hidden activations, their gradient, the output and the exponential's scratch; whether
    # the activation is the sigmoid or tanh (flags set once, so the vectorised sigmoid has one call site)
    h, o = W1.shape[1], W2.shape[1]
    sigmoid = tanh = False
    with each_activation(act):
        sigmoid, tanh = SIGMOID, TANH
    return np.empty(h, W1.dtype), np.empty(h, W1.dtype), np.empty(o, W1.dtype), np.empty(h, np.int32), sigmoid, tanh


def _activate(a, E, act, fast, tanh):  # pragma: no cover - compiled
    # a <- the activation of a, in place; fast: float32's sigmoid (tanh(s) = 2 sigmoid(2s) - 1) through
    # the minibatch step's vectorised exponential (E: its scratch)
    one, zero = 1.0, 0.0  # the activations' constants: float64, as the loops' sums
    if fast:
        _sigmoid_f32(a, E, tanh)
    else:
        for j in range(a.size):
            s = a[j]
            with each_activation(act):
                a[j] = ACTIVATE(s, one, zero)


def _score_and_back(a, z, da, W2, b2, t, w, act, task):  # pragma: no cover - compiled
    # From the hidden activations a: z <- the output's logits, then (the task's row function) the
    # row's weighted dL/dz; da <- dL/d(the hidden layer's input), through W2 before it changes.
    # Returns the row's (loss, right).
    one, zero = 1.0, 0.0
    h, o = W2.shape
    for m in range(o):
        z[m] = b2[m]
    for j in range(h):
        for m in range(o):
            z[m] += a[j] * W2[j, m]
    loss, right = 0.0, 0
    with each_task(task):
        loss, right = TASK_ROW(z, t, w, one)
    for j in range(h):
        s = 0.0
        for m in range(o):
            s += z[m] * W2[j, m]
        aj = a[j]
        with each_activation(act):
            da[j] = s * DERIVATIVE(aj, one, zero)
    return loss, right


def _loop(W1, b1, W2, b2, X, T, R, LR, l1, l2, act, task, fast_exp):  # pragma: no cover - compiled
    # R: each row's loss weight; LR: the learning rate of each row's step (a schedule's values)
    n, d = X.shape
    h, o = W1.shape[1], W2.shape[1]
    a, da, z, E, sigmoid, tanh = _scratch(W1, W2, act)
    loss_sum = 0.0
    correct = 0
    for i in range(n):
        x = X[i]
        w_i, lr = R[i], LR[i]
        # forward: hidden layer
        for j in range(h):
            a[j] = b1[j]
        for k in range(d):
            xk = x[k]
            for j in range(h):
                a[j] += xk * W1[k, j]
        _activate(a, E, act, fast_exp and sigmoid, tanh)
        # the prediction is scored before the row's update (test, then train)
        loss, right = _score_and_back(a, z, da, W2, b2, T[i], w_i, act, task)
        loss_sum += loss
        correct += right
        # the penalty of the weights this sample's loss was computed with
        if l1 != 0.0 or l2 != 0.0:
            pen = 0.0
            for k in range(d):
                for j in range(h):
                    w = W1[k, j]
                    pen += 0.5 * l2 * w * w + l1 * abs(w)
            for j in range(h):
                for m in range(o):
                    w = W2[j, m]
                    pen += 0.5 * l2 * w * w + l1 * abs(w)
            loss_sum += pen
        # SGD updates, regularisation from the current weights. Without L1 the term is l1 itself (a zero
        # of the network's type): a float64 0.0 made these loops float64 and unvectorised (-25% rows/s).
        for j in range(h):
            for m in range(o):
                w = W2[j, m]
                g = a[j] * z[m] + l2 * w + (l1 * np.sign(w) if l1 != 0.0 else l1)
                W2[j, m] = w - lr * g
        for m in range(o):
            b2[m] -= lr * z[m]
        for k in range(d):
            xk = x[k]
            for j in range(h):
                w = W1[k, j]
                g = xk * da[j] + l2 * w + (l1 * np.sign(w) if l1 != 0.0 else l1)
                W1[k, j] = w - lr * g
        for j in range(h):
            b1[j] -= lr * da[j]
    return loss_sum, correct


def _hidden_of_codes(a, b1, W1, XD, DR, P, i):  # pragma: no cover - compiled
    # a <- sample i's hidden layer before its activation: b1, the plain inputs XD[i] times their
    # rows DR of W1, and the rows its codes P[i] select
    h = a.size
    for j in range(h):
        a[j] = b1[j]
    for k in range(XD.shape[1]):
        xk = XD[i, k]
        r = DR[k]
        for j in range(h):
            a[j] += xk * W1[r, j]
    for q in range(P.shape[1]):
        r = P[i, q]
        for j in range(h):
            a[j] += W1[r, j]


def _loop_codes(W1, b1, W2, b2, XD, DR, P, T, R, LR, act, task, fast_exp):  # pragma: no cover - compiled
    # The loop above for inputs that are codes (``network.InputLayout``), without a penalty: XD
    # (rows, plain inputs) multiply W1's rows DR; P (rows, code columns) holds the W1 row each code
    # selects, added to the hidden layer and updated alone (the rows no code selects have no gradient).
    n, d = XD.shape
    c = P.shape[1]
    h, o = W1.shape[1], W2.shape[1]
    a, da, z, E, sigmoid, tanh = _scratch(W1, W2, act)
    loss_sum = 0.0
    correct = 0
    for i in range(n):
        w_i, lr = R[i], LR[i]
        if i + 1 < n:  # the next sample's rows asked for while this one works: each is a wait for memory
            for q in range(c):
                _prefetch_row(W1, P[i + 1, q], True)
        _hidden_of_codes(a, b1, W1, XD, DR, P, i)
        _activate(a, E, act, fast_exp and sigmoid, tanh)
        loss, right = _score_and_back(a, z, da, W2, b2, T[i], w_i, act, task)
        loss_sum += loss
        correct += right
        for j in range(h):
            for m in range(o):
                W2[j, m] -= lr * (a[j] * z[m])
        for m in range(o):
            b2[m] -= lr * z[m]
        for k in range(d):
            xk = XD[i, k]
            r = DR[k]
            for j in range(h):
                W1[r, j] -= lr * (xk * da[j])
        for q in range(c):  # a row two columns select (one shared table) takes both steps
            r = P[i, q]
            for j in range(h):
                W1[r, j] -= lr * da[j]
        for j in range(h):
            b1[j] -= lr * da[j]
    return loss_sum, correct


def _row_squares(W1, r):  # pragma: no cover - compiled
    q = 0.0
    for j in range(W1.shape[1]):
        w = np.float64(W1[r, j])
        q += w * w
    return q


def _loop_codes_decay(W1, b1, W2, b2, XD, DR, P, T, R, LR, act, task, fast_exp, ST, SC, l2,
                      floor):  # pragma: no cover - compiled
    # ``_loop_codes`` with plain SGD's L2 penalty, its decay of the rows a sample does not select
    # lazy (``decay.LazyDecay``): ST holds each row's stamp, SC (scale, the table's squares over
    # the scale's square): a row is caught up (times scale / stamp) before the sample reads it,
    # penalised once in its step, then stamped with the new scale. The loss adds the penalty of
    # the weights it was computed with. Returns after the sample whose scale falls below
    # ``floor`` (the caller brings the table up to date, then goes on): (loss, right, samples done).
    # (The forward pass is ``_loop_codes``' own, written out: a helper both called ran 8% slower.)
    n, d = XD.shape
    c = P.shape[1]
    h, o = W1.shape[1], W2.shape[1]
    a, da, z, E, sigmoid, tanh = _scratch(W1, W2, act)
    ST2 = ST.reshape((ST.shape[0], 1))  # (rows of one stamp, as _prefetch_row takes them)
    loss_sum = 0.0
    correct = 0
    for i in range(n):
        w_i, lr = R[i], LR[i]
        if i + 1 < n:  # (as _loop_codes: the next sample's rows, and their stamps)
            for q in range(c):
                _prefetch_row(W1, P[i + 1, q], True)
                _prefetch_row(ST2, P[i + 1, q], True)
        scale, sq = SC[0], SC[1]
        w2sq = 0.0
        for j in range(h):
            for m in range(o):
                w2 = np.float64(W2[j, m])
                w2sq += w2 * w2
        pen = 0.5 * np.float64(l2) * (scale * scale * sq + w2sq)
        for q in range(d + c):  # catch up each row the sample selects; its squares leave the sum (-1: once)
            r = DR[q] if q < d else P[i, q - d]
            s = ST[r]
            if s > 0.0:
                if s != scale:
                    f = scale / s
                    for j in range(h):
                        W1[r, j] = W1[r, j] * f
                sq -= _row_squares(W1, r) / (scale * scale)
                ST[r] = -1.0
        _hidden_of_codes(a, b1, W1, XD, DR, P, i)
        _activate(a, E, act, fast_exp and sigmoid, tanh)
        loss, right = _score_and_back(a, z, da, W2, b2, T[i], w_i, act, task)
        loss_sum += loss + pen
        correct += right
        for j in range(h):
            for m in range(o):
                w = W2[j, m]
                W2[j, m] = w - lr * (a[j] * z[m] + l2 * w)
        for m in range(o):
            b2[m] -= lr * z[m]
        for k in range(d):  # each row's penalty once (-2: taken): a row two columns select takes both steps
            xk = XD[i, k]
            r = DR[k]
            if ST[r] == -1.0:
                ST[r] = -2.0
                for j in range(h):
                    w = W1[r, j]
                    W1[r, j] = w - lr * (xk * da[j] + l2 * w)
            else:
                for j in range(h):
                    W1[r, j] -= lr * (xk * da[j])
        for q in range(c):
            r = P[i, q]
            if ST[r] == -1.0:
                ST[r] = -2.0
                for j in range(h):
                    w = W1[r, j]
                    W1[r, j] = w - lr * (da[j] + l2 * w)
            else:
                for j in range(h):
                    W1[r, j] -= lr * da[j]
        for j in range(h):
            b1[j] -= lr * da[j]
        new = scale * (1.0 - np.float64(lr) * np.float64(l2))
        for q in range(d + c):  # the rows' squares back in the sum, in the new scale's units
            r = DR[q] if q < d else P[i, q - d]
            if ST[r] < 0.0:
                sq += _row_squares(W1, r) / (new * new)
                ST[r] = new
        SC[0], SC[1] = new, sq
        if new < floor:
            return loss_sum, correct, i + 1
    return loss_sum, correct, n


def _adam_at(p, m, v, g, H, step, c2):  # pragma: no cover - compiled
    # Adam's step of the weights p (1-d), their moments m and v, from their gradient g, in place.
    # H: beta1, 1 - beta1, beta2, 1 - beta2, eps; step: the rate over the first moment's correction.
    # (Element by element, optim_compiled's and sparse_compiled's arithmetic; it vectorises.)
    b1, one_b1, b2, one_b2, eps = H[0], H[1], H[2], H[3], H[4]
    for j in range(p.size):
        gj = g[j]
        mj = m[j] * b1 + one_b1 * gj
        m[j] = mj
        vj = v[j] * b2 + one_b2 * gj * gj
        v[j] = vj
        p[j] -= step * mj / (np.sqrt(vj / c2) + eps)


def _loop_codes_adam(W1, b1, W2, b2, XD, DR, P, T, R, S, H, act, task, fast_exp, shared, mW1, mb1, mW2, mb2, vW1, vb1,
                     vW2, vb2):  # pragma: no cover - compiled
    # ``_loop_codes`` with lazy Adam (``Adam.step`` of a ``RowGrad``): a sample's step moves the rows
    # of W1 it selects (its plain inputs' rows, and each row its codes select once, with their summed
    # gradient) and every other parameter, each with its moments (m*, v*). S (rows, 2): each step's
    # rate over the first moment's bias correction, and the second's; shared: whether two code columns
    # may select one row (their ranges of rows overlap). A sample whose loss is not
    # finite ends the loop before its step (the parameters are the last good ones, as a batch of
    # one row leaves them): (summed loss, rows right, samples stepped).
    n, d = XD.shape
    c = P.shape[1]
    h, o = W1.shape[1], W2.shape[1]
    a, da, z, E, sigmoid, tanh = _scratch(W1, W2, act)
    g = np.empty(max(h * o, h), W1.dtype)
    W2f, mW2f, vW2f = W2.reshape(-1), mW2.reshape(-1), vW2.reshape(-1)
    loss_sum = 0.0
    correct = 0
    for i in range(n):
        if i + 1 < n:  # the next sample's rows (and their moments) asked for while this one works
            for q in range(c):
                r = P[i + 1, q]
                _prefetch_row(W1, r, True)
                _prefetch_row(mW1, r, True)
                _prefetch_row(vW1, r, True)
        _hidden_of_codes(a, b1, W1, XD, DR, P, i)
        _activate(a, E, act, fast_exp and sigmoid, tanh)
        loss, right = _score_and_back(a, z, da, W2, b2, T[i], R[i], act, task)
        loss_sum += loss
        if not _finite(loss):  # (np.isfinite is folded away under fastmath)
            return loss_sum, correct, i
        correct += right
        step, c2 = S[i, 0], S[i, 1]
        for j in range(h):
            for m in range(o):
                g[j * o + m] = a[j] * z[m]
        _adam_at(W2f, mW2f, vW2f, g, H, step, c2)
        _adam_at(b2, mb2, vb2, z, H, step, c2)
        for k in range(d):
            xk = XD[i, k]
            for j in range(h):
                g[j] = xk * da[j]
            r = DR[k]
            _adam_at(W1[r], mW1[r], vW1[r], g, H, step, c2)
        for q in range(c):
            r = P[i, q]
            first, times = True, 1
            for p in range(c if shared else 0):  # a row two codes select (a shared table): once, both gradients
                if P[i, p] == r and p != q:
                    if p < q:
                        first = False
                        break
                    times += 1
            if not first:
                continue
            if times == 1:
                _adam_at(W1[r], mW1[r], vW1[r], da, H, step, c2)
                continue
            for j in range(h):
                g[j] = da[j]
            for _ in range(times - 1):
                for j in range(h):
                    g[j] += da[j]
            _adam_at(W1[r], mW1[r], vW1[r], g, H, step, c2)
        _adam_at(b1, mb1, vb1, da, H, step, c2)
    return loss_sum, correct, n


def sgd_online_codes(params: dict[str, np.ndarray], layout, X: np.ndarray, T: np.ndarray, lr, activation: str,
                     task: str, weights: np.ndarray | None = None, picked: np.ndarray | None = None
                     ) -> tuple[float, int]:
    """``sgd_online`` for a network whose inputs include codes (``layout``, an
    ``network.InputLayout``), without a penalty: each row's step updates the rows of ``W1`` its
    codes and its plain inputs select, and no other. ``X`` (rows, layout.n_cols); a code outside
    its column is a ValueError before any step (``picked``: ``layout.rows(X)``, where the caller has it)."""
    n = len(X)
    picked = layout.rows(X) if picked is None else picked
    rates = np.full(n, lr, X.dtype) if np.ndim(lr) == 0 else np.ascontiguousarray(lr, dtype=X.dtype)
    R = np.ones(n, X.dtype) if weights is None else np.ascontiguousarray(weights, dtype=X.dtype)
    compiled, act = _generated.get(activation)
    loss_sum, correct = compiled._loop_codes(params["W1"], params["b1"], params["W2"], params["b2"],
                                             np.ascontiguousarray(X[:, layout.dense_cols]), layout.dense_rows,
                                             np.ascontiguousarray(picked), targets_2d(T, X.dtype), R, rates, act,
                                             task_id(task), X.dtype == np.float32)
    return float(loss_sum), int(correct)


def sgd_online_codes_decay(params: dict[str, np.ndarray], layout, X: np.ndarray, T: np.ndarray, lr, activation: str,
                           task: str, weights: np.ndarray | None, picked: np.ndarray, l2: float, stamp: np.ndarray,
                           state: np.ndarray, floor: float) -> tuple[float, int, int]:
    """``sgd_online_codes`` with an L2 penalty whose decay of the rows a sample does not select is
    lazy (``decay.LazyDecay``'s ``stamp``; ``state``: float64 [scale, the table's squares over the
    scale's square], updated in place). Stops after the sample whose scale falls below ``floor``:
    ``(summed loss with the penalty, rows right, samples done)``."""
    n = len(X)
    rates = np.full(n, lr, X.dtype) if np.ndim(lr) == 0 else np.ascontiguousarray(lr, dtype=X.dtype)
    R = np.ones(n, X.dtype) if weights is None else np.ascontiguousarray(weights, dtype=X.dtype)
    compiled, act = _generated.get(activation)
    loss_sum, correct, done = compiled._loop_codes_decay(
        params["W1"], params["b1"], params["W2"], params["b2"], np.ascontiguousarray(X[:, layout.dense_cols]),
        layout.dense_rows, np.ascontiguousarray(picked), targets_2d(T, X.dtype), R, rates, act, task_id(task),
        X.dtype == np.float32, stamp, state, X.dtype.type(l2), float(floor))
    return float(loss_sum), int(correct), int(done)


def adam_online_codes(params: dict[str, np.ndarray], layout, X: np.ndarray, T: np.ndarray, scalars: np.ndarray,
                      m: dict[str, np.ndarray], v: dict[str, np.ndarray], beta1: float, beta2: float, eps: float,
                      activation: str, task: str, weights: np.ndarray | None = None) -> tuple[float, int, int]:
    """One lazy Adam step per row of ``X`` (rows, ``layout.n_cols``), inputs that are codes (``layout``,
    an ``network.InputLayout``), without a penalty: each step moves the rows of ``W1`` its row
    selects and their moments (``m``, ``v``: Adam's, by parameter name), and every other parameter.
    ``scalars`` (rows, 2): each step's learning rate over ``1 - beta1**t``, and ``1 - beta2**t``.
    Stops before the step of a row whose loss is not finite: ``(summed loss, rows right, steps made)``."""
    n = len(X)
    R = np.ones(n, X.dtype) if weights is None else np.ascontiguousarray(weights, dtype=X.dtype)
    H = np.array([beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps], X.dtype)
    compiled, act = _generated.get(activation)
    loss_sum, correct, done = compiled._loop_codes_adam(
        params["W1"], params["b1"], params["W2"], params["b2"], np.ascontiguousarray(X[:, layout.dense_cols]),
        layout.dense_rows, np.ascontiguousarray(layout.rows(X)), targets_2d(T, X.dtype), R,
        np.ascontiguousarray(scalars, X.dtype), H, act, task_id(task), X.dtype == np.float32, _overlap(layout),
        *(m[k] for k in ("W1", "b1", "W2", "b2")), *(v[k] for k in ("W1", "b1", "W2", "b2")))
    return float(loss_sum), int(correct), int(done)


def _overlap(layout) -> bool:
    """Whether two code columns of ``layout`` may select one row of ``W1`` (their rows overlap)."""
    order = np.argsort(layout.offsets, kind="stable")
    starts, ends = layout.offsets[order], (layout.offsets + layout.sizes)[order]
    return bool((starts[1:] < ends[:-1]).any())


def sgd_online(params: dict[str, np.ndarray], X: np.ndarray, T: np.ndarray, lr, l1: float, l2: float,
               activation: str, task: str, weights: np.ndarray | None = None) -> tuple[float, int]:
    """Apply one SGD step per row of ``X`` (rows, features), in order: ``(summed loss, rows
    classified right, each before its own step)``.

    ``T`` holds class indices (binary, multiclass) or targets (regression); ``lr`` is a rate,
    or one per row (a schedule's); ``weights`` (rows,), if given, weigh each row's loss.
    ``params`` is updated in place.
    """
    n, t = len(X), X.dtype.type
    rates = np.full(n, lr, X.dtype) if np.ndim(lr) == 0 else np.ascontiguousarray(lr, dtype=X.dtype)
    R = np.ones(n, X.dtype) if weights is None else np.ascontiguousarray(weights, dtype=X.dtype)
    compiled, act = _generated.get(activation)
    loss_sum, correct = compiled._loop(params["W1"], params["b1"], params["W2"], params["b2"], np.ascontiguousarray(X),
                                       targets_2d(T, X.dtype), R, rates, t(l1), t(l2), act, task_id(task),
                                       X.dtype == np.float32)
    return float(loss_sum), int(correct)
