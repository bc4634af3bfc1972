"""TwoLayerNet: input -> hidden layer -> output, with analytic backpropagation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .functions import ACTIVATIONS, INITS, TASKS, correct_count, init_weights

__all__ = ["TwoLayerNet", "InputLayout", "RowGrad", "PARAM_NAMES", "sum_rows", "penalty_of"]

PARAM_NAMES = ("W1", "b1", "W2", "b2")


class RowGrad:
    """The gradient of a weight matrix that is zero outside some rows: ``rows`` (distinct) and
    their ``values`` (``(len(rows), columns)``). Optimisers update those rows alone."""

    __slots__ = ("rows", "values", "shape")

    def __init__(self, rows: np.ndarray, values: np.ndarray, shape: tuple[int, int]):
        self.rows, self.values, self.shape = rows, values, shape

    def dense(self) -> np.ndarray:
        """The whole gradient, zeros outside ``rows``."""
        out = np.zeros(self.shape, self.values.dtype)
        out[self.rows] = self.values
        return out


def sum_rows(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``rows`` (sorted) and, for each, the sum of its ``values`` (summed in the
    order the rows were given: one order whether the result is scattered or kept sparse)."""
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    return ranked[starts], np.add.reduceat(values[order], starts, axis=0)


_SPARSE = None


def _sparse_compiled():
    """The ``sparse_compiled`` module, or None without numba (imported on first use)."""
    global _SPARSE
    if _SPARSE is None:
        try:
            from . import sparse_compiled
        except ImportError:
            sparse_compiled = False
        _SPARSE = sparse_compiled
    return _SPARSE or None


class InputLayout:
    """Where each input column meets the first layer's weights when some columns are codes.

    A plain input ``dense_cols[k]`` multiplies row ``dense_rows[k]`` of ``W1``; a code column
    ``code_cols[j]`` holds, per sample, an integer ``c`` in ``[0, sizes[j])`` that selects row
    ``offsets[j] + c`` (the row its one-hot input would multiply: the same model without the
    one-hot matrix). ``n_rows``: the rows of ``W1``.
    """

    def __init__(self, dense_cols, dense_rows, code_cols, offsets, sizes):
        self.dense_cols = np.asarray(dense_cols, np.intp)
        self.dense_rows = np.asarray(dense_rows, np.intp)
        self.code_cols = np.asarray(code_cols, np.intp)
        self.offsets = np.asarray(offsets, np.intp)
        self.sizes = np.asarray(sizes, np.intp)
        self.n_cols = len(self.dense_cols) + len(self.code_cols)
        ends = [*(self.dense_rows + 1), *(self.offsets + self.sizes)]
        self.n_rows = int(max(ends, default=0))

    def rows(self, X: np.ndarray) -> np.ndarray:
        """``(samples, code columns)`` rows of ``W1`` the codes of ``X`` select (a ValueError for a
        code that is not an integer of its column's range)."""
        codes = X[:, self.code_cols]
        rows = codes.astype(np.intp)
        if codes.size and ((rows != codes).any() or (rows < 0).any() or (rows >= self.sizes).any()):
            j = int(np.nonzero(((rows != codes) | (rows < 0) | (rows >= self.sizes)).any(axis=0))[0][0])
            raise ValueError(f"input column {int(self.code_cols[j])} holds a code outside [0, {int(self.sizes[j])})")
        return rows + self.offsets


def penalty_of(l1: float, l2: float, squares: float, absolutes: float) -> float:
    """The regularisation term (``l2`` / 2 W^2 + ``l1`` |W|) from the weights' sum of squares and
    sum of absolute values (``W1``'s and ``W2``'s together; biases are not penalised)."""
    return 0.5 * l2 * squares + l1 * absolutes


class TwoLayerNet:
    """A two-layer perceptron.

    Parameters ``W1`` (n_in, hidden), ``b1`` (hidden,), ``W2`` (hidden, n_out),
    ``b2`` (n_out,); with a ``layout`` (inputs that are codes), ``W1`` is (layout.n_rows, hidden). Regularisation (``l1``, ``l2``) applies to the weights,
    not the biases, and is added to the mean batch loss as
    ``l2/2 * sum(W**2) + l1 * sum(|W|)``.

    >>> net = TwoLayerNet(3, 4, 1, seed=0)
    >>> net.predict_output(np.zeros((2, 3), np.float32)).shape
    (2, 1)
    """

    def __init__(self, n_in: int, hidden: int, n_out: int, activation: str = "sigmoid",
                 task: str = "binary", init: str = "normal", seed: int = 0,
                 dtype: npt.DTypeLike = np.float32, layout: InputLayout | None = None):
        for name, table, value in (("activation", ACTIVATIONS, activation), ("task", TASKS, task),
                                   ("init", INITS, init)):
            if value not in table:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(table)}")
        self.n_in, self.hidden, self.n_out = int(n_in), int(hidden), int(n_out)
        if layout is not None and layout.n_cols != self.n_in:
            raise ValueError(f"the input layout has {layout.n_cols} columns, not n_in={n_in}")
        #: code columns that select rows of W1 (``InputLayout``), or None: W1 has a row per input
        self.layout = layout
        n_rows = self.n_in if layout is None else layout.n_rows
        self.activation, self.task, self.init = activation, task, init
        self.dtype = np.dtype(dtype)
        self._act, self._act_grad = ACTIVATIONS[activation].forward, ACTIVATIONS[activation].grad
        self._task = TASKS[task]
        rng = np.random.default_rng([int(seed), 0x1417])
        self.params = {
            # (a table's fan-in is the inputs a sample sums, one row per code column, not its rows:
            # He's and Glorot's scales from its millions of rows would start it at almost zero)
            "W1": init_weights(init, rng, n_rows, hidden, activation, self.dtype,
                               None if layout is None else layout.n_cols),
            "b1": np.zeros(hidden, self.dtype),
            "W2": init_weights(init, rng, hidden, n_out, activation, self.dtype),
            "b2": np.zeros(n_out, self.dtype),
        }

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hidden activations ``(rows, hidden)`` and output logits ``(rows, n_out)``."""
        p = self.params
        # Weights a checkpoint holds may be finite yet huge: their products overflow to inf, the
        # honest answer for such a model, not a warning (which the suite treats as an error).
        with np.errstate(over="ignore", invalid="ignore"):
            a1 = self._act(self._first(X) + p["b1"])
            return a1, a1 @ p["W2"] + p["b2"]

    def _first(self, X: np.ndarray) -> np.ndarray:
        """``X`` through the first layer's weights: a product, plus the rows codes select."""
        W1, L = self.params["W1"], self.layout
        if L is None:
            return X @ W1
        h = X[:, L.dense_cols] @ W1[L.dense_rows]
        compiled = _sparse_compiled()
        if compiled is not None and h.flags.c_contiguous:
            compiled.add_rows(h, W1, L.rows(X))
            return h
        for r in L.rows(X).T:  # one code column at a time: no (samples, columns, hidden) temporary
            h += W1[r]
        return h

    def _first_grad(self, X: np.ndarray, da1: np.ndarray, sparse: bool = False) -> np.ndarray | RowGrad:
        """The gradient of ``W1`` from the hidden layer's ``da1``: a product, and for codes the
        sum of each selected row's samples, scattered into that row (every other row: zero), or
        kept as those rows alone (``sparse``: a ``RowGrad``)."""
        L = self.layout
        if L is None:
            return X.T @ da1
        W1 = self.params["W1"]
        picked = L.rows(X)  # (samples, code columns)
        compiled = _sparse_compiled()
        rows, sums = compiled.row_sums(picked, da1) if compiled is not None else \
            sum_rows(picked.T.reshape(-1), np.tile(da1, (picked.shape[1], 1)))
        dense = X[:, L.dense_cols].T @ da1
        if sparse:
            return RowGrad(np.concatenate([L.dense_rows, rows]), np.concatenate([dense, sums]).astype(W1.dtype,
                           copy=False), W1.shape)
        g = np.zeros_like(W1)
        g[L.dense_rows] = dense
        g[rows] = sums
        return g

    def penalty(self, l1: float, l2: float) -> float:
        """The regularisation term added to the loss."""
        squares = absolutes = 0.0
        for w in (self.params["W1"], self.params["W2"]):
            if l2:
                squares += float(np.vdot(w, w))
            if l1:
                absolutes += float(np.abs(w).sum())
        return penalty_of(l1, l2, squares, absolutes)

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray, l1: float = 0.0, l2: float = 0.0,
                       weights: np.ndarray | None = None, sparse: bool = False, penalty: bool = True
                       ) -> tuple[float, float, dict[str, np.ndarray]]:
        """Mean (weighted) data loss, the penalty, and the gradients of their sum w.r.t. every parameter;
        ``self.last_correct``: the rows the network classified right before these gradients.
        ``sparse`` (inputs that are codes): ``W1``'s gradient is a ``RowGrad`` of the rows the batch
        touched, the penalty's included on those rows alone (lazy: an untouched row is not
        penalised). ``penalty`` False: its value is not computed (0.0 is returned; a pass over a
        table of millions of rows, which the caller tracks instead)."""
        p = self.params
        a1, z = self.forward(X)
        self.last_correct = correct_count(self.task, z, y)
        loss, dz = self._task.loss_delta(z, y, weights)
        dz = dz.astype(self.dtype, copy=False)
        grads = {"W2": a1.T @ dz, "b2": dz.sum(axis=0)}
        da1 = dz @ p["W2"].T
        da1 *= self._act_grad(a1)
        grads["W1"] = self._first_grad(X, da1, sparse and self.layout is not None)
        grads["b1"] = da1.sum(axis=0)
        for name in ("W1", "W2"):
            g, w = grads[name], p[name]
            if isinstance(g, RowGrad):  # the penalty of the rows touched (the values are this call's own)
                g, w = g.values, w[g.rows]
            if l2:
                g += l2 * w
            if l1:
                g += l1 * np.sign(w)
        return loss, self.penalty(l1, l2) if penalty else 0.0, grads

    def loss_and_output(self, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean data loss of a batch (no penalty) and its outputs (probabilities or values)."""
        z = self.forward(X)[1]
        return self._task.loss_delta(z, y)[0], self._task.output(z)

    def predict_output(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (classification) or values (regression), ``(rows, n_out)``."""
        return self._task.output(self.forward(X)[1])

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        """Mean data loss of a batch, without the penalty."""
        return self._task.loss_delta(self.forward(X)[1], y)[0]

    def config(self) -> dict:
        return {"n_in": self.n_in, "hidden": self.hidden, "n_out": self.n_out,
                "activation": self.activation, "task": self.task, "init": self.init,
                "dtype": self.dtype.name}
