"""Rows of a table's own values for a model trained on a table that was encoded (strings,
categories, dates, missing values): the service reads them as training read its file."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from .rows import Columns, _json_type, _short

__all__ = ["RawColumns"]


class RawColumns(Columns):
    """The raw columns of a model's ``encoding`` (``features.encoding.Encoding``): JSON and Arrow
    rows carry the table's own values, missing ones included, and are encoded as training's were.
    A category training did not see goes to its bucket (``col=<other>``), never an error; a
    column of the wrong kind (a word where training had numbers) is refused by name."""

    def __init__(self, encoding, label: str | None, dtype=np.float32):
        super().__init__(list(encoding.inputs), label, dtype)
        self.encoding = encoding

    def _from_json(self, body: bytes | str, where: str, need_label: bool):
        import pyarrow as pa

        rows = self._json_rows(body, where, need_label)
        table = pa.table({c.name: _array(c, [r[c.name] for r in rows], where) for c in self.encoding.columns
                          if c.name in self.features})  # (a cross reads two of these)
        return self._encode(table, where), self._json_labels(rows, where) if need_label else None

    def _from_arrow(self, body: bytes, where: str, need_label: bool):
        table = self._read_arrow(body, where)
        self._check_names(table.schema.names, where, need_label)
        X = self._encode(table.select(self.features), where)
        return X, self._arrow_labels(table, where) if need_label else None

    def _encode(self, table, where: str) -> np.ndarray:
        X = self.encoding.transform(table, self.dtype, where)
        if not np.isfinite(X).all():
            i, j = np.argwhere(~np.isfinite(X))[0]
            raise DataError(f"{where}: row {i}, input {self.encoding.feature_names[j]!r} is {X[i, j]} "
                            "(a value beyond float32's range)")
        return X


def _array(column, values: list[Any], where: str):
    """The Arrow array of one column's JSON values, of the type its encoder reads."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.kind
    try:
        if kind == "numeric":
            bad = next((v for v in values if v is not None and type(v) not in (int, float, bool)), None)
            if bad is not None:
                raise DataError(f"{where}: column {column.name!r}: {_short(bad)} is {_json_type(bad)}, not a number")
            return pa.array([None if v is None else float(v) for v in values], pa.float64())
        if kind == "datetime":  # ISO 8601 text, with or without a zone
            text = pa.array(values, pa.string())
            try:
                return pc.cast(text, pa.timestamp("us"))
            except pa.ArrowInvalid:
                return pc.cast(text, pa.timestamp("us", "UTC"))
        arr = pa.array(values)
        if kind == "categorical" and arr.type != column.cats.values.type:
            arr = pc.cast(arr, column.cats.values.type)  # (1 for a vocabulary of "1", "2": its text)
        return arr
    except DataError:
        raise
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{where}: column {column.name!r}: cannot read its values as training's ({_short(e)})") from None
