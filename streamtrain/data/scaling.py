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
    """Row count, per-feature mean and sum of squared deviations, and what the labels look like
    (classes and how often each occurs, integral or not, width, one-hot or not)."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    classes: set = field(default_factory=set)
    counts: dict = field(default_factory=dict)
    label_integral: bool = True
    label_ndim: int = 1
    label_width: int = 1
    onehot: bool = True
    labelled: int = 0  # rows whose labels were read
    # the labels' mean and sum of squared deviations per column, as numbers (a regression target's scaling)
    label_mean: np.ndarray | None = None
    label_m2: np.ndarray | None = None

    @property
    def label_std(self) -> np.ndarray | None:
        """Each label column's standard deviation (None before any numeric label was read)."""
        return None if self.label_m2 is None else np.sqrt(self.label_m2 / max(self.labelled, 1))

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.n, 1)

    def update(self, X: np.ndarray, y: np.ndarray | None, where: str = "") -> None:
        """Merge one block of rows (features and labels)."""
        self.update_features(X)
        if y is not None:
            self.update_labels(y)

    def update_features(self, X: np.ndarray) -> None:
        """Merge one block of feature rows (Chan et al.'s parallel variance formula, in float64)."""
        if X.shape[0] == 0:
            return
        from .moments import column_moments

        self._merge(X.shape[0], *column_moments(X))

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def _merge_labels(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.labelled
        if self.label_mean is None or n_a == 0 or self.label_mean.shape != mean_b.shape:
            self.label_mean, self.label_m2 = mean_b, m2_b
            return
        n = n_a + n_b
        delta = mean_b - self.label_mean
        self.label_mean = self.label_mean + delta * (n_b / n)
        self.label_m2 = self.label_m2 + m2_b + delta**2 * (n_a * n_b / n)

    def update_labels(self, y: np.ndarray) -> None:
        """Merge one block of labels."""
        if len(y) == 0:
            return
        if y.dtype.kind in "biuf":
            yd = y.astype(np.float64).reshape(len(y), -1)
            mean_b = yd.mean(axis=0)
            self._merge_labels(len(y), mean_b, ((yd - mean_b) ** 2).sum(axis=0))
        self.labelled += len(y)
        self.label_ndim = y.ndim
        self.label_width = y.shape[1] if y.ndim == 2 else 1
        if y.ndim == 2:  # one-hot class labels, or several regression targets
            self.onehot = self.onehot and bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1))
        if y.dtype.kind == "f":
            self.label_integral = self.label_integral and bool(np.all(y == np.round(y)))
        if self.label_integral and len(self.classes) <= MAX_CLASSES:
            values, counts = np.unique(y.argmax(axis=1) if y.ndim == 2 and self.onehot else y, return_counts=True)
            if y.ndim == 1:
                self.classes.update(values.tolist())
            for v, c in zip(values.tolist(), counts.tolist()):
                self.counts[v] = self.counts.get(v, 0) + c

    def merge(self, other: "DataStats") -> None:
        """Add another part's statistics (another block of files, or another process's share)."""
        if other.n:
            self._merge(other.n, other.mean, other.m2)
        if other.labelled:
            if other.label_mean is not None:
                self._merge_labels(other.labelled, other.label_mean, other.label_m2)
            self.labelled += other.labelled
            self.label_ndim, self.label_width = other.label_ndim, other.label_width
            self.onehot = self.onehot and other.onehot
            self.label_integral = self.label_integral and other.label_integral
            self.classes |= other.classes
            for v, c in other.counts.items():
                self.counts[v] = self.counts.get(v, 0) + c


    def to_json(self) -> dict[str, Any]:
        """As plain JSON (for another process to merge)."""
        return {"n": self.n, "mean": None if self.mean is None else self.mean.tolist(),
                "m2": None if self.m2 is None else self.m2.tolist(), "classes": sorted(self.classes, key=repr),
                "counts": [[k, v] for k, v in self.counts.items()], "label_integral": self.label_integral,
                "label_ndim": self.label_ndim, "label_width": self.label_width, "onehot": self.onehot,
                "labelled": self.labelled,
                "label_mean": None if self.label_mean is None else self.label_mean.tolist(),
                "label_m2": None if self.label_m2 is None else self.label_m2.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DataStats":
        s = cls(n=d["n"], mean=None if d["mean"] is None else np.asarray(d["mean"], np.float64),
                m2=None if d["m2"] is None else np.asarray(d["m2"], np.float64), classes=set(d["classes"]),
                counts={k: v for k, v in d["counts"]}, label_integral=d["label_integral"],
                label_ndim=d["label_ndim"], label_width=d["label_width"], onehot=d["onehot"], labelled=d["labelled"],
                label_mean=None if d.get("label_mean") is None else np.asarray(d["label_mean"], np.float64),
                label_m2=None if d.get("label_m2") is None else np.asarray(d["label_m2"], np.float64))
        return s

    def merged_across(self, comm) -> "DataStats":
        """Every process's statistics merged (Chan's merge, in rank order, so each gets the same)."""
        if comm.size == 1:
            return self
        total = DataStats()
        for part in comm.allgather(self.to_json()):
            total.merge(DataStats.from_json(part))
        return total


def scan(dataset: Dataset, features: bool = True, progress=None, first_only: bool = False,
         part: tuple[int, int] = (0, 1)) -> DataStats:
    """Feature mean/variance (``features``) and the labels' summary in one pass over the chunks
    (``first_only``: the first chunk's labels, enough for a regression's width);
    ``progress(rows)`` hears of each chunk done. ``part=(k, n)``: only the chunks ``i`` with
    ``i % n == k`` (one process's share, to be merged with ``merged_across``)."""
    stats = DataStats()
    if features:
        dataset.read_codes = False  # (their statistics are not used: codes are never scaled)
        try:
            for X, y in dataset.iter_chunks(part):
                stats.update(X, y)
                if progress is not None:
                    progress(len(X))
        finally:
            dataset.read_codes = True
        return stats
    for y in dataset.iter_labels(part):
        stats.update_labels(y)
        if progress is not None:
            progress(len(y))
        if first_only:
            break
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
    def from_stats(cls, kind: str, stats: DataStats, dtype=np.float32, constant: float = 1.0) -> "Scaler":
        """The scaling of ``stats``' features; a feature constant there gets the factor ``constant``:
        1 (unscaled: statistics of a stream's first rows, whose later values may vary), or 0 where
        the statistics are of all the training data (nothing was learned from the feature, so none
        of its later values may move a prediction)."""
        if stats.mean is None:  # no feature statistics: a scaling that needs none
            return cls(kind, None, None, dtype)
        std = np.sqrt(stats.var)
        # (constant up to the rounding of its sums, which grows with the rows summed: a float64
        # column of 0.1s had a standard deviation of 4e-16 over 2,000 rows, 1.3e-12 over 1M)
        flat = ~(std > 4 * np.finfo(np.float64).eps * max(stats.n, 1) * np.abs(stats.mean))
        std[flat] = 1.0  # (no division by zero)
        factor = 1.0 / std
        factor[flat] = constant
        return cls(kind, stats.mean, factor, dtype)

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
