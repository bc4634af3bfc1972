"""A deterministic hash-based hold-out split of a dataset, computed chunk by chunk, never loaded whole."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Dataset

__all__ = ["holdout_mask", "HoldoutSplit"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def holdout_mask(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the rows that belong to the hold-out: a hash of (row, seed) below ``fraction``."""
    # splitmix64: a cheap, well-mixed hash; uint64 array arithmetic wraps silently (numpy scalar
    # arithmetic warns instead, so the seed's term is wrapped in Python first: the same value).
    offset = ((seed & 0xFFFFFFFF) * int(_GOLDEN) + int(_GOLDEN)) % (1 << 64)
    x = rows.astype(np.uint64) + np.uint64(offset)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < fraction


class HoldoutSplit(Dataset):
    """The training part (``part="train"``) or hold-out part (``"val"``) of a dataset.

    Membership is a hash of the row number, so it is the same on every run and
    machine; only per-chunk counts are kept in memory.
    """

    def __init__(self, parent: Dataset, fraction: float, seed: int = 0, part: str = "train"):
        if not 0.0 < fraction < 1.0:
            raise DataError(f"{parent.path}: validation fraction must be between 0 and 1, got {fraction}")
        if part not in ("train", "val"):
            raise ValueError("part must be 'train' or 'val'")
        super().__init__(parent.cache_bytes, parent.dtype)
        self.parent, self.fraction, self.seed, self.part = parent, float(fraction), int(seed), part
        self.nonfinite = parent.nonfinite
        self.path, self.format = parent.path, parent.format
        self.feature_names, self.label_name = parent.feature_names, parent.label_name
        counts, parents = [], []
        for c in range(parent.n_chunks):
            k = int(self._keep(c).sum())
            if k:
                counts.append(k)
                parents.append(c)
        self._parents = np.asarray(parents, dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.n_rows = int(self.bounds[-1])
        if self.n_rows == 0:
            raise DataError(f"{parent.path}: the {part} split of fraction {fraction} is empty")
        if parent.reopen is not None:  # a decoding process opens the file and takes the same split
            split = {"fraction": self.fraction, "seed": self.seed, "part": part}
            self.reopen = {**parent.reopen, "splits": [*parent.reopen.get("splits", []), split]}

    def _keep(self, c: int) -> np.ndarray:
        rows = np.arange(self.parent.bounds[c], self.parent.bounds[c + 1], dtype=np.int64)
        mask = holdout_mask(rows, self.fraction, self.seed)
        return mask if self.part == "val" else ~mask

    def _load_chunk(self, i: int):
        c = int(self._parents[i])
        # The parent applies its NaN/Inf policy, so errors name the row of the file.
        # With "skip" this split's own check then marks the NaN/Inf rows, keeping row counts aligned.
        X, y = self.parent._checked(c, *self.parent._load_chunk(c))
        keep = self._keep(c)
        return X[keep], None if y is None else y[keep]

    @property
    def selection(self):
        return self.parent.selection

    def label_dtype(self):
        return self.parent.label_dtype()

    def fingerprint(self):
        return {**self.parent.fingerprint(), "split": {"part": self.part, "fraction": self.fraction,
                                                       "seed": self.seed}}

    def close(self):
        super().close()
        self.parent.close()
