"""Columns of numpy-typed stores (HDF5 tables, Zarr arrays) as Arrow arrays, with the meaning
their writers gave them: bytes and variable-length strings as text, pandas' categorical codes
with their categories, timestamps (pandas' ``datetime64`` attributes, xarray's CF ``units``),
and a float's NaN as a missing value (how pandas and xarray store one). The column encoding
(``features/``) then treats them as it treats Parquet's columns."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["Spec", "to_arrow", "arrow_type", "cf_time", "is_plain"]

_ARROW_UNITS = ("s", "ms", "us", "ns")
_CF_UNITS = {"days": "D", "day": "D", "d": "D", "hours": "h", "hour": "h", "h": "h", "minutes": "m",
             "minute": "m", "min": "m", "seconds": "s", "second": "s", "s": "s", "milliseconds": "ms",
             "millisecond": "ms", "ms": "ms", "microseconds": "us", "microsecond": "us", "us": "us",
             "nanoseconds": "ns", "nanosecond": "ns", "ns": "ns"}
_CF_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")


@dataclass(frozen=True)
class Spec:
    """What a stored column means.

    ``kind``: "number" (integers, floats, bools: read as they are), "string" (bytes or text;
    ``nan_rep``: the text that stands for a missing value, as pandas writes it), "category"
    (integer codes into ``categories``; a negative code is missing) or "datetime" (integers
    counting ``unit`` since ``origin``, an ISO date; None: since 1970-01-01; ``tz``: the zone the
    writer kept, the values being UTC instants).
    """

    kind: str = "number"
    nan_rep: str | None = None
    categories: tuple[str, ...] | None = None
    unit: str | None = None
    origin: str | None = None
    tz: str | None = None  # (a timestamp's time zone, where the writer kept one: its instants are UTC)


def is_plain(spec: Spec, dtype: np.dtype) -> bool:
    """Whether the column is a plain number (read by a cast to float, without an encoding)."""
    return spec.kind == "number" and np.dtype(dtype).kind in "biuf"


def _arrow_unit(unit: str) -> str:
    """The Arrow timestamp unit that holds ``unit`` exactly (coarser units become seconds)."""
    return unit if unit in _ARROW_UNITS else "s"


def arrow_type(spec: Spec, dtype: np.dtype) -> pa.DataType:
    """The Arrow type of a column stored with numpy ``dtype`` and meaning ``spec``."""
    dtype = np.dtype(dtype)
    if spec.kind == "string":
        return pa.string()
    if spec.kind == "category":
        return pa.dictionary(pa.int32(), pa.string())
    if spec.kind == "datetime":
        return pa.timestamp(_arrow_unit(spec.unit or "ns"), tz=spec.tz)
    if dtype.kind == "M":
        return pa.timestamp(_arrow_unit(np.datetime_data(dtype)[0]))
    if dtype.kind in "biuf":
        return pa.from_numpy_dtype(dtype)
    if dtype.kind in "SUOT":
        return pa.string()
    return pa.binary()  # anything else is not a feature: the encoding names it and leaves it out


def _text(values: np.ndarray) -> list | np.ndarray:
    """Bytes (UTF-8, or Latin-1 where not UTF-8) or text as an array of str (None stays None)."""
    if values.dtype.kind == "S":
        try:
            return np.char.decode(values, "utf-8")
        except UnicodeDecodeError:
            return np.char.decode(values, "latin-1")
    if values.dtype.kind in "OT":  # objects (h5py's variable-length strings), numpy's StringDType
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else (v if v is None or isinstance(v, str) else None)
                for v in values.tolist()]
    return values


def to_arrow(values: np.ndarray, spec: Spec) -> pa.Array:
    """One stored column's values (1-D) as an Arrow array of :func:`arrow_type`'s type."""
    values = np.asarray(values)
    if spec.kind == "string" or (spec.kind == "number" and values.dtype.kind in "SUOT"):
        text = _text(values)
        out = pa.array(text, pa.string())
        if spec.nan_rep is not None:  # pandas writes a missing string as this text
            gone = pa.compute.equal(out, spec.nan_rep)
            out = pa.compute.if_else(gone, pa.scalar(None, pa.string()), out)
        return out
    if spec.kind == "category":
        codes = values.astype(np.int64)
        cats = pa.array(list(spec.categories or ()), pa.string())
        bad = (codes < 0) | (codes >= len(cats))
        return pa.DictionaryArray.from_arrays(pa.array(np.where(bad, 0, codes).astype(np.int32), mask=bad), cats)
    if spec.kind == "datetime" or values.dtype.kind == "M":
        unit = spec.unit or (np.datetime_data(values.dtype)[0] if values.dtype.kind == "M" else "ns")
        if values.dtype.kind == "M":
            stamps = values
        elif values.dtype.kind == "f":  # CF times may be stored as floats; NaN is missing
            gone = ~np.isfinite(values)
            stamps = np.where(gone, 0, values).astype(np.int64).astype(f"timedelta64[{unit}]")
            stamps = (np.datetime64(spec.origin or "1970-01-01") + stamps).astype("datetime64[ns]")
            stamps[gone] = np.datetime64("NaT")
        else:
            ints = values.astype(np.int64)
            stamps = np.datetime64(spec.origin) + ints.astype(f"timedelta64[{unit}]") \
                if spec.origin else ints.view(f"datetime64[{unit}]")
        target = _arrow_unit(unit)
        return pa.array(stamps.astype(f"datetime64[{target}]"), pa.timestamp(target, tz=spec.tz), from_pandas=True)
    if values.dtype.kind == "f":
        return pa.array(values, from_pandas=True)  # NaN: missing
    if values.dtype.kind in "biu":
        return pa.array(values)
    return pa.array([bytes(v) if v is not None else None for v in values.tolist()], pa.binary())


_CF = re.compile(r"^\s*(\w+)\s+since\s+(\d{1,4}-\d{1,2}-\d{1,2})(?:[ T](\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d+)?)?))?\s*"
                 r"(?:Z|UTC|[+-]0{1,2}:?0{0,2})?\s*$")


def cf_time(attrs) -> Spec | None:
    """The datetime spec of an array whose attributes hold CF ``units`` ("hours since 2024-01-01")
    with a Gregorian calendar (as xarray writes timestamps), else None."""
    units = attrs.get("units")
    if not isinstance(units, str):
        return None
    m = _CF.match(units)
    if not m or m.group(1).lower() not in _CF_UNITS:
        return None
    if str(attrs.get("calendar", "standard")).lower() not in _CF_CALENDARS:
        return None
    date = "-".join(p.zfill(2) if i else p.zfill(4) for i, p in enumerate(m.group(2).split("-")))
    clock = m.group(3)
    if clock:
        parts = clock.split(":")
        clock = ":".join(p.zfill(2) for p in parts[:2]) + (":" + parts[2].zfill(2) if len(parts) > 2 else "")
    origin = f"{date}T{clock}" if clock else date
    try:
        np.datetime64(origin)
    except ValueError:
        return None
    return Spec("datetime", unit=_CF_UNITS[m.group(1).lower()], origin=origin)
