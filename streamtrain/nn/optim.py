"""Optimisers with one verb, ``step(params, grads)``; their state is plain arrays."""

from __future__ import annotations

import numpy as np

__all__ = ["SGD", "Momentum", "Adam", "OPTIMIZERS", "make_optimizer"]


class SGD:
    """Plain gradient descent: ``p -= lr * g``."""

    def __init__(self, lr: float = 0.1, **_):
        self.lr = float(lr)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for k, g in grads.items():
            params[k] -= self.lr * g

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pass


class Momentum(SGD):
    """Heavy-ball momentum, optionally Nesterov's."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False, **_):
        super().__init__(lr)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, params, grads):
        for k, g in grads.items():
            v = self.velocity.get(k)
            if v is None:
                v = self.velocity[k] = np.zeros_like(g)
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


class Adam(SGD):
    """Adam (Kingma & Ba), with bias correction."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, **_):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params, grads):
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for k, g in grads.items():
            if k not in self.m:
                self.m[k], self.v[k] = np.zeros_like(g), np.zeros_like(g)
            m, v = self.m[k], self.v[k]
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            params[k] -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)

    def state_dict(self):
        out = {"t": np.array(self.t, dtype=np.int64)}
        out.update({f"m.{k}": a for k, a in self.m.items()})
        out.update({f"v.{k}": a for k, a in self.v.items()})
        return out

    def load_state_dict(self, state):
        self.t = int(state.get("t", 0))
        self.m = {k[2:]: np.array(a) for k, a in state.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(a) for k, a in state.items() if k.startswith("v.")}


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": lambda **kw: Momentum(nesterov=True, **kw),
              "adam": Adam}


def make_optimizer(name: str, **kwargs):
    """An optimiser by name (see ``OPTIMIZERS``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)
