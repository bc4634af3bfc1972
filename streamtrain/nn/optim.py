"""Optimisers with one verb, ``step(params, grads)``; their state is plain arrays.

``OPTIMIZERS`` names each with its class, its default learning rate and its hyperparameters
(default, range, help): the configuration validates against this table and the command
line makes one option per hyperparameter from it, so a hyperparameter is added here once.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._malloc import touch_pages
from .decay import LazyDecay, check_decay_state, decay_state
from .network import RowGrad

__all__ = ["SGD", "Momentum", "Adam", "OPTIMIZERS", "Hyper", "OptimizerSpec", "make_optimizer", "HYPERPARAMETERS"]


class SGD:
    """Plain gradient descent: ``p -= lr * g``; ``decay``: the lazy L2 decay of a table of codes'
    rows (``decay.LazyDecay``, set by the update strategy that needs it), whose state it keeps."""

    def __init__(self, lr: float = 0.1):
        self.lr = float(lr)
        self.decay: LazyDecay | None = None
        self.loaded_decay: dict[str, np.ndarray] = {}  # a checkpoint's, until a strategy takes it up

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for k, g in grads.items():
            if isinstance(g, RowGrad):  # rows the step touched: the others' gradient is zero
                params[k][g.rows] -= self.lr * g.values
            else:
                params[k] -= self.lr * g

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.loaded_decay) if self.decay is None else self.decay.state()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.loaded_decay = {k: state[k] for k in ("raw.W1", "stamp", "scale") if k in state}

    def lazy_decay(self, params: dict[str, np.ndarray]) -> LazyDecay:
        """The lazy decay of ``params["W1"]``: the checkpoint's (its raw table put back in
        ``params``), else a fresh one's."""
        if self.decay is None or self.decay.params is not params:
            saved = self.loaded_decay
            if saved and saved["raw.W1"].shape == params["W1"].shape:
                params["W1"][...] = saved["raw.W1"]
                self.decay = LazyDecay(params, saved["stamp"], float(saved["scale"]))
            else:
                self.decay = LazyDecay(params)
            self.loaded_decay = {}
        return self.decay


class Momentum(SGD):
    """Heavy-ball momentum, optionally Nesterov's."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False):
        super().__init__(lr)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, params, grads):
        for k, g in grads.items():
            v = self.velocity.get(k)
            if v is None:
                v = self.velocity[k] = zero_state(params[k])
            if isinstance(g, RowGrad):  # lazy: a row's velocity advances when the row is touched
                r = g.rows
                vr = v[r] * self.momentum - self.lr * g.values
                v[r] = vr
                params[k][r] += self.momentum * vr - self.lr * g.values if self.nesterov else vr
                continue
            v *= self.momentum
            v -= self.lr * g
            if self.nesterov:
                params[k] += self.momentum * v - self.lr * g
            else:
                params[k] += v

    def state_dict(self):
        return {f"v.{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state):
        self.velocity = {k[2:]: np.array(v) for k, v in state.items() if k.startswith("v.")}


def zero_state(a: np.ndarray) -> np.ndarray:
    """Zeros of ``a``'s shape and type for an optimiser's state: those ``prepare_zeros`` readied
    for ``a``, else on pages the system maps when first written (``np.zeros``: the first step does
    not write gigabytes of zeros, as ``np.zeros_like`` would)."""
    held = _PREPARED.get(id(a))
    if held is not None and held[0]() is a:
        z = held[1].take()
        if z is not None and z.shape == a.shape and z.dtype == a.dtype:
            return z
    return np.zeros(a.shape, a.dtype)


#: A table's size from which its optimiser state is readied beside the initial draw (``prepare_zeros``).
PREPARE_BYTES = 64 << 20


class _Zeros:
    """Arrays of zeros whose pages a thread writes (maps) meanwhile: a first write to a page costs
    the system a fresh page, about as much as the table's initial draw for a table's Adam moments."""

    def __init__(self, shape: tuple, dtype, count: int):
        self.arrays = [np.zeros(shape, dtype) for _ in range(count)]
        self.thread = threading.Thread(target=self._touch, name="streamtrain-zeros", daemon=True)
        self.thread.start()

    def _touch(self) -> None:
        for a in list(self.arrays):
            touch_pages(a)

    def take(self) -> np.ndarray | None:
        self.thread.join()
        return self.arrays.pop() if self.arrays else None


_PREPARED: dict[int, tuple[weakref.ref, _Zeros]] = {}


def prepare_zeros(optimizer: str, shape: tuple, dtype) -> _Zeros | None:
    """Ready, in a thread, the zeros ``optimizer`` keeps of a first layer of ``shape`` (its table),
    while the caller draws the layer's initial weights; None for a small one or an optimiser that
    keeps none. ``attach`` hands them to the drawn weights, for ``zero_state``."""
    spec = OPTIMIZERS.get(optimizer)
    if spec is None or int(np.prod(shape)) * np.dtype(dtype).itemsize < PREPARE_BYTES:
        return None
    count = sum(1 for k in spec.state({"W1": tuple(shape)}, dtype) if k in ("m.W1", "v.W1"))  # (zero_state's)
    return _Zeros(tuple(shape), dtype, count) if count else None


def attach(zeros: _Zeros | None, W: np.ndarray) -> None:
    """Keep ``zeros`` (``prepare_zeros``') for ``W``'s optimiser state, while ``W`` lives."""
    if zeros is not None:
        key = id(W)
        _PREPARED[key] = (weakref.ref(W), zeros)
        weakref.finalize(W, _PREPARED.pop, key, None)


def _compiled_adam():
    """``optim_compiled.adam_update``, or None without numba (imported on the first step: numba
    takes half a second to import)."""
    global _ADAM
    if _ADAM is None:
        try:
            from .optim_compiled import adam_update
        except ImportError:
            adam_update = False
        _ADAM = adam_update
    return _ADAM or None


_ADAM = None


_ADAM_ROWS = None


def _compiled_adam_rows():
    """``sparse_compiled.adam_rows``, or None without numba."""
    global _ADAM_ROWS
    if _ADAM_ROWS is None:
        try:
            from .sparse_compiled import adam_rows
        except ImportError:
            adam_rows = False
        _ADAM_ROWS = adam_rows
    return _ADAM_ROWS or None


def _fits(params, grads, m, v) -> bool:
    """Whether the compiled update takes these: the network's four arrays, C-contiguous, one float dtype."""
    if set(grads) != {"W1", "b1", "W2", "b2"} or any(isinstance(g, RowGrad) for g in grads.values()):
        return False
    dtype = params["W1"].dtype
    return dtype.kind == "f" and all(a[k].dtype == dtype and a[k].flags.c_contiguous
                                     for a in (params, grads, m, v) for k in grads)


class Adam(SGD):
    """Adam (Kingma & Ba), with bias correction."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    compiled = True  # the compiled update where numba is there (set False for numpy's, the reference)

    def step(self, params, grads):
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for k, g in grads.items():
            if k not in self.m:
                self.m[k], self.v[k] = zero_state(params[k]), zero_state(params[k])
        update = _compiled_adam() if self.compiled else None
        if update is not None and _fits(params, grads, self.m, self.v):
            update(params, grads, self.m, self.v, self.beta1, self.beta2, self.lr / c1, c2, self.eps)
            return
        for k, g in grads.items():
            if isinstance(g, RowGrad):  # lazy (TensorFlow's LazyAdam): touched rows' moments alone advance
                r = g.rows
                rows_update = _compiled_adam_rows() if self.compiled else None
                if rows_update is not None and params[k].flags.c_contiguous and params[k].ndim == 2:
                    rows_update(params[k], self.m[k], self.v[k], r, g.values, self.beta1, self.beta2, self.lr / c1,
                                c2, self.eps)
                    continue
                m = self.m[k][r] * self.beta1 + (1.0 - self.beta1) * g.values
                v = self.v[k][r] * self.beta2 + (1.0 - self.beta2) * g.values * g.values
                self.m[k][r], self.v[k][r] = m, v
                params[k][r] -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)
                continue
            m, v = self.m[k], self.v[k]
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            params[k] -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)

    def state_dict(self):
        if not self.m:  # no step yet: nothing to keep
            return {}
        out = {"t": np.array(self.t, dtype=np.int64)}
        out.update({f"m.{k}": a for k, a in self.m.items()})
        out.update({f"v.{k}": a for k, a in self.v.items()})
        return out

    def load_state_dict(self, state):
        self.t = int(state.get("t", 0))
        self.m = {k[2:]: np.array(a) for k, a in state.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(a) for k, a in state.items() if k.startswith("v.")}


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its default and the range it may take (an open end excludes the bound)."""

    default: float
    low: float
    high: float
    help: str
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        import math

        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if value < self.low or value > self.high or (self.low_open and value == self.low) or (
                self.high_open and value == self.high):
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must be in {lo}{self.low:g}, {self.high:g}{hi}, got {value!r}"
        return None


def _no_state(shapes: dict, dtype) -> dict:
    return {}


def _no_check(state: dict) -> str | None:
    return None


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser: ``make(lr=, **hyperparameters)``, its default learning rate, its
    hyperparameters, and its state as a checkpoint holds it: ``state(shapes, dtype)`` ->
    ``{name: (dtype, shape)}`` of the arrays ``state_dict()`` returns once it has stepped (for
    parameters of ``shapes``, ``{name: shape}``), and ``check(state)``, why loaded values are
    impossible (or None)."""

    make: Any
    lr: float  # the default learning rate
    params: dict[str, Hyper] = field(default_factory=dict)
    state: Any = _no_state
    check: Any = _no_check


def _velocity(shapes: dict, dtype) -> dict:
    return {f"v.{k}": (np.dtype(dtype), s) for k, s in shapes.items()}


def _moments(shapes: dict, dtype) -> dict:
    return {"t": (np.dtype(np.int64), ()), **{f"m.{k}": (np.dtype(dtype), s) for k, s in shapes.items()},
            **{f"v.{k}": (np.dtype(dtype), s) for k, s in shapes.items()}}


def _check_moments(state: dict) -> str | None:
    if "t" in state and not 0 <= int(state["t"]) <= (1 << 62):
        return "array t is out of range"
    negative = [k for k, a in state.items() if k.startswith("v.") and (a < 0).any()]
    return f"array {negative[0]} holds negative second moments" if negative else None


_MOMENTUM = Hyper(0.9, 0.0, 1.0, "Momentum (momentum and nesterov optimisers).", high_open=True)

OPTIMIZERS: dict[str, OptimizerSpec] = {
    # (plain SGD keeps a state only for a table of codes under an L2 penalty: its lazy decay)
    "sgd": OptimizerSpec(SGD, 0.1, {}, decay_state, check_decay_state),
    "momentum": OptimizerSpec(Momentum, 0.1, {"momentum": _MOMENTUM}, _velocity),
    "nesterov": OptimizerSpec(lambda **kw: Momentum(nesterov=True, **kw), 0.1, {"momentum": _MOMENTUM}, _velocity),
    # 0.003, not Keras's and scikit-learn's 0.001: with the default cosine decay it trained the
    # tables of benchmarks/tables.md best (the comparison is in the issue 27 closing note).
    "adam": OptimizerSpec(Adam, 0.003, {
        "beta1": Hyper(0.9, 0.0, 1.0, "Adam's decay of the gradient's running mean.", high_open=True),
        "beta2": Hyper(0.999, 0.0, 1.0, "Adam's decay of the squared gradient's running mean.", high_open=True),
        "eps": Hyper(1e-8, 0.0, 1.0, "Adam's epsilon, added to the root mean square.", low_open=True),
    }, _moments, _check_moments),
}

# Every hyperparameter name, with the optimisers that take it.
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {}
for _name, _spec in OPTIMIZERS.items():
    for _p in _spec.params:
        HYPERPARAMETERS[_p] = HYPERPARAMETERS.get(_p, ()) + (_name,)


def make_optimizer(name: str, lr: float | None = None, **params):
    """An optimiser by name (see ``OPTIMIZERS``): ``lr`` None takes its default learning rate,
    hyperparameters not given take theirs."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    unknown = set(params) - set(spec.params)
    if unknown:
        raise ValueError(f"optimizer {name!r} takes no {', '.join(sorted(unknown))}")
    values = {k: params.get(k, h.default) for k, h in spec.params.items()}
    return spec.make(lr=spec.lr if lr is None else lr, **values)
