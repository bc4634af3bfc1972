"""Parquet reader: one column per feature plus a label column; row groups are the chunks."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES, Dataset, as_labels, select_columns

__all__ = ["ParquetDataset"]


def _is_numeric(arrow_type) -> bool:
    import pyarrow.types as pat

    return pat.is_integer(arrow_type) or pat.is_floating(arrow_type) or pat.is_boolean(arrow_type)


class ParquetDataset(Dataset):
    """Rows of a Parquet file; only the selected columns of each row group are read."""

    format = "parquet"

    def __init__(self, path: str, features: list[str] | str | None = None, label: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32):
        import pyarrow.parquet as pq

        super().__init__(cache_bytes, dtype)
        self.path = str(path)
        if not os.path.exists(self.path):
            raise DataError(f"{self.path}: no such file")
        self._file = None
        try:
            meta = pq.read_metadata(self.path)
            schema = pq.read_schema(self.path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a bad footer
            raise DataError(f"{self.path}: not a readable Parquet file ({e})") from None
        all_columns = list(schema.names)
        numeric = [f.name for f in schema if _is_numeric(f.type)]
        self.feature_names, self.label_name = select_columns(numeric, all_columns, features, label, self.path)
        if self.label_name is not None and self.label_name not in numeric:
            raise DataError(f"{self.path}: label column {self.label_name!r} is not numeric")
        self._label_type = None if self.label_name is None else str(schema.field(self.label_name).type)
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.n_rows = int(meta.num_rows)
        self._compression = meta.row_group(0).column(0).compression if meta.num_row_groups else None
        self._check_layout()

    def _handle(self):
        import pyarrow.parquet as pq

        if self._file is None or self._in_child_process():
            self._file = pq.ParquetFile(self.path, memory_map=False)
            self._pid = os.getpid()
        return self._file

    def _load_chunk(self, i: int):
        columns = self.feature_names + ([self.label_name] if self.label_name else [])
        try:
            table = self._handle().read_row_group(i, columns=columns)
        except Exception as e:
            raise DataError(f"{self.path}: cannot read row group {i} ({e})") from None
        X = np.empty((table.num_rows, self.n_features), dtype=self.dtype)
        for j, name in enumerate(self.feature_names):
            # Filling a preallocated array column by column avoids a second copy.
            X[:, j] = table.column(name).to_numpy()
        y = None
        if self.label_name:
            y = as_labels(table.column(self.label_name).to_numpy(), self.path)
        return X, y

    def label_dtype(self):
        return self._label_type

    def extra_info(self):
        return {"compression": self._compression}

    def close(self):
        super().close()
        if self._file is not None and not self._in_child_process():
            self._file.close()
        self._file = None
