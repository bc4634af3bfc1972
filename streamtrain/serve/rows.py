"""Rows from the wire: JSON or an Arrow IPC stream, checked against the stream's columns.

Every problem is a ``DataError`` naming where the rows came from (a request, a stream entry)
and what is wrong; nothing is coerced silently (a string or a boolean where a number belongs, a
missing or an unknown column, NaN or infinity, a number beyond float32's range, a column that
changed type are refused). JSON is read strictly as UTF-8. Whatever the bytes, parsing raises
nothing but ``DataError``: a body that breaks the parser in some unforeseen way is refused too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ..errors import DataError
from .ipc_size import decoded_size, is_file_format

try:  # the serve extra's JSON parser: about 3x the standard library's speed on rows of numbers
    import msgspec.json as _fast_json
except ImportError:  # pragma: no cover - the standard library alone reads the same documents
    _fast_json = None

__all__ = ["Columns", "ARROW_TYPES", "JSON_TYPES", "media_type", "json_body"]

ARROW_TYPES = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file")
# curl -d sends its data as a form unless told otherwise: taken as JSON too
JSON_TYPES = ("application/json", "text/json", "application/x-www-form-urlencoded")

# RFC 9110's media type: type "/" subtype *( OWS ";" OWS [ name "=" ( token / quoted-string ) ] )
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x20-\x7e\x80-\xff])*"'
_PARAM = rf"({_TOKEN})=({_TOKEN}|{_QUOTED})"
_MEDIA = re.compile(rf"({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*(?:{_PARAM})?)*)[ \t]*")
_INT64 = 1 << 63


def media_type(content_type: str | None, where: str) -> tuple[str, dict[str, str]]:
    """``(type/subtype in lower case, parameters)`` of a Content-Type header (None: JSON, the
    default); a malformed one raises ``DataError`` (its message says "content type")."""
    if content_type is None:
        return "application/json", {}
    m = _MEDIA.fullmatch(content_type)
    if m is None:
        raise DataError(f"{where}: malformed content type {_short(content_type)} (expected type/subtype, "
                        f"e.g. application/json or {ARROW_TYPES[0]})")
    params = {k.lower(): v[1:-1] if v.startswith('"') else v for k, v in re.findall(_PARAM, m.group(3))}
    return f"{m.group(1)}/{m.group(2)}".lower(), params


def json_body(body: bytes | str, where: str) -> Any:
    """A JSON document read strictly as UTF-8 (JSON's only encoding on the wire); any problem is a
    ``DataError`` naming ``where``."""
    if _fast_json is not None:
        try:
            return _fast_json.decode(body)
        except (ValueError, RecursionError, MemoryError):
            # msgspec refuses a few documents the standard library reads (lone surrogates, numbers
            # beyond float64's range, a byte-order mark): read or refused below, with their messages.
            pass
    if not isinstance(body, str):
        body = bytes(body)
        if b"\x00" in body:  # never in JSON text; all over UTF-16 and UTF-32
            raise DataError(f"{where}: the body is not UTF-8 (a NUL byte at offset {body.index(0)}: UTF-16 or "
                            "UTF-32?); JSON must be UTF-8")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: the body is not UTF-8 ({e.reason}: byte {body[e.start]:#04x} at offset "
                            f"{e.start}); JSON must be UTF-8") from None
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError, MemoryError) as e:
        raise DataError(f"{where}: malformed JSON ({_short(e)})") from None


class DecodesTooLarge(DataError):
    """A body whose rows decode to more than the bound (HTTP's 413)."""


# The default bound on an Arrow body's decoded rows (the service's --max-body-mb replaces it).
MAX_DECODED_BYTES = 16 << 20


class Columns:
    """The stream's feature columns (in order) and its label column. ``features`` may be None
    until the first rows fix them (their columns, the label's aside, in the order given)."""

    def __init__(self, features: list[str] | None, label: str | None, dtype=np.float32):
        self.features = None if features is None else list(features)
        self.label, self.dtype = label, np.dtype(dtype)
        self._arrow_checked: dict[bool, tuple] = {}  # need_label -> (the schema last checked, all floating)
        #: the most bytes an Arrow body's batches may decode to (a compressed body can be thousands
        #: of times smaller than its rows); the service sets its --max-body-mb
        self.max_decoded_bytes = MAX_DECODED_BYTES

    # -- the two encodings -----------------------------------------------------------
    def parse(self, body: bytes, content_type: str | None, where: str, need_label: bool = True):
        """``(X, y)`` (y None without ``need_label``) from a body of either encoding; ``content_type``
        None is JSON. A malformed or another content type, or JSON in a charset other than UTF-8,
        is a ``DataError`` whose message says "content type"."""
        kind, params = media_type(content_type, where)
        if kind in ARROW_TYPES:
            return self.from_arrow(body, where, need_label)
        if kind not in JSON_TYPES:
            raise DataError(f"{where}: content type {_short(kind)} is neither JSON nor an Arrow IPC stream "
                            f"({ARROW_TYPES[0]})")
        charset = params.get("charset")
        if charset is not None and charset.lower() not in ("utf-8", "utf8"):
            raise DataError(f"{where}: content type {_short(content_type)}: JSON is read as UTF-8 only, not "
                            f"{_short(charset)}")
        return self.from_json(body, where, need_label)

    def from_json(self, body: bytes | str, where: str, need_label: bool = True):
        """Rows as a JSON list of objects (``[{"f0": 1.5, ..., "y": 1}, ...]``) or ``{"rows": [...]}``,
        UTF-8 encoded."""
        try:
            return self._from_json(body, where, need_label)
        except DataError:
            raise
        except Exception as e:  # unforeseen: still the body's problem, said in one line
            raise DataError(f"{where}: cannot read these rows ({_short(e)})") from None

    def _from_json(self, body: bytes | str, where: str, need_label: bool):
        rows = self._json_rows(body, where, need_label)
        feats = self.features
        flat = [r[k] for r in rows for k in feats]
        if not set(map(type, flat)) <= {int, float}:  # (bool is not int here: true is refused)
            i, k, v = next((i, k, r[k]) for i, r in enumerate(rows) for k in feats if type(r[k]) not in (int, float))
            what = " is null" if v is None else f": {_short(v)} is {_json_type(v)}"
            raise DataError(f"{where}: row {i}, column {k!r}{what}, not a number")
        try:
            X = np.array(flat, dtype=np.float64).reshape(len(rows), len(feats))
        except OverflowError:  # an integer beyond float64's range
            i, k, v = next((i, k, r[k]) for i, r in enumerate(rows) for k in feats
                           if type(r[k]) is int and abs(r[k]) > 1e308)
            raise DataError(f"{where}: row {i}, column {k!r}: {_short(v)} is beyond float32's range") from None
        self._check_finite(X, where)
        return X.astype(self.dtype), self._json_labels(rows, where) if need_label else None

    def _json_rows(self, body: bytes | str, where: str, need_label: bool) -> list[dict]:
        """The row objects of a JSON body, each with the same columns: the stream's and its label."""
        data = json_body(body, where)
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{where}: expected a JSON list of row objects, or {{\"rows\": [...]}}")
        if not rows:
            raise DataError(f"{where}: no rows")
        keys = set(self._check_names(list(rows[0]), where, need_label))
        for i, r in enumerate(rows):
            if r.keys() != keys:
                raise DataError(f"{where}: row {i} has columns {sorted(r)}, row 0 has {sorted(keys)}")
        return rows

    def _json_labels(self, rows: list[dict], where: str) -> np.ndarray:
        """The label column's values: numbers (integers within 64 bits) or strings, not both."""
        label = self.label
        values = [r[label] for r in rows]
        kinds = set(map(type, values))
        if not kinds <= {int, float, str}:
            i, v = next((i, v) for i, v in enumerate(values) if type(v) not in (int, float, str))
            what = " is null" if v is None else f": {_short(v)} is {_json_type(v)}"
            raise DataError(f"{where}: row {i}, label {label!r}{what}, neither a number nor a string")
        if str in kinds and len(kinds) > 1:
            raise DataError(f"{where}: the label column mixes strings and numbers")
        if int in kinds:
            for i, v in enumerate(values):
                if type(v) is int and not -_INT64 <= v < _INT64:
                    raise DataError(f"{where}: row {i}, label {label!r}: {_short(v)} is beyond a 64-bit "
                                    "integer's range")
        return np.asarray(values)

    def warm_up(self) -> None:
        """Import what parsing Arrow needs now (pyarrow's numpy conversion pulls in pandas: about
        half a second), not while the first request waits."""
        import pyarrow as pa

        pa.chunked_array([[0.0]]).to_numpy()

    def from_arrow(self, body: bytes, where: str, need_label: bool = True):
        """Rows as an Arrow IPC stream (or file) of one record batch or more."""
        try:
            return self._from_arrow(body, where, need_label)
        except DataError:
            raise
        except UnicodeDecodeError as e:  # a column name (or a string label) that is not UTF-8
            raise DataError(f"{where}: a column name or string value is not UTF-8 ({e.reason}: byte "
                            f"{e.object[e.start]:#04x} at offset {e.start})") from None
        except Exception as e:  # unforeseen (an odd schema or type): still the body's problem
            raise DataError(f"{where}: cannot read these Arrow rows ({_short(e)})") from None

    def _from_arrow(self, body: bytes, where: str, need_label: bool):
        table = self._read_arrow(body, where, batch=True)  # (a RecordBatch or a Table: read alike below)
        schema = table.schema
        checked = self._arrow_checked.get(need_label)
        if checked is None or not schema.equals(checked[0]):
            # Names and types once per schema: a stream's entries almost always share one.
            checked = (schema, self._check_arrow_schema(schema, where, need_label))
            self._arrow_checked[need_label] = checked
        X = self._arrow_features(table, where, all_floating=checked[1])
        return X, self._arrow_labels(table, where) if need_label else None

    def _read_arrow(self, body: bytes, where: str, batch: bool = False):
        """The table of an Arrow IPC stream (or file) body, with a row or more (``batch``: a
        stream's only record batch as it is, where it has one: a third quicker to convert)."""
        import pyarrow as pa

        try:  # before anything is decoded: Arrow decodes a whole batch at once
            size = decoded_size(body)
        except ValueError as e:
            raise DataError(f"{where}: not an Arrow IPC stream ({e})") from None
        if size > self.max_decoded_bytes:
            raise DecodesTooLarge(f"{where}: the rows decode to {size} bytes, more than the {self.max_decoded_bytes} "
                            "allowed (--max-body-mb bounds a body as decoded too); send them in smaller bodies")
        try:  # the reader that decoded_size sized: the file format where the body starts with its magic
            if is_file_format(body):
                table = pa.ipc.open_file(pa.BufferReader(body)).read_all()
            else:
                reader = pa.ipc.open_stream(body)
                batches = list(reader)
                table = batches[0] if batch and len(batches) == 1 else pa.Table.from_batches(batches, reader.schema)
            # Arrow trusts a batch's lengths and offsets: a column declaring more rows than its buffer
            # holds would be read beyond the buffer by the conversions below (seen: a crash)
            table.validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise DataError(f"{where}: not an Arrow IPC stream ({_short(e)})") from None
        if table.num_rows == 0:
            raise DataError(f"{where}: no rows")
        return table

    def _arrow_labels(self, table, where: str) -> np.ndarray:
        import pyarrow as pa

        col = table.column(self.label)
        if col.null_count:
            raise DataError(f"{where}: label column {self.label!r} has {col.null_count} missing values")
        return np.asarray(col.to_pylist() if pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                          else col.to_numpy(zero_copy_only=False))

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
            X = np.column_stack([table.column(k).to_numpy(zero_copy_only=False)
                                 for k in self.features]).astype(np.float64, copy=False)
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


def _json_type(v: Any) -> str:
    """What a parsed JSON value is, in JSON's words."""
    return {str: "a string", bool: "a boolean", type(None): "a null", list: "an array", dict: "an object",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _names(names: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return f"[{shown}{', ...' if len(names) > most else ''}]"


def _short(value: Any, most: int = 80) -> str:
    """A value (or an exception: its type and message) in one line of at most about ``most`` characters."""
    if isinstance(value, BaseException):
        text = f"{type(value).__name__}: {value}" if not isinstance(value, (ValueError, DataError)) else str(value)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        text = f"an integer of about {int(value.bit_length() * 0.30103)} digits"  # (str() refuses > 4300 digits)
    elif isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            text = type(value).__name__
    text = " ".join(text.split())
    return text if len(text) <= most else text[:most] + "..."
