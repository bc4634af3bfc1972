"""Plain SGD's L2 penalty on a table of rows (``W1`` of inputs that are codes), applied lazily.

With an L2 penalty every SGD step multiplies every weight by ``1 - lr * l2`` (the penalty's part
of ``w -= lr * (g + l2 * w)``), rows the batch did not touch included: a pass over a table of
millions of rows per step. Here a row is brought up to date only when a step touches it, or when
the table is read whole (a checkpoint, the end of an epoch): ``scale`` is the running product of
every step's factor, ``stamp[r]`` its value when row ``r`` was last up to date, so the row is
behind by ``scale / stamp[r]``, the product of the factors of the steps it missed (learning-rate
schedules included), as Vowpal Wabbit's and scikit-learn's SGD keep one scale for all weights.

The product of k factors is not k multiplications: a row caught up after skipped steps differs
from the dense update in its last bits (within k float64 roundings; tested to a relative 1e-12);
rows every step touches (the plain inputs' rows) are the dense update bitwise. A resumed run is
the uninterrupted one bitwise: a checkpoint holds the raw table, the stamps and the scale
(``state``) beside the table brought up to date (``materialised``, for every reader of a model).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LazyDecay", "decay_state", "check_decay_state"]

_BLOCK = 1 << 15  # rows per pass over a whole table: no float64 copy of millions of rows


class LazyDecay:
    """The lazy L2 decay of ``params["W1"]`` (rows x hidden); ``stamp`` (rows,) float64 and
    ``scale`` as ``state()`` gave them, or a fresh table's (every row up to date)."""

    #: Below this scale the table is brought up to date whole and the scale restarted at 1 (a
    #: step count's function alone, so an interrupted run does it at the same steps).
    FLOOR = 1e-100

    def __init__(self, params: dict[str, np.ndarray], stamp: np.ndarray | None = None, scale: float = 1.0):
        self.params = params
        rows = len(params["W1"])
        self.stamp = np.ones(rows, np.float64) if stamp is None else np.array(stamp, np.float64)
        self.scale = float(scale)
        #: no row is behind (every stamp is the scale): the table is up to date as it is
        self.settled = bool((self.stamp == self.scale).all())
        self.settles = 0  # (sums over the table kept in units of the scale start again after one)
        self.compiled = True  # numba's loops where numba is there (False: numpy's, the same arithmetic)

    def catch_up(self, rows: np.ndarray) -> None:
        """Bring ``rows`` up to date: each multiplied by the factors of the steps it missed (a row
        given twice is caught up once)."""
        compiled = _compiled() if self.compiled else None
        if compiled is not None and self.params["W1"].flags.c_contiguous:
            compiled.catch_up_rows(self.params["W1"], self.stamp, np.asarray(rows, np.intp), self.scale)
            return
        behind = self.scale / self.stamp[rows]
        late = behind != 1.0
        if late.any():
            r, W = rows[late], self.params["W1"]
            W[r] = (W[r] * behind[late, None]).astype(W.dtype, copy=False)
            self.stamp[r] = self.scale

    def advance(self, factor: float, rows: np.ndarray) -> None:
        """A step whose penalty multiplies every weight by ``factor`` has updated ``rows`` (caught up
        before it, their penalty included in their gradient): the others fall behind by it."""
        self.settled = False
        if factor <= 0.0:  # (lr * l2 >= 1: no scale holds it) the untouched rows, now
            self.settle()
            untouched = np.ones(len(self.stamp), bool)
            untouched[rows] = False
            W = self.params["W1"]
            W[untouched] *= W.dtype.type(factor)
            return
        self.scale *= factor
        self.stamp[rows] = self.scale
        if self.scale < self.FLOOR:
            self.settle()

    def settle(self) -> None:
        """Bring every row up to date, and restart the scale at 1."""
        W = self.params["W1"]
        for a in range(0, len(W), _BLOCK):
            self.catch_up(np.arange(a, min(a + _BLOCK, len(W))))
        self.stamp[:] = 1.0
        self.scale = 1.0
        self.settles += 1
        self.settled = True

    def materialised(self) -> np.ndarray:
        """A copy of the table with every row up to date (the live one is left as it is)."""
        W = self.params["W1"]
        out = np.empty_like(W)
        for a in range(0, len(W), _BLOCK):
            b = min(a + _BLOCK, len(W))
            behind = self.scale / self.stamp[a:b]
            out[a:b] = W[a:b] * behind[:, None]
        return out

    def sums(self, rows: np.ndarray | None = None) -> tuple[float, float]:
        """Over ``rows`` of the table (all: None), in float64: the sum of the up-to-date rows'
        squares over ``scale**2`` (each raw row's over its ``stamp**2``: so sums over the table
        follow the touched rows alone), and of the raw values' absolute values."""
        W = self.params["W1"]
        compiled = _compiled() if self.compiled else None
        sq = ab = 0.0
        for a in range(0, len(W) if rows is None else len(rows), _BLOCK):
            r = np.arange(a, min(a + _BLOCK, len(W))) if rows is None else np.asarray(rows[a:a + _BLOCK], np.intp)
            if compiled is not None:
                s, b = compiled.row_square_sums(W, r, self.stamp)
            else:
                block = W[r].astype(np.float64)
                s = float(np.square(block).sum(axis=1) @ (1.0 / np.square(self.stamp[r])))
                b = float(np.abs(block).sum())
            sq += s
            ab += b
        return sq, ab

    def state(self) -> dict[str, np.ndarray]:
        """What a checkpoint holds of it: the raw table, the stamps, the scale."""
        return {"raw.W1": self.params["W1"], "stamp": self.stamp, "scale": np.array(self.scale, np.float64)}


def decay_state(shapes: dict, dtype) -> dict:
    """The arrays ``LazyDecay.state`` gives a checkpoint, ``{name: (dtype, shape)}``."""
    rows = shapes["W1"][0]
    return {"raw.W1": (np.dtype(dtype), shapes["W1"]), "stamp": (np.dtype(np.float64), (rows,)),
            "scale": (np.dtype(np.float64), ())}


def check_decay_state(state: dict) -> str | None:
    """Why a checkpoint's decay state is impossible, or None: ``FLOOR <= scale <= stamp <= 1``
    (a run brings its table up to date as soon as the scale falls below ``FLOOR``)."""
    if "scale" not in state:
        return None
    scale, stamp = float(state["scale"]), state["stamp"]
    if not LazyDecay.FLOOR <= scale <= 1.0:
        return f"array scale is not in [{LazyDecay.FLOOR:g}, 1]"
    if not ((stamp >= scale) & (stamp <= 1.0)).all():
        return "array stamp holds values outside [scale, 1]"
    return None


def _compiled():
    """``sparse_compiled`` (numba's loops), or None without numba."""
    global _COMPILED
    if _COMPILED is None:
        try:
            from . import sparse_compiled
        except ImportError:
            sparse_compiled = False
        _COMPILED = sparse_compiled
    return _COMPILED or None


_COMPILED = None
