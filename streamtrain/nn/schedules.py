"""Learning-rate schedules: the rate of step ``t`` (0, 1, ...) as a pure function of ``t``, so a
resumed run takes exactly the rates the uninterrupted one took.

``SCHEDULES[name](lr, t, config, total)`` for an array of steps ``t``; ``total`` is the run's
number of steps (cosine decays over it). ``config.warmup`` > 0 ramps linearly up to the
schedule's rate over the first ``warmup`` steps.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["SCHEDULES", "rates", "varies"]


def _constant(lr, t, c, total):
    return np.full(t.shape, lr, dtype=np.float64)


def _invscaling(lr, t, c, total):
    # scikit-learn's invscaling and Vowpal Wabbit's --power_t: lr / t^power_t, t counted from 1
    return lr / (t + 1.0) ** c.power_t


def _step(lr, t, c, total):
    return lr * c.lr_gamma ** (t // c.lr_step)


def _exponential(lr, t, c, total):
    return lr * c.lr_gamma ** (t / c.lr_step)


def _cosine(lr, t, c, total):
    return c.lr_min + 0.5 * (lr - c.lr_min) * (1.0 + np.cos(np.pi * np.minimum(t, total) / max(total, 1)))


def _auto(lr, t, c, total):
    # cosine over the run where its length is known (train); constant where not (serve, partial_fit)
    return _cosine(lr, t, c, total) if total else _constant(lr, t, c, total)


SCHEDULES: dict[str, Callable] = {"auto": _auto, "constant": _constant, "invscaling": _invscaling, "step": _step,
                                  "exponential": _exponential, "cosine": _cosine}


def rates(config, t: np.ndarray, total: int) -> np.ndarray:
    """The learning rates of steps ``t`` (int array) under ``config``'s schedule and warm-up.

    >>> from streamtrain import TrainConfig
    >>> rates(TrainConfig(lr=0.1, lr_schedule="step", lr_step=2, lr_gamma=0.5), np.arange(5), 5).tolist()
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """
    t = np.asarray(t, dtype=np.int64)
    r = SCHEDULES[config.lr_schedule](config.learning_rate, t, config, total)
    if config.warmup:
        r = r * np.minimum(1.0, (t + 1.0) / config.warmup)
    return r


def varies(config, total: int) -> bool:
    """Whether the rate changes over a run of ``total`` steps (0: a length not known)."""
    return config.lr_schedule not in ("constant",) + (("auto",) if not total else ()) or config.warmup > 0
