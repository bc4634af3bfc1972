"""HDF5 reader: a 2-D feature dataset and a label dataset, read chunk by chunk with h5py."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import (DEFAULT_CACHE_BYTES, FEATURE_KEYS, LABEL_KEYS, Dataset, as_features,
                   as_labels, find_key, uniform_bounds, virtual_chunk_rows)

__all__ = ["HDF5Dataset"]


def _dataset_paths(f) -> list[str]:
    import h5py

    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


class HDF5Dataset(Dataset):
    """Features from one 2-D HDF5 dataset, label from a 1-D one, chunk by chunk.

    The file is opened lazily and reopened in a child process, so no h5py
    handle crosses a fork.
    """

    format = "hdf5"

    def __init__(self, path: str, features: str | None = None, label: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32):
        super().__init__(cache_bytes, dtype)
        self.path = str(path)
        self._file = None
        f = self._handle()
        names = _dataset_paths(f)
        x_key = find_key(names, _strip(features), FEATURE_KEYS, "features dataset", self.path, True)
        y_key = find_key(names, _strip(label), LABEL_KEYS, "label dataset", self.path, False)
        X = f[x_key]
        if X.ndim != 2:
            raise DataError(f"{self.path}: features dataset {x_key!r} has shape {X.shape}; need 2-D (rows, features)")
        self._x_key, self._y_key = x_key, y_key
        self.n_rows = int(X.shape[0])
        if y_key is not None and f[y_key].shape[0] != self.n_rows:
            raise DataError(f"{self.path}: features have {self.n_rows} rows but label {y_key!r} has {f[y_key].shape[0]}")
        names_attr = X.attrs.get("feature_names")
        if names_attr is not None and len(names_attr) == X.shape[1]:
            self.feature_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_attr]
        else:
            self.feature_names = [f"f{j}" for j in range(X.shape[1])]
        self.label_name = y_key
        chunk_rows = X.chunks[0] if X.chunks else virtual_chunk_rows(X.shape[1], X.dtype.itemsize)
        self.bounds = uniform_bounds(self.n_rows, chunk_rows)
        self._compression = X.compression
        self._stored_dtype = str(X.dtype)
        self._label_dtype = None if y_key is None else str(f[y_key].dtype)
        self._check_layout()

    def _handle(self):
        import h5py
        import hdf5plugin  # noqa: F401  (registers Blosc/Zstd/LZ4 filters)

        if self._file is None or self._in_child_process():
            if not os.path.exists(self.path):
                raise DataError(f"{self.path}: no such file")
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise DataError(f"{self.path}: not a readable HDF5 file ({e})") from None
            self._pid = os.getpid()
        return self._file

    def _load_chunk(self, i: int):
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        f = self._handle()
        try:
            X = as_features(f[self._x_key][a:b], self.dtype, self.path)
            y = None if self._y_key is None else as_labels(f[self._y_key][a:b], self.path)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({e})") from None
        return X, y

    def label_dtype(self):
        return self._label_dtype

    def extra_info(self):
        return {"features_dataset": self._x_key, "stored_dtype": self._stored_dtype,
                "compression": self._compression}

    def close(self):
        super().close()
        if self._file is not None and not self._in_child_process():
            self._file.close()
        self._file = None


def _strip(key: str | None) -> str | None:
    return key.lstrip("/") if isinstance(key, str) else key
