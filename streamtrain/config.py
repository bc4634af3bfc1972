"""The training configuration: every setting of a run, with Keras / textbook defaults, validated.

``TrainConfig`` checks every field on construction (types, names from their tables, finite
numbers within ranges that bound resources), so the library refuses what the command line
refuses, and a checkpoint's stored settings are validated the same way when it is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

__all__ = ["TrainConfig", "RESUME_MAY_CHANGE", "ConfigError", "LIMITS"]

# Bounds that keep a setting from exhausting the machine (a typo of 1e9 hidden units, say).
LIMITS = {
    "hidden": (1, 1 << 20),
    "batch_size": (1, 1 << 31),
    "epochs": (1, 1 << 40),
    "decoder_workers": (0, 64),
    "seed": (0, (1 << 63) - 1),
    "early_stopping": (0, 1 << 31),
    "checkpoint_every": (0, 1 << 62),
    "keep": (1, 1 << 20),
    "window_mb": (1e-6, 1 << 20),  # up to a terabyte; the available memory is checked when a run starts
    "lr": (0.0, 1e6),
    "momentum": (0.0, 1.0),
    "l1": (0.0, 1e6),
    "l2": (0.0, 1e6),
    "val_fraction": (0.0, 1.0),
    "checkpoint_seconds": (0.0, 1e9),
}


def _choices() -> dict[str, tuple[str, ...]]:
    # The tables live with the code they name; imported here lazily (they import numpy).
    from .loader import DECODERS
    from .nn.functions import ACTIVATIONS, INITS, TASKS
    from .nn.optim import OPTIMIZERS
    from .sampling import SHUFFLES
    from .scaling import SCALINGS

    return {"activation": tuple(ACTIVATIONS), "task": ("auto", *TASKS), "init": tuple(INITS),
            "optimizer": tuple(OPTIMIZERS), "shuffle": tuple(SHUFFLES), "decoder": tuple(DECODERS),
            "scale": tuple(SCALINGS), "dtype": ("float32", "float64")}


@dataclass
class TrainConfig:
    """Settings of a training run (all JSON-able, stored in every checkpoint).

    >>> TrainConfig(hidden=0)
    Traceback (most recent call last):
    ...
    streamtrain.config.ConfigError: hidden: must be between 1 and 1048576, got 0
    """

    hidden: int = 64
    activation: str = "sigmoid"
    task: str = "auto"
    init: str = "normal"
    batch_size: int = 32
    epochs: int = 10
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    l1: float = 0.0
    l2: float = 0.0
    shuffle: str = "window"
    window_mb: float = 256.0
    decoder: str = "auto"
    decoder_workers: int = 0
    drop_last: bool = False
    replacement: bool = False
    seed: int = 0
    scale: str = "standard"
    dtype: str = "float32"
    # training steps in numba-compiled code (batch_size=1 with SGD: per sample); False: the numpy path
    compiled: bool = True
    val_fraction: float = 0.0
    skip_nonfinite: bool = False
    early_stopping: int = 0
    checkpoint_every: int = 0
    checkpoint_seconds: float = 0.0
    keep: int = 3
    keep_best: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field of the wrong type or out of range."""
        choices = _choices()
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            kind = type(f.default)
            if kind is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"{name}: must be true or false, got {value!r}")
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{name}: must be an integer, got {value!r}")
            elif kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"{name}: must be a finite number, got {value!r}")
                setattr(self, name, float(value))
            elif name in choices and value not in choices[name]:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices[name])}")
            if name in LIMITS:
                lo, hi = LIMITS[name]
                v = getattr(self, name)
                if not lo <= v <= hi:
                    raise ConfigError(f"{name}: must be between {lo:g} and {hi:g}, got {v!r}" if kind is float
                                      else f"{name}: must be between {lo} and {hi}, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be greater than 0, got {self.lr!r}")
        if self.momentum >= 1:
            raise ConfigError(f"momentum: must be below 1, got {self.momentum!r}")
        if self.val_fraction >= 1:
            raise ConfigError(f"val_fraction: must be below 1, got {self.val_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**d)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Settings that differ from ``other`` and would make a resumed run differ from an uninterrupted one."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {b[k]!r} -> {a[k]!r}" for k in a if k not in RESUME_MAY_CHANGE and a[k] != b[k]]


# Changing these on resume does not change the batches or updates of the epochs already planned.
RESUME_MAY_CHANGE = frozenset({"epochs", "checkpoint_every", "checkpoint_seconds", "keep", "keep_best",
                               "early_stopping", "decoder", "decoder_workers"})
