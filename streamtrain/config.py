"""The training configuration: every setting of a run, with Keras / textbook defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["TrainConfig", "RESUME_MAY_CHANGE"]


@dataclass
class TrainConfig:
    """Settings of a training run (all JSON-able, stored in every checkpoint)."""

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Settings that differ from ``other`` and would make a resumed run differ from an uninterrupted one."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {b[k]!r} -> {a[k]!r}" for k in a if k not in RESUME_MAY_CHANGE and a[k] != b[k]]


# Changing these on resume does not change the batches or updates of the epochs already planned.
RESUME_MAY_CHANGE = frozenset({"epochs", "checkpoint_every", "checkpoint_seconds", "keep", "keep_best",
                               "early_stopping", "decoder", "decoder_workers"})
