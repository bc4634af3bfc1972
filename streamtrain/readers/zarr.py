"""Zarr reader (format 2 and 3 through zarr-python 3): a feature array and a label array in a group."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import (DEFAULT_CACHE_BYTES, FEATURE_KEYS, LABEL_KEYS, Dataset, as_features,
                   as_labels, find_key, uniform_bounds)

__all__ = ["ZarrDataset"]


def _array_paths(group, prefix: str = "") -> list[str]:
    import zarr

    found = []
    for name, member in group.members():
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            found.append(path)
        else:
            found.extend(_array_paths(member, path + "/"))
    return found


class ZarrDataset(Dataset):
    """Features from a 2-D Zarr array, label from a 1-D one; chunks are the row chunks (or shards)."""

    format = "zarr"

    def __init__(self, path: str, features: str | None = None, label: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32):
        import zarr

        super().__init__(cache_bytes, dtype)
        self.path = str(path)
        if not os.path.exists(self.path):
            raise DataError(f"{self.path}: no such file or directory")
        try:
            group = zarr.open_group(self.path, mode="r")
        except Exception as e:  # zarr raises several types for a bad store
            raise DataError(f"{self.path}: not a readable Zarr group ({e})") from None
        names = _array_paths(group)
        x_key = find_key(names, features, FEATURE_KEYS, "features array", self.path, True)
        y_key = find_key(names, label, LABEL_KEYS, "label array", self.path, False)
        X = group[x_key]
        if X.ndim != 2:
            raise DataError(f"{self.path}: features array {x_key!r} has shape {X.shape}; need 2-D (rows, features)")
        if X.dtype.kind not in "biuf":
            raise DataError(f"{self.path}: features array {x_key!r} has non-numeric dtype {X.dtype}")
        self._X = X
        self._y = None if y_key is None else group[y_key]
        self.n_rows = int(X.shape[0])
        if self._y is not None and self._y.shape[0] != self.n_rows:
            raise DataError(f"{self.path}: features have {self.n_rows} rows but label {y_key!r} has {self._y.shape[0]}")
        names_attr = X.attrs.get("feature_names")
        self.feature_names = (list(map(str, names_attr)) if names_attr is not None
                              and len(names_attr) == X.shape[1] else [f"f{j}" for j in range(X.shape[1])])
        self.label_name = y_key
        self._x_key = x_key
        # A shard is the unit one read fetches; reading less than a shard decodes it anyway.
        unit = getattr(X, "shards", None) or X.chunks
        self.bounds = uniform_bounds(self.n_rows, unit[0])
        self._check_layout()

    def _load_chunk(self, i: int):
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        try:
            X = as_features(self._X[a:b], self.dtype, self.path)
            y = None if self._y is None else as_labels(self._y[a:b], self.path)
        except Exception as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({e})") from None
        return X, y

    def label_dtype(self):
        return None if self._y is None else str(self._y.dtype)

    def extra_info(self):
        return {"features_array": self._x_key, "stored_dtype": str(self._X.dtype),
                "zarr_format": self._X.metadata.zarr_format,
                "compressors": [type(c).__name__ for c in (self._X.compressors or ())]}
