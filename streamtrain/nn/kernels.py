"""What the compiled loops share (the per-sample loop of ``online`` and the minibatch step of
``minibatch``): the integer codes their ``act`` and ``task`` arguments take, the targets' layout,
and the float32 exponential. A leaf: it imports nothing of streamtrain, and numba only when asked.
"""

from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["available", "act_id", "task_id", "targets_2d", "ACT_IDS", "TASK_IDS", "exp_neg_f32"]

# The compiled code's codes for functions.ACTIVATIONS and functions.TASKS (a test checks that
# both tables name the same things): a name without a code cannot reach the compiled loops.
ACT_IDS = {"sigmoid": 0, "tanh": 1, "relu": 2}
TASK_IDS = {"binary": 0, "multiclass": 1, "regression": 2}


def available() -> bool:
    """True when numba is importable (the compiled loops can run)."""
    return importlib.util.find_spec("numba") is not None


def act_id(name: str) -> int:
    """The compiled code's code of an activation (a ValueError for one it does not implement)."""
    try:
        return ACT_IDS[name]
    except KeyError:
        raise ValueError(f"the compiled loops have no activation {name!r} (they have {', '.join(ACT_IDS)})") from None


def task_id(name: str) -> int:
    """The compiled code's code of a task (a ValueError for one it does not implement)."""
    try:
        return TASK_IDS[name]
    except KeyError:
        raise ValueError(f"the compiled loops have no task {name!r} (they have {', '.join(TASK_IDS)})") from None


def targets_2d(T: np.ndarray, dtype) -> np.ndarray:
    """Targets as a contiguous (rows, columns) array of the network's dtype, as the compiled loops take them."""
    return np.ascontiguousarray(T, dtype=dtype).reshape(len(T), -1)


# float32 e^-x = p * 2^n with x = n ln2 + r, |r| <= ln2/2 (Cephes' expf polynomial)
_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_neg_f32(Z, E):  # pragma: no cover - compiled
    # Z <- the mantissa part of exp(-Z), E <- 2^n as float32 bits. Split in two so both loops
    # vectorise (no scalar bit cast in numba); -Z is clamped to +-80 so nothing overflows or
    # turns subnormal (sigmoid(-80) is 1.8e-35, not 0; the numpy path's tanh form gives 0 there).
    f = np.float32
    flat, bits = Z.reshape(-1), E.reshape(-1)
    for i in range(flat.size):
        x = min(max(-flat[i], f(-80.0)), f(80.0))
        n = np.floor(x * f(_LOG2E) + f(0.5))
        r = x - n * f(_LN2_HI) - n * f(_LN2_LO)
        p = f(_P[0])
        p = p * r + f(_P[1])
        p = p * r + f(_P[2])
        p = p * r + f(_P[3])
        p = p * r + f(_P[4])
        p = p * r + f(_P[5])
        flat[i] = p * r * r + r + f(1.0)
        bits[i] = (np.int32(n) + np.int32(127)) << np.int32(23)
