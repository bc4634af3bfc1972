"""In-memory arrays behind the same Dataset interface (for library users and tests)."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES, Capabilities, Dataset
from .layout import as_features, as_labels, uniform_bounds, virtual_chunk_rows

__all__ = ["ArrayDataset", "as_arrow", "table_to_encode", "with_label", "LABEL"]


class ArrayDataset(Dataset):
    """A Dataset over numpy arrays ``X`` (rows, features) and optional ``y`` (rows,)."""

    format = "memory"
    capabilities = Capabilities(in_place=True, in_memory=True, decodes_chunks=False)

    def __init__(self, X: npt.ArrayLike, y: npt.ArrayLike | None = None, *, chunk_rows: int | None = None,
                 feature_names: list[str] | None = None, label_name: str | None = "y",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32):
        super().__init__(cache_bytes, dtype)
        self.path = "<memory>"
        self._X = as_features(X, self.dtype, self.path)
        self._y = as_labels(None if y is None else np.asarray(y), self.path)
        self.n_rows = self._X.shape[0]
        if self._y is not None and self._y.shape[0] != self.n_rows:
            raise DataError(f"{self.path}: X has {self.n_rows} rows but y has {self._y.shape[0]}")
        self.feature_names = list(feature_names) if feature_names else [f"f{j}" for j in range(self._X.shape[1])]
        self.label_name = label_name if self._y is not None else None
        rows = chunk_rows or virtual_chunk_rows(self._X.shape[1], self._X.dtype.itemsize)
        self.bounds = uniform_bounds(self.n_rows, rows)
        self._check_layout()

    @classmethod
    def from_table(cls, table, features=None, label=None, encoding: dict | None = None, encode: dict | None = None,
                   **kwargs) -> "ArrayDataset":
        """From a pandas / polars DataFrame or an Arrow table: columns selected as for Parquet, and
        encoded as Parquet's are where they hold strings, categories, timestamps or missing values
        (``encoding``: a model's; ``encode``: options to learn one)."""
        from .columns import Column, left_out, select_columns
        from .tabular import plan_table

        arrow = as_arrow(table)
        if arrow is not None:
            enc = plan_table(arrow.schema, features, label, "<table>", lambda keys: [arrow.select(keys)],
                             lambda name: arrow.column(name).null_count, encoding=encoding, encode=encode)
            if enc is not None:
                X = enc.transform(arrow, kwargs.get("dtype", np.float32), "<table>")
                has_label = label is not False and enc.label_name in arrow.column_names
                y = as_labels(enc.labels(arrow.column(enc.label_name), "<table>"), "<table>") if has_label else None
                ds = cls(X, y, feature_names=enc.feature_names, label_name=enc.label_name if has_label else None,
                         **kwargs)
                ds.encoding, ds.left_out = enc, list(enc.left_out)
                return ds
        if hasattr(table, "to_pandas") and not hasattr(table, "iloc"):  # Arrow
            get = lambda name: table.column(name).to_numpy()  # noqa: E731
        else:
            get = lambda name: table[name].to_numpy()  # noqa: E731
        names = [str(c) for c in table.columns] if hasattr(table, "iloc") else list(table.column_names)
        dtypes = {n: np.asarray(get(n)[:0]).dtype for n in names}
        columns = [Column(n, n, None, dtypes[n].kind in "biuf", type=str(dtypes[n])) for n in names]
        feats, lab = select_columns(columns, features, label, "<table>")
        unused = left_out(columns, feats, lab) if features is None else []
        X = np.column_stack([np.asarray(get(c.key), dtype=np.float64) for c in feats])
        y = None if lab is None else np.asarray(get(lab.key))
        ds = cls(X, y, feature_names=[c.name for c in feats], label_name=lab.name if lab else None, **kwargs)
        ds.left_out = unused
        return ds

    def _load_chunk(self, i: int):
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        return self._X[a:b], None if self._y is None else self._y[a:b]

    def _load_labels(self, i: int):
        return None if self._y is None else self._y[int(self.bounds[i]):int(self.bounds[i + 1])]

    def view(self, a: int, b: int):
        """``(X, y)`` of rows ``a:b`` as views, no copy (None where NaN/Inf rows are skipped there)."""
        first, last = np.searchsorted(self.bounds, [a, b - 1], side="right") - 1
        for c in range(int(first), int(last) + 1):
            if self.load_chunk(c)[2] is not None:  # (screened once: cheap after the first time)
                return None
        return self._X[a:b], None if self._y is None else self._y[a:b]

    def _read_rows(self, rows):
        # Any order, no sort: np.take copies whole rows (measured 2x faster than fancy indexing).
        y = None if self._y is None else np.take(self._y, rows, axis=0)
        return np.take(self._X, rows, axis=0), y, self._screened(rows)

    def label_dtype(self):
        return None if self._y is None else str(self._y.dtype)


def as_arrow(table):
    """An Arrow table of a pandas or polars DataFrame (its index left out) or Arrow table; None
    where it cannot be converted (the column-by-column path then says what is wrong)."""
    import pyarrow as pa

    try:
        if isinstance(table, pa.Table):
            return table
        if hasattr(table, "iloc"):  # pandas
            return pa.Table.from_pandas(table, preserve_index=False)
        if hasattr(table, "to_arrow"):  # polars
            return table.to_arrow()
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return None


LABEL = "__streamtrain_label__"  # the label column a table with a separate y gets


def table_to_encode(X):
    """An Arrow table of a data frame (pandas, polars, Arrow) that holds what arrays cannot
    (strings, categories, dates, missing values), else None (arrays take the usual path)."""
    if isinstance(X, (str, os.PathLike)) or isinstance(X, np.ndarray) or not hasattr(X, "columns"):
        return None
    import pyarrow as pa

    table = as_arrow(X)
    if table is None:
        return None
    plain = all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) for t in table.schema.types)
    return None if plain and not any(c.null_count for c in table.columns) else table


def with_label(table, y, sample_weight):
    """``table`` with ``y`` (array-like of shape (rows,)) as its column ``LABEL``: an estimator's
    ``fit(X, y)`` on a data frame that needs encoding (sample weights: not yet)."""
    if y is None or sample_weight is not None:
        raise ValueError("a data frame of strings, categories, dates or missing values needs y" if y is None else
                         "sample_weight with a data frame that needs encoding is not supported yet; give arrays")
    if LABEL in table.column_names:
        raise ValueError(f"X has a column named {LABEL!r}")
    import pyarrow as pa

    y = y.to_numpy() if hasattr(y, "to_numpy") else np.asarray(y)
    if len(y) != table.num_rows:
        raise ValueError(f"X has {table.num_rows} rows, y {len(y)}")
    return table.append_column(LABEL, pa.array(y.astype(object) if y.dtype.kind in "OUS" else y))
