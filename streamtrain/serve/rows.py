"""Rows from the wire: JSON or an Arrow IPC stream, checked against the stream's columns.

Every problem is a ``DataError`` naming where the rows came from (a request, a stream entry)
and what is wrong; nothing is coerced silently (a string where a number belongs, a missing or
an unknown column, NaN or infinity, a column that changed type are refused).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["Columns", "ARROW_TYPES"]

ARROW_TYPES = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file")


class Columns:
    """The stream's feature columns (in order) and its label column. ``features`` may be None
    until the first rows fix them (their columns, the label's aside, in the order given)."""

    def __init__(self, features: list[str] | None, label: str | None, dtype=np.float32):
        self.features = None if features is None else list(features)
        self.label, self.dtype = label, np.dtype(dtype)
        self._arrow_checked: dict[bool, tuple] = {}  # need_label -> (the schema last checked, all floating)

    # -- the two encodings -----------------------------------------------------------
    def parse(self, body: bytes, content_type: str | None, where: str, need_label: bool = True):
        """``(X, y)`` (y None without ``need_label``) from a body of either encoding."""
        kind = (content_type or "application/json").split(";")[0].strip().lower()
        if kind in ARROW_TYPES:
            return self.from_arrow(body, where, need_label)
        # curl -d sends its data as a form unless told otherwise: taken as JSON too
        if kind not in ("application/json", "text/json", "application/x-www-form-urlencoded", ""):
            raise DataError(f"{where}: content type {kind!r} is neither JSON nor an Arrow IPC stream "
                            f"({ARROW_TYPES[0]})")
        return self.from_json(body, where, need_label)

    def from_json(self, body: bytes | str, where: str, need_label: bool = True):
        """Rows as a JSON list of objects (``[{"f0": 1.5, ..., "y": 1}, ...]``) or ``{"rows": [...]}``."""
        try:
            data = json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise DataError(f"{where}: malformed JSON ({_short(e)})") from None
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{where}: expected a JSON list of row objects, or {{\"rows\": [...]}}")
        if not rows:
            raise DataError(f"{where}: no rows")
        names = self._check_names(list(rows[0]), where, need_label)
        feats = self.features
        keys = set(names)
        for i, r in enumerate(rows):
            if r.keys() != keys:
                raise DataError(f"{where}: row {i} has columns {sorted(r)}, row 0 has {sorted(keys)}")
        try:
            X = np.array([[r[k] for k in feats] for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            for i, r in enumerate(rows):
                for k in feats:
                    if not _is_number(r[k]):
                        raise DataError(f"{where}: row {i}, column {k!r}: {_short(r[k])} is not a number") from None
            raise
        self._check_finite(X, where)
        y = None
        if need_label:
            values = [r[self.label] for r in rows]
            if not all(_is_number(v) or isinstance(v, str) for v in values):
                bad = next(v for v in values if not (_is_number(v) or isinstance(v, str)))
                raise DataError(f"{where}: label {_short(bad)} is neither a number nor a string")
            if len({type(v) is str for v in values}) > 1:
                raise DataError(f"{where}: the label column mixes strings and numbers")
            y = np.asarray(values)
        return X.astype(self.dtype), y

    def warm_up(self) -> None:
        """Import what parsing Arrow needs now (pyarrow's numpy conversion pulls in pandas: about
        half a second), not while the first request waits."""
        import pyarrow as pa

        pa.chunked_array([[0.0]]).to_numpy()

    def from_arrow(self, body: bytes, where: str, need_label: bool = True):
        """Rows as an Arrow IPC stream (or file) of one record batch or more."""
        import pyarrow as pa

        try:
            reader = pa.ipc.open_stream(body)
            table = reader.read_all()
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            try:
                table = pa.ipc.open_file(pa.BufferReader(body)).read_all()
            except (pa.ArrowInvalid, pa.ArrowException, OSError):
                raise DataError(f"{where}: not an Arrow IPC stream ({_short(e)})") from None
        if table.num_rows == 0:
            raise DataError(f"{where}: no rows")
        schema = table.schema
        checked = self._arrow_checked.get(need_label)
        if checked is None or not schema.equals(checked[0]):
            # Names and types once per schema: a stream's entries almost always share one.
            checked = (schema, self._check_arrow_schema(schema, where, need_label))
            self._arrow_checked[need_label] = checked
        X = self._arrow_features(table, where, all_floating=checked[1])
        y = None
        if need_label:
            col = table.column(self.label)
            if col.null_count:
                raise DataError(f"{where}: label column {self.label!r} has {col.null_count} missing values")
            y = np.asarray(col.to_pylist() if pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                           else col.to_numpy())
        return X, y

    def _check_arrow_schema(self, schema, where: str, need_label: bool) -> bool:
        """Refuse an Arrow schema whose columns or types do not fit the stream; True where every
        feature column is floating point (then the features convert in one pass)."""
        import pyarrow as pa

        self._check_names(schema.names, where, need_label)
        types = [schema.field(k).type for k in self.features]
        for k, t in zip(self.features, types):
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise DataError(f"{where}: column {k!r} is {t}, not a number")
        if need_label:
            t = schema.field(self.label).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
                    or pa.types.is_large_string(t)):
                raise DataError(f"{where}: label column {self.label!r} is {t}")
        return all(pa.types.is_floating(t) for t in types)

    def _arrow_features(self, table, where: str, all_floating: bool) -> np.ndarray:
        """The feature columns of ``table`` as rows of ``dtype``, refused if any is missing,
        NaN, infinite or beyond float32's range."""
        import pyarrow as pa

        X = None
        if all_floating:
            try:  # one pass in Arrow's C++ (pyarrow >= 16); nulls become NaN, refused below
                X = np.asarray(table.select(self.features).to_tensor(null_to_nan=True, row_major=True))
            except (AttributeError, TypeError, pa.ArrowException):
                X = None
        if X is None:  # integer columns (int64 would not survive a common type with uint64), old pyarrow
            for k in self.features:
                col = table.column(k)
                if col.null_count:
                    raise DataError(f"{where}: column {k!r} has {col.null_count} missing values")
            X = np.column_stack([table.column(k).to_numpy() for k in self.features]).astype(np.float64, copy=False)
        with np.errstate(over="ignore"):
            Xd = X.astype(self.dtype, copy=False)
        fine = np.isfinite(Xd).all()
        if fine and self.dtype != np.float32:  # (in float32 a value beyond its range is inf by now)
            fine = np.abs(Xd).max(initial=0) <= np.finfo(np.float32).max
        if not fine:  # a null, NaN or infinity, or a value float32 cannot hold: say which
            for k in self.features:
                n = table.column(k).null_count
                if n:
                    raise DataError(f"{where}: column {k!r} has {n} missing values")
            self._check_finite(X.astype(np.float64), where)
        return np.ascontiguousarray(Xd)

    # -- checks ----------------------------------------------------------------------
    def _check_names(self, names: list[str], where: str, need_label: bool) -> list[str]:
        if len(set(names)) != len(names):
            raise DataError(f"{where}: repeated column names")
        label_there = self.label is not None and self.label in names
        if need_label and not label_there:
            raise DataError(f"{where}: no label column {self.label!r} (columns: {_names(names)})")
        given = [n for n in names if n != self.label]
        if self.features is None:  # the first rows fix the stream's columns
            if not given:
                raise DataError(f"{where}: no feature columns")
            self.features = given
            return names
        if set(given) != set(self.features):
            missing = [n for n in self.features if n not in given]
            extra = [n for n in given if n not in self.features]
            what = "; ".join(p for p in (f"missing {_names(missing)}" if missing else "",
                                         f"unknown {_names(extra)}" if extra else "") if p)
            raise DataError(f"{where}: the columns differ from the stream's ({what}; expected "
                            f"{_names(self.features)} and label {self.label!r})")
        return names

    def _check_finite(self, X: np.ndarray, where: str) -> None:
        if not np.isfinite(X).all():
            i, j = np.argwhere(~np.isfinite(X))[0]
            raise DataError(f"{where}: row {i}, column {self.features[j]!r} is {X[i, j]} (missing, NaN or infinite)")
        if np.abs(X).max(initial=0) > np.finfo(np.float32).max:
            raise DataError(f"{where}: a value is beyond float32's range")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (not isinstance(v, float) or math.isfinite(v))


def _names(names: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}]"


def _short(value: Any, most: int = 80) -> str:
    text = str(value) if isinstance(value, BaseException) else json.dumps(value) if not isinstance(value, str) \
        else repr(value)
    return text if len(text) <= most else text[:most] + "..."
