"""One streaming pass for feature statistics and label summary, and the scaler applied per batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..readers.base import Dataset

__all__ = ["DataStats", "scan", "Scaler", "SCALINGS", "standardize"]

# More distinct integer label values than this means the label is not a class id.
MAX_CLASSES = 10_000


@dataclass
class DataStats:
    """Row count, per-feature mean and sum of squared deviations, and what the labels look like."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    classes: set = field(default_factory=set)
    label_integral: bool = True
    label_ndim: int = 1
    label_width: int = 1
    onehot: bool = True

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.n, 1)

    def update(self, X: np.ndarray, y: np.ndarray | None, where: str) -> None:
        """Merge one block of rows (Chan et al.'s parallel variance formula, in float64)."""
        n_b = X.shape[0]
        if n_b == 0:
            return
        Xd = X.astype(np.float64, copy=False)
        mean_b = Xd.mean(axis=0)
        m2_b = ((Xd - mean_b) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
        else:
            n = self.n + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / n)
            self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
            self.n = n
        if y is not None:
            self.label_ndim = y.ndim
            self.label_width = y.shape[1] if y.ndim == 2 else 1
            if y.ndim == 2:  # one-hot class labels, or several regression targets
                self.onehot = self.onehot and bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))
            if y.dtype.kind == "f":
                self.label_integral = self.label_integral and bool(np.all(y == np.round(y)))
            if self.label_integral and y.ndim == 1 and len(self.classes) <= MAX_CLASSES:
                self.classes.update(np.unique(y).tolist())


def scan(dataset: Dataset) -> DataStats:
    """Feature mean/variance and label summary in one pass over the chunks."""
    stats = DataStats()
    for i, (X, y) in enumerate(dataset.iter_chunks()):
        stats.update(X, y, f"{dataset.path} (chunk {i})")
    return stats


class Scaler:
    """Applies a feature scaling to each batch; its statistics are stored with the model."""

    def __init__(self, kind: str = "standard", mean: np.ndarray | None = None,
                 scale: np.ndarray | None = None, dtype=np.float32):
        if kind not in SCALINGS:
            raise ValueError(f"unknown scale {kind!r}; use one of {', '.join(SCALINGS)}")
        self.kind = kind
        self.mean = None if mean is None else np.asarray(mean, dtype=dtype)
        self.scale = None if scale is None else np.asarray(scale, dtype=dtype)

    @classmethod
    def from_stats(cls, kind: str, stats: DataStats, dtype=np.float32) -> "Scaler":
        std = np.sqrt(stats.var)
        # A constant feature would divide by zero; leave it unscaled.
        std[std == 0] = 1.0
        return cls(kind, stats.mean, 1.0 / std, dtype)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Scaled copy of ``X`` (rows, features)."""
        return SCALINGS[self.kind](self, X)

    def state(self) -> dict[str, Any]:
        arrays = {} if self.mean is None else {"mean": self.mean, "scale": self.scale}
        return {"kind": self.kind, **arrays}


def standardize(X: np.ndarray, mean: np.ndarray, factor: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``(X - mean) * factor``: a new array, or ``X`` itself changed where ``in_place`` (the loader
    does so to the arrays it gathered rows into: no new array to allocate)."""
    out = np.subtract(X, mean, out=X if in_place else None)
    out *= factor
    return out


def _standard(s: Scaler, X: np.ndarray) -> np.ndarray:
    return standardize(X, s.mean, s.scale)


def _none(s: Scaler, X: np.ndarray) -> np.ndarray:
    return X


def _batch_center(s: Scaler, X: np.ndarray) -> np.ndarray:
    # Subtract each batch's own mean, as the seed material describes.
    return X - X.mean(axis=0, keepdims=True)


# Named functions, not lambdas: a trained model must pickle (scikit-learn estimators, workers).
SCALINGS = {"standard": _standard, "none": _none, "batch-center": _batch_center}
