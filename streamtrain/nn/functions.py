"""Pure functions of the network, in name -> function tables.

``ACTIVATIONS[name]`` is an ``Activation``: the function and its derivative, which takes the
activation's *output* (cheaper than recomputing from the input), in numpy and as the compiled
code's expressions; an activation is added there alone (the compiled loops are written from the
table, see ``kernels``). ``TASKS[name]`` pairs the output link with its loss:
``loss_delta(z, y) -> (mean loss, dL/dz)`` works from the logits ``z`` so the log loss never
takes the log of a rounded probability.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .._malloc import PagesAhead

__all__ = ["ACTIVATIONS", "TASKS", "INITS", "init_weights", "sigmoid", "softmax", "Activation", "Task", "correct_count"]


def sigmoid(z: np.ndarray) -> np.ndarray:
    # 0.5*(1+tanh(z/2)) equals 1/(1+exp(-z)) but never overflows for large |z|.
    out = np.multiply(z, 0.5)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def _sigmoid_grad(a):
    return a * (1.0 - a)


def _tanh_grad(a):
    return 1.0 - a * a


def _relu(z):
    return np.maximum(z, 0.0)


def _relu_grad(a):
    return (a > 0).astype(a.dtype)


class Activation(NamedTuple):
    """A hidden layer's activation, declared once for every path. ``forward(z)`` and ``grad(a)``
    (its derivative from its output ``a``) are numpy's; ``scalar`` and ``scalar_grad`` are the same
    two as the compiled loops' expressions of one pre-activation ``s`` and one output ``a``: numba
    code naming only ``np``, builtins, and ``one`` and ``zero``, constants each loop gives its
    precision (a bare ``1.0`` is float64 and would make the float32 minibatch step compute in
    float64). ``via_sigmoid``: ``"sigmoid"``, or ``"tanh"`` as ``2 sigmoid(2s) - 1``, where the
    compiled code computes the activation through its vectorised sigmoid instead (the minibatch
    step always, the per-sample loop in float32; in float32 both with the polynomial
    exponential); None: through ``scalar`` everywhere."""

    forward: Callable[[np.ndarray], np.ndarray]
    grad: Callable[[np.ndarray], np.ndarray]
    scalar: str
    scalar_grad: str
    via_sigmoid: str | None = None


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation(sigmoid, _sigmoid_grad,
                          "one / (one + np.exp(-s)) if s >= zero else np.exp(s) / (one + np.exp(s))",
                          "a * (one - a)", via_sigmoid="sigmoid"),
    "tanh": Activation(np.tanh, _tanh_grad, "np.tanh(s)", "one - a * a", via_sigmoid="tanh"),
    "relu": Activation(_relu, _relu_grad, "max(s, zero)", "one if a > zero else zero"),
}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum (log-sum-exp) so exp never overflows."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


# Each task's loss_delta(z, y, w=None) -> (mean loss, dL/dz): ``w`` (rows,) weighs each row's
# loss, the mean staying over the rows (Keras's sample weights); None weighs them all 1.
def _weighted(per_row: np.ndarray, delta: np.ndarray, w) -> tuple[float, np.ndarray]:
    if w is None:
        return float(np.mean(per_row)), delta
    w = np.asarray(w, dtype=delta.dtype)
    return float(np.mean(per_row * w)), delta * w.reshape(-1, *([1] * (delta.ndim - 1)))


def _binary_loss_delta(z, y, w=None):
    # Log loss of sigmoid(z): softplus(z) - y*z, exact for any z (logaddexp is stable).
    z = z[:, 0]
    t = y.astype(z.dtype, copy=False)
    delta = (sigmoid(z) - t) / z.shape[0]
    loss, delta = _weighted(np.logaddexp(0.0, z) - t * z, delta, w)
    return loss, delta[:, None]


def _multiclass_loss_delta(z, y, w=None):
    if y.ndim == 2:  # one-hot
        y = np.argmax(y, axis=1)
    shifted = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    rows = np.arange(z.shape[0])
    delta = softmax(z)
    delta[rows, y] -= 1.0
    delta /= z.shape[0]
    return _weighted(log_norm - shifted[rows, y], delta, w)


def _regression_loss_delta(z, y, w=None):
    t = y.reshape(z.shape).astype(z.dtype, copy=False)
    diff = z - t
    # Half the squared error, as scikit-learn, so the gradient is the plain residual.
    return _weighted(0.5 * np.sum(diff * diff, axis=1), diff / z.shape[0], w)


def correct_count(task: str, z: np.ndarray, y: np.ndarray) -> int:
    """How many rows the logits ``z`` classify right (0 for regression)."""
    if task == "binary":
        return int(np.count_nonzero((z[:, 0] > 0) == (np.asarray(y).reshape(-1) > 0.5)))
    if task == "multiclass":
        t = np.argmax(y, axis=1) if y.ndim == 2 else y
        return int(np.count_nonzero(z.argmax(axis=1) == t))
    return 0


def _identity(z):
    return z


# The tasks' compiled forms, one row at a time: ``row(z, t, w, n) -> (w * loss, right)`` where
# ``z`` are the row's logits, replaced by w * dL/dz / n; ``t`` the row's target (a class index
# or the values); ``w`` its loss weight; ``n`` the rows the loss is averaged over (1 for the
# per-sample loop). numba code naming only ``np`` and builtins; the compiled loops call them
# through ``with each_task(task):`` blocks (see ``kernels``).
def _binary_row(z, t, w, n):  # pragma: no cover - compiled
    zz, tt = z[0], t[0]
    right = 1 if (zz > 0) == (tt > 0.5) else 0
    loss = w * (max(zz, 0.0) + np.log1p(np.exp(-abs(zz))) - tt * zz)  # softplus(z) - t z, stable
    p = 1.0 / (1.0 + np.exp(-zz)) if zz >= 0 else np.exp(zz) / (1.0 + np.exp(zz))
    z[0] = w * (p - tt) / n
    return loss, right


def _multiclass_row(z, t, w, n):  # pragma: no cover - compiled
    o = z.shape[0]
    top, best = z[0], 0
    for m in range(1, o):
        if z[m] > top:
            top, best = z[m], m
    s = 0.0
    for m in range(o):
        s += np.exp(z[m] - top)
    c = int(t[0])
    right = 1 if best == c else 0
    loss = w * (np.log(s) - (z[c] - top))
    for m in range(o):
        z[m] = w * np.exp(z[m] - top) / s / n
    z[c] -= w / n
    return loss, right


def _regression_row(z, t, w, n):  # pragma: no cover - compiled
    sq = 0.0
    for m in range(z.shape[0]):
        r = z[m] - t[m]
        sq += r * r
        z[m] = w * r / n
    return w * 0.5 * sq, 0


class Task(NamedTuple):
    """A task: ``loss_delta(z, y, w=None) -> (mean loss, dL/dz)`` and ``output`` (logits ->
    probabilities or values), numpy's; ``row``, the compiled loops' form of one row (above)."""

    loss_delta: Callable[..., tuple[float, np.ndarray]]
    output: Callable[[np.ndarray], np.ndarray]  # logits -> probabilities / values
    row: Callable | None = None


TASKS: dict[str, Task] = {
    "binary": Task(_binary_loss_delta, sigmoid, _binary_row),
    "multiclass": Task(_multiclass_loss_delta, softmax, _multiclass_row),
    "regression": Task(_regression_loss_delta, _identity, _regression_row),
}


def _init_normal(rng, size, n_in, n_out, activation):
    # The textbook's small random normal weights.
    return rng.normal(0.0, 0.1, size=size)


def _init_glorot(rng, size, n_in, n_out, activation):
    limit = np.sqrt(6.0 / (n_in + n_out))
    if activation == "sigmoid":
        limit *= 4.0  # Glorot & Bengio's factor for the logistic function
    return rng.uniform(-limit, limit, size=size)


def _init_he(rng, size, n_in, n_out, activation):
    return rng.normal(0.0, np.sqrt(2.0 / n_in), size=size)


def init_weights(init: str, rng, n_in: int, n_out: int, activation: str, dtype, fan_in: int | None = None
                 ) -> np.ndarray:
    """An ``(n_in, n_out)`` weight matrix of ``dtype`` drawn by ``INITS[init]``, a block of rows at
    a time: the values of one draw of the whole (a generator's draws follow one another), without
    its float64 temporary (a click log's table: gigabytes). ``fan_in``: the inputs a unit sums
    per sample, where it is not ``n_in`` (rows that codes select: one row per code column)."""
    make = INITS[init]
    fan = n_in if fan_in is None else int(fan_in)
    out = np.empty((n_in, n_out), dtype=dtype)
    step = max(1, (1 << 20) // max(n_out, 1))
    bounds = [(a, min(n_in, a + step)) for a in range(0, n_in, step)]
    # (a table's pages mapped by a thread ahead of the draw: each costs about what its values do)
    ahead = PagesAhead(out, bounds) if out.nbytes >= AHEAD_BYTES else None
    try:
        for k, (a, b) in enumerate(bounds):
            if ahead is not None:
                ahead.claim(k)
            out[a:b] = make(rng, (b - a, n_out), fan, n_out, activation)
    finally:
        if ahead is not None:
            ahead.close()
    return out


#: A weight matrix's size from which ``init_weights`` maps its pages in a thread ahead of the draw.
AHEAD_BYTES = 64 << 20


INITS: dict[str, Callable] = {"normal": _init_normal, "glorot": _init_glorot, "he": _init_he}
