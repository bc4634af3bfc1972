"""What to do with each column of a table, from its Arrow type alone (Keras FeatureSpace's "a
type name per column", decided for the user and overridable).

Kinds:

* ``numeric``: integers of every width, floats, decimals (as float64), bools (0/1), and
  fixed-size lists of those (one feature per element, as the Parquet reader reads them);
* ``categorical``: dictionary columns, and strings until the statistics pass (below);
  integers when overridden;
* ``hashed``: by override, or chosen for a string by :func:`choose_string_kind`;
* ``datetime``: timestamps of any unit and time zone, date32/date64 (seconds since the epoch),
  times of day (seconds since midnight) and durations (seconds);
* ``unusable``: lists, structs, maps, binary, the null type..., with the reason.

A string column's plan is provisional (``by_cardinality``): the statistics pass counts its
distinct values and :func:`choose_string_kind` keeps it categorical, hashes it, or drops it as an
identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa

from ..errors import ConfigError, nearest

__all__ = ["ColumnPlan", "StringChoice", "infer_columns", "choose_string_kind", "identifier_like", "option_value",
           "KINDS", "OVERRIDES", "DROPPED"]

#: Why a column the user dropped is left out (not warned about: it was asked for).
DROPPED = "dropped on purpose (--drop; the library's drop=)"

KINDS = ("numeric", "categorical", "hashed", "datetime", "unusable")
OVERRIDES = ("categorical", "numeric", "hash", "drop")
_T = pa.types


@dataclass(frozen=True)
class ColumnPlan:
    """One column's kind and why. ``buckets``: a hashed column's bucket count when overridden;
    ``by_cardinality``: True for a string the statistics pass still decides on."""

    name: str
    arrow_type: pa.DataType
    kind: str
    reason: str
    buckets: int | None = None
    by_cardinality: bool = False


def type_text(t: pa.DataType) -> str:
    """An Arrow type as messages name it: a dictionary (pandas' category, polars' Categorical, a
    dictionary-encoded Parquet column) as "dictionary of" its values' type, not Arrow's
    ``dictionary<values=..., indices=..., ordered=...>``."""
    if _T.is_dictionary(t):
        return f"dictionary of {type_text(t.value_type)}" + (", ordered" if t.ordered else "")
    return str(t)


def is_text(t: pa.DataType) -> bool:
    """Whether values of type ``t`` (a dictionary's values) are text."""
    t = t.value_type if _T.is_dictionary(t) else t
    return _T.is_string(t) or _T.is_large_string(t) or _T.is_string_view(t)


def _is_number(t: pa.DataType) -> bool:
    return _T.is_integer(t) or _T.is_floating(t) or _T.is_decimal(t) or _T.is_boolean(t)


def _classify(t: pa.DataType) -> tuple[str, str, bool]:
    """(kind, reason, by_cardinality) of an Arrow type."""
    if _T.is_boolean(t):
        return "numeric", "bool: numeric, 0 or 1", False
    if _T.is_integer(t) or _T.is_floating(t):
        return "numeric", f"{t}: numeric", False
    if _T.is_decimal(t):
        return "numeric", f"{t}: numeric, as float64", False
    if _T.is_dictionary(t):
        if is_text(t.value_type) or _T.is_integer(t.value_type) or _T.is_boolean(t.value_type):
            return "categorical", f"{type_text(t)}: categorical", False
        kind, reason, _ = _classify(t.value_type)
        return kind, f"dictionary of {reason}", False
    if is_text(t):
        return "categorical", f"{t}: categorical or hashed by cardinality after the statistics pass", True
    if _T.is_timestamp(t) or _T.is_date(t):
        return "datetime", f"{t}: datetime, as seconds since the epoch", False
    if _T.is_time(t):
        return "datetime", f"{t}: time of day, as seconds since midnight", False
    if _T.is_duration(t):
        return "datetime", f"{t}: duration, as seconds", False
    if _T.is_fixed_size_list(t) and _is_number(t.value_type) and not _T.is_decimal(t.value_type):
        return "numeric", f"{t}: {t.list_size} numeric features, one per element", False
    if _T.is_null(t):
        return "unusable", "null: every value is missing", False
    if _T.is_list(t) or _T.is_large_list(t) or _T.is_fixed_size_list(t) or _T.is_list_view(t) \
            or _T.is_large_list_view(t):
        return "unusable", f"{t}: a list per row (explode it, or pick an element into a column)", False
    if _T.is_struct(t):
        return "unusable", f"{t}: a struct (flatten it into columns)", False
    if _T.is_map(t):
        return "unusable", f"{t}: a map per row", False
    if _T.is_fixed_size_binary(t) and t.byte_width == 12:  # (how Arrow reads a Parquet INTERVAL)
        return "unusable", (f"{t}: raw bytes, or an INTERVAL as DuckDB and Spark write one (months, days and "
                            "milliseconds, which no single number measures): write it as a number of seconds "
                            "(DuckDB: epoch(x)), or as text to use it as categories"), False
    if _T.is_binary(t) or _T.is_large_binary(t) or _T.is_fixed_size_binary(t) or _T.is_binary_view(t):
        return "unusable", f"{t}: raw bytes (cast them to string to use them as categories)", False
    return "unusable", f"{t}: no encoding for this type", False


def _check_overrides(overrides: dict, names: list[str]) -> dict[str, tuple[str, int | None]]:
    """column -> (override, buckets), each column named once and known."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides is a dict with keys {', '.join(OVERRIDES)}, not {type(overrides).__name__}")
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ConfigError(f"overrides: unknown key {sorted(unknown)[0]!r} (the keys are {', '.join(OVERRIDES)})")
    out: dict[str, tuple[str, int | None]] = {}
    for key in OVERRIDES:
        cols = overrides.get(key) or ([] if key != "hash" else {})
        if key == "hash" and not isinstance(cols, dict):
            raise ConfigError("overrides: hash is a dict {column: buckets}")
        if key != "hash" and (isinstance(cols, (str, dict)) or not hasattr(cols, "__iter__")):
            raise ConfigError(f"overrides: {key} is a list of column names")
        for col in cols:
            if col not in names:
                comma = next((n for n in names if "," in n and str(col) in (p.strip() for p in n.split(","))), None)
                if comma is not None:  # (the option's commas split it: names are quoted as in a CSV row)
                    raise ConfigError(f"--{key} names no column {col!r}; column {comma!r} holds a comma: write it "
                                      f"in double quotes, --{key} {option_value(comma)}")
                near = nearest(col, names)
                raise ConfigError(f"--{key} names no column {col!r}"
                                  + (f" (did you mean {near!r}?" if near else f" (columns: {', '.join(names)}")
                                  + ")")
            if col in out:
                raise ConfigError(f"--{out[col][0]} and --{key} both name column {col!r}: give it to one of them")
            buckets = cols[col] if key == "hash" else None
            if key == "hash" and (isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1):
                raise ConfigError(f"overrides: hash buckets of {col!r} must be a positive integer, not {buckets!r}")
            out[col] = (key, buckets)
    return out


def _override(name: str, t: pa.DataType, key: str, buckets: int | None) -> ColumnPlan:
    if key == "drop":
        return ColumnPlan(name, t, "unusable", DROPPED)
    value_type = t.value_type if _T.is_dictionary(t) else t
    if key == "numeric":
        if _is_number(value_type):
            return ColumnPlan(name, t, "numeric", f"{t}: numeric, as --numeric asks")
        if is_text(value_type):  # (a CSV's numbers with a "?" or "N/A" among them: read as text)
            return ColumnPlan(name, t, "numeric", f"{t}: numbers written as text, as --numeric asks (a value "
                                                  "that is not one, missing)")
        raise ConfigError(f"--numeric {name}: column {name!r} is of type {t}, not numbers or text "
                          "(--categorical or --hash take other values)")
    if is_text(value_type) or _T.is_integer(value_type) or _T.is_boolean(value_type):
        if key == "categorical":
            return ColumnPlan(name, t, "categorical", f"{t}: categorical, as --categorical asks")
        return ColumnPlan(name, t, "hashed", f"{t}: hashed into {buckets} buckets, as --hash asks", buckets)
    raise ConfigError(f"--{key} {name}: column {name!r} is of type {t}, which cannot be "
                      f"{key if key != 'hash' else 'hashed'} (strings, integers and bools can)")


def infer_columns(schema: pa.Schema, overrides: dict | None = None) -> list[ColumnPlan]:
    """A plan for each column of a schema, in the schema's order.

    Parameters
    ----------
    schema : pyarrow.Schema
        Its top-level fields (a Parquet file's ``pyarrow.parquet.read_schema(path)``).
    overrides : dict, optional
        ``{"categorical": [col, ...], "numeric": [...], "hash": {col: buckets}, "drop": [...]}``;
        a ConfigError names an unknown column or an impossible override.

    Returns
    -------
    list of ColumnPlan, one per field.

    Examples
    --------
    >>> import pyarrow as pa
    >>> s = pa.schema({"age": pa.int8(), "city": pa.string(), "zip": pa.int32(), "tags": pa.list_(pa.string())})
    >>> [(p.name, p.kind) for p in infer_columns(s, {"categorical": ["zip"]})]
    [('age', 'numeric'), ('city', 'categorical'), ('zip', 'categorical'), ('tags', 'unusable')]
    """
    names = list(schema.names)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"the schema names column {dup!r} twice")
    chosen = _check_overrides(overrides, names) if overrides is not None else {}
    plans = []
    for field in schema:
        if field.name in chosen:
            plans.append(_override(field.name, field.type, *chosen[field.name]))
        elif _UNNAMED.fullmatch(field.name):  # (a row number as an input would be noise, or worse, a leak)
            plans.append(ColumnPlan(field.name, field.type, "unusable",
                                    f"{field.type}: unnamed in its file's header (pandas' to_csv writes its index so); "
                                    f"--numeric {option_value(field.name)} uses it"))
        else:
            kind, reason, by_cardinality = _classify(field.type)
            plans.append(ColumnPlan(field.name, field.type, kind, reason, by_cardinality=by_cardinality))
    return plans


#: A column a header left unnamed, as pandas (and the CSV reader here) name it.
_UNNAMED = re.compile(r"Unnamed: \d+")
# A name that says "identifier": id alone or at the end after a separator (customer_id, order-id,
# "user id"), or CamelCase's (CustomerID, userId); not a word that ends so (paid, VALID).
_ID_SEPARATE, _ID_CAMEL = re.compile(r"(?:^|[_\W])id$", re.IGNORECASE), re.compile(r"(?:^|[a-z])I[dD]$")


def option_value(name: str) -> str:
    """A column's name as a column option's value on a shell's command line: in double quotes
    where it holds a comma (as in a CSV row), then in the shell's single quotes."""
    import shlex

    quoted = shlex.quote('"' + name.replace('"', '""') + '"' if "," in name else name)
    return quoted if quoted.startswith("'") else f"'{quoted}'"


def identifier_like(name: str, values) -> str | None:
    """Why a column of whole numbers looks like an identifier (a key or a row number, which no
    model learns from as a number), from its first ``values`` (at least 100, none missing): every
    one distinct, and increasing or the column named as an id. None where it does not.

    Examples
    --------
    >>> identifier_like("customer_id", [7, 3, 99, 12] * 25) is None  # (repeated values)
    True
    >>> identifier_like("row", list(range(1000, 1200)))
    'its first 200 values are all distinct and increasing'
    """
    import numpy as np

    v = np.asarray(values)
    if v.size < 100 or np.unique(v).size < v.size:
        return None
    if (v[1:] > v[:-1]).all():  # (not np.diff: unsigned differences wrap around)
        return f"its first {v.size:,} values are all distinct and increasing"
    if _ID_SEPARATE.search(name) or _ID_CAMEL.search(name):
        return f"its first {v.size:,} values are all distinct, and its name says id"
    return None


class StringChoice(NamedTuple):
    """What :func:`choose_string_kind` decided: a kind ("categorical", "hashed", "unusable") and why."""

    kind: str
    reason: str


def choose_string_kind(distinct_estimate: int, rows: int, max_categories: int,
                       id_fraction: float = 0.9) -> StringChoice:
    """Categorical, hashed, or dropped as an identifier, from a string column's cardinality.

    Parameters
    ----------
    distinct_estimate : int
        Distinct non-null values (exact, or an estimate).
    rows : int
        Non-null values counted.
    max_categories : int
        The largest vocabulary kept as categories.
    id_fraction : float
        Above ``max_categories``, a column with at least this fraction of its rows distinct is an
        identifier (a key, a free-text field): neither a vocabulary nor hashing can generalise
        from it, so it is dropped.

    Examples
    --------
    >>> choose_string_kind(12, 10_000, 1000).kind
    'categorical'
    >>> choose_string_kind(50_000, 1_000_000, 1000).kind
    'hashed'
    >>> choose_string_kind(999_000, 1_000_000, 1000).kind
    'unusable'
    """
    for name, x in (("distinct_estimate", distinct_estimate), ("rows", rows), ("max_categories", max_categories)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ConfigError(f"{name} is a non-negative integer, not {x!r}")
    if not 0 < id_fraction <= 1:
        raise ConfigError(f"id_fraction lies in (0, 1], not {id_fraction!r}")
    distinct = min(distinct_estimate, rows)  # an estimate may overshoot
    if distinct <= max_categories:
        return StringChoice("categorical", f"{distinct:,} distinct values <= {max_categories:,}: categorical")
    if distinct >= id_fraction * rows:
        return StringChoice("unusable", f"{distinct:,} distinct values in {rows:,} rows: an identifier, dropped "
                                        "(--hash with its name hashes it; the library's hash=)")
    return StringChoice("hashed", f"{distinct:,} distinct values > {max_categories:,}: hashed")
