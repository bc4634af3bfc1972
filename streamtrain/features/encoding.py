"""A table's raw columns in, the network's float inputs out (and its label, as class indices):
learned in one pass over the data, kept as JSON in the checkpoint, applied per chunk with Arrow's
kernels (Keras ``FeatureSpace``'s ``adapt`` and call; scikit-learn's ``ColumnTransformer``).

Each column becomes a block of inputs:

* numeric (every integer and float width, decimal, bool): its value; a missing value becomes
  the column's mean, and a column that had missing values in the pass gets an indicator input
  (``col:missing``, 1 where the value was missing), as scikit-learn's ``SimpleImputer(add_indicator=True)``;
* datetime (timestamps of any unit and zone, dates, times of day, durations): seconds, centred
  on the pass's mean (float32 holds offsets, not 1.7e9-second epochs), imputed as numbers are;
* categorical: one input per code of its :class:`~.codes.Categories` (missing, out of
  vocabulary, then the vocabulary most frequent first), one-hot;
* hashed: one input for missing and one per hash bucket, one-hot;
* a fixed-size list of numbers: one input per element.

Columns nothing can use (lists, structs, binary, identifiers) are left out, each with its reason.
A string column is categorical while it has at most ``max_categories`` distinct values (counted
exactly, or estimated by :class:`~.distinct.DistinctCount` beyond the vocabulary's capacity),
hashed above that, dropped where nearly every row is distinct (an identifier).

The encoding is learned by ``learn.learn_encoding``. A string or dictionary label is a class label: its classes are its distinct values,
sorted, and :meth:`Encoding.labels` gives each row's class index (NaN where missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .codes import Categories
from .hashing import bucket, fmix64, hash64, null_mask
from .kinds import MAX_VALUES, canonical, check_header, kind_of, values_from_json, values_to_json
from .schema import is_text, type_text

__all__ = ["Encoding", "EncodingOptions", "MAX_LABEL_CLASSES"]

_FORMAT, _VERSION = "streamtrain.encoding", 1
_T = pa.types
#: A class label with more distinct values than this is refused (a regression target, or an ID).
MAX_LABEL_CLASSES = 1000
#: Input names are the column's name and a value, cut to this many characters.
MAX_VALUE_CHARS = 60
MAX_COLUMNS = 100_000
#: The most bits of one hashed table shared by every column (``--hash-bits``; Vowpal Wabbit's ``-b`` goes to 32).
MAX_HASH_BITS = 28
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class EncodingOptions:
    """How columns are encoded.

    Parameters
    ----------
    max_categories : int
        The largest vocabulary a column keeps (``--max-categories``); a string column with more
        distinct values is hashed.
    min_frequency : int
        Values seen fewer times go to the out-of-vocabulary code (``--min-frequency``).
    hash_buckets : int
        Buckets of a hashed column (``--hash COL:BUCKETS`` overrides per column).
    missing : {"impute", "error"}
        A missing feature value is imputed, or is an error naming the file and column.
    overrides : dict, optional
        ``{"categorical": [...], "numeric": [...], "hash": {col: buckets}, "drop": [...]}``.
    classes : list of str, optional
        A class label's classes, in their order (``--classes``); a value outside them is an error.
    date_parts : dict, optional
        ``{column: [part, ...]}``: timestamp columns that also enter by their parts (``hour``,
        ``weekday``, ``month``; in the column's time zone), one-hot (``--date-parts``).
    crosses : list of (str, str), optional
        Pairs of categorical columns whose pair of values is one more categorical input, hashed
        into ``hash_buckets`` (``--cross a:b``).
    hash_bits : int, optional
        Every categorical and string column (and cross) hashed, each with its own salt, into one
        table of ``2**hash_bits`` rows shared by all of them (Vowpal Wabbit's ``-b``;
        ``--hash-bits``), entering as codes; None: a table per column.
    one_hot_max : int
        A categorical or hashed column of more values is read as one input, its code, which
        selects a row of the first layer's weights (a gather; ``--one-hot-max``), not as a
        one-hot input per value; the same model either way, without the one-hot matrix.
    """

    max_categories: int = 100
    min_frequency: int = 1
    hash_buckets: int = 64
    missing: str = "impute"
    overrides: dict = field(default_factory=dict)
    classes: list | None = None
    one_hot_max: int = 1024
    date_parts: dict = field(default_factory=dict)
    crosses: list = field(default_factory=list)
    hash_bits: int | None = None

    def __post_init__(self):
        if self.hash_bits is not None and (isinstance(self.hash_bits, bool) or not isinstance(self.hash_bits, int)
                                           or not 1 <= self.hash_bits <= MAX_HASH_BITS):
            raise ConfigError(f"hash_bits is an integer in [1, {MAX_HASH_BITS}], not {self.hash_bits!r}")
        if not isinstance(self.crosses, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) and p[0] != p[1]
                for p in self.crosses):
            raise ConfigError("crosses is a list of pairs of distinct column names")
        if not isinstance(self.date_parts, dict) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and v and all(p in DATE_PARTS for p in v)
                for k, v in self.date_parts.items()):
            raise ConfigError(f"date_parts is {{column: [part, ...]}}, parts of {', '.join(DATE_PARTS)}")
        for name, lo, hi in (("max_categories", 1, MAX_VALUES), ("min_frequency", 1, 2**62),
                             ("hash_buckets", 1, 1 << 20), ("one_hot_max", 0, MAX_VALUES + 64)):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
                raise ConfigError(f"{name} is an integer in [{lo}, {hi}], not {x!r}")
        if self.missing not in ("impute", "error"):
            raise ConfigError(f"missing is 'impute' or 'error', not {self.missing!r}")


def _numbers(arr, percent: bool = True) -> np.ndarray:
    """float64 values of a numeric, bool, decimal or temporal column (seconds), NaN where missing
    (text: as ``_parsed`` reads it; ``percent=False``: "48.2%" is no number, as models before it took it)."""
    t = arr.type
    if _T.is_dictionary(t):
        arr, t = pc.cast(arr, t.value_type), t.value_type
    if _T.is_timestamp(t) or _T.is_duration(t) or _T.is_time(t):
        scale = _UNIT[t.unit]
        # (safe=False: nanoseconds since 1970 are past 2**53, beyond float64's exact integers; the
        # rounding is below a microsecond, and the seconds are what the input is)
        arr = pc.cast(pc.cast(arr, pa.int64() if t.bit_width == 64 else pa.int32()), pa.float64(), safe=False)
        return arr.to_numpy(zero_copy_only=False) * scale
    if _T.is_date32(t):
        return pc.cast(pc.cast(arr, pa.int32()), pa.float64(), safe=False).to_numpy(zero_copy_only=False) * 86400.0
    if _T.is_date64(t):
        return pc.cast(pc.cast(arr, pa.int64()), pa.float64(), safe=False).to_numpy(zero_copy_only=False) * 1e-3
    if is_text(t):
        return _parsed(arr, percent)
    return pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)


#: A number as text: digits with a point and an exponent, or digits grouped by commas in threes.
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_GROUPED = r"^[-+]?\d{1,3}(,\d{3})+(\.\d*)?$"


def _parsed(arr, percent: bool = True) -> np.ndarray:
    """float64 values of numbers written as text (``--numeric`` on a string column), NaN where a
    value is missing or not a number ("?", "N/A"); a percentage ("48.2%") as its fraction, 0.482."""
    if _T.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    text = pc.utf8_trim_whitespace(arr)
    if percent:
        percent = pc.fill_null(pc.match_substring_regex(text, r"\d\s*%$"), False)
        text = pc.if_else(percent, pc.utf8_rtrim_whitespace(pc.replace_substring_regex(text, r"%$", "")), text)
    text = pc.if_else(pc.match_substring_regex(text, _GROUPED), pc.replace_substring(text, ",", ""), text)
    numbers = pc.if_else(pc.match_substring_regex(text, _NUMBER), text, pa.scalar(None, text.type))
    values = pc.cast(numbers, pa.float64()).to_numpy(zero_copy_only=False)
    return np.where(percent.to_numpy(zero_copy_only=False), values / 100, values) if percent else values


def _name(column: str, value) -> str:
    text = str(value)
    return f"{column}={text[:MAX_VALUE_CHARS]}{'...' if len(text) > MAX_VALUE_CHARS else ''}"


#: A timestamp's parts, each one-hot: the arrow function that extracts it (in the column's own
#: time zone), and its values' range.
DATE_PARTS = {"hour": ("hour", 0, 24), "weekday": ("day_of_week", 0, 7), "month": ("month", 1, 13)}


class _Numeric:
    """A number (or datetime as seconds): ``value - center``, missing -> the mean (+ an indicator);
    a datetime may add its ``parts`` (hour, weekday, month), one-hot."""

    def __init__(self, name: str, kind: str, center: float, fill: float, indicator: bool, missing: str,
                 parts: tuple[str, ...] = (), zone: str | None = None, text: bool = False, percent: bool = True):
        self.name, self.kind, self.center, self.fill, self.indicator = name, kind, center, fill, indicator
        # (zone: training's time zone, in which the parts of a timestamp with another are taken too;
        # text: training read numbers written as text, a value that is not one as missing)
        self.missing, self.parts, self.zone, self.text = missing, tuple(parts), zone, text
        # (percent: its text's "48.2%" read as 0.482; a model's column from before that, as no number)
        self.percent = percent
        self.names = [name] + ([f"{name}:missing"] if indicator else [])
        self.scaled = [True] + ([False] if indicator else [])
        for part in self.parts:
            _, lo, hi = DATE_PARTS[part]
            self.names += [f"{name}.{part}={v}" for v in range(lo, hi)]
            self.scaled += [False] * (hi - lo)

    def encode(self, arr, out: np.ndarray, where: str) -> None:
        t = arr.type.value_type if _T.is_dictionary(arr.type) else arr.type
        if _T.is_temporal(t) != (self.kind == "datetime"):
            raise DataError(f"{where}: column {self.name!r} holds {type_text(arr.type)}, where training's held "
                            f"{'dates or times' if self.kind == 'datetime' else 'numbers'}")
        try:
            v = _numbers(arr, self.percent)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise DataError(f"{where}: column {self.name!r} holds {type_text(arr.type)}, not numbers as in "
                            "training") from None
        if not v.flags.writeable:  # a view of Arrow's buffer
            v = v.copy()
        gone = null_mask(arr)
        if is_text(arr.type):  # (numbers as text: "?" is missing where training took text so, else an error)
            junk = np.isnan(v) & ~gone
            if junk.any() and not self.text:
                bad = arr.filter(pa.array(junk))[0].as_py()
                raise DataError(f"{where}: column {self.name!r} holds text, and {bad!r} in it is not a number "
                                f"(training's were numbers); correct it, or train with --numeric {self.name} on text "
                                "like it, which reads such a value as missing")
            gone = gone | junk
        if gone.any():
            if self.missing == "error":
                raise DataError(f"{where}: column {self.name!r} has missing values (--missing impute fills them "
                                "with the column's mean)")
            v[gone] = self.fill
        if self.center:
            v -= self.center
        with np.errstate(over="ignore"):  # beyond float32 becomes Inf, which the NaN/Inf screen names
            out[:, 0] = v
        if self.indicator:
            out[:, 1] = gone
        at = 1 + self.indicator
        if self.parts and self.zone is not None and _T.is_timestamp(t) and t.tz is not None and t.tz != self.zone:
            # (the same instants, their hours read on training's clock: a file written in another zone)
            arr = pc.cast(arr.dictionary_decode() if _T.is_dictionary(arr.type) else arr,
                          pa.timestamp(t.unit, tz=self.zone))
        for part in self.parts:  # (a missing value has no part: all its inputs stay 0)
            func, lo, hi = DATE_PARTS[part]
            try:
                values = getattr(pc, func)(arr)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(f"{where}: column {self.name!r} ({type_text(arr.type)}) has no {part}: {e}") from None
            idx = pc.fill_null(values, lo - 1).to_numpy(zero_copy_only=False).astype(np.int64) - lo
            ok = (idx >= 0) & (idx < hi - lo)
            out[np.nonzero(ok)[0], at + idx[ok]] = 1
            at += hi - lo

    def state(self) -> dict:
        extra = {"parts": list(self.parts)} if self.parts else {}
        if self.parts and self.zone is not None:
            extra["zone"] = self.zone
        if self.text:
            extra["text"] = True
        if self.percent:
            extra["percent"] = True
        return {"kind": self.kind, "name": self.name, "center": self.center, "fill": self.fill,
                "indicator": self.indicator, **extra}


class _Vector:
    """A fixed-size list of numbers: one input per element (no missing lists)."""

    def __init__(self, name: str, width: int):
        self.name, self.kind, self.width = name, "vector", width
        self.names = [f"{name}[{i}]" for i in range(width)]
        self.scaled = [True] * width

    def encode(self, arr, out: np.ndarray, where: str) -> None:
        if arr.null_count:
            raise DataError(f"{where}: column {self.name!r} has missing lists")
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        flat = pc.cast(arr.flatten(), pa.float64()).to_numpy(zero_copy_only=False)
        out[:] = flat.reshape(len(arr), self.width)

    def state(self) -> dict:
        return {"kind": "vector", "name": self.name, "width": self.width}


class _OneHot:
    """A categorical (vocabulary codes) or hashed (bucket codes) column, one-hot."""

    def __init__(self, name: str, cats: Categories | None = None, buckets: int | None = None,
                 gather: bool = False, shared: bool = False, salt: int = 0):
        self.name, self.cats, self.buckets, self.gather = name, cats, buckets, bool(gather or shared)
        # shared: the column's values hash (with its own salt) into the one table every shared
        # column selects from (Vowpal Wabbit's -b), not a table of its own
        self.shared, self.salt = bool(shared), int(salt)
        self.kind = "categorical" if cats is not None else "hashed"
        #: the first layer's rows this column selects from: one per value (its code)
        self.n_rows = 1 + (cats.oov_buckets + len(cats) if cats is not None else buckets)
        # gathered: one input, the code, which selects a row (its rows' names are never built:
        # millions of them); else one 0/1 input per row
        self.names = [name] if self.gather else self.row_names
        self.scaled = [False] * len(self.names)

    @property
    def row_names(self) -> list[str]:
        """The name of each row this column selects from (``col=value``, ``col=<missing>``...)."""
        cats = self.cats
        if cats is not None:
            other = ["<other>"] if cats.oov_buckets == 1 else [f"<other:{k}>" for k in range(cats.oov_buckets)]
            labels = ["<missing>", *other, *cats.values.to_pylist()]
        else:
            labels = ["<missing>", *[f"#{k}" for k in range(self.buckets)]]
        return [_name(self.name, v) for v in labels]

    def codes(self, arr) -> np.ndarray:
        if self.cats is not None:
            return self.cats.encode(arr)
        return bucket(arr, self.buckets, self.salt) + 1  # null: -1 -> 0

    def encode(self, arr, out: np.ndarray, where: str) -> None:
        try:
            codes = self.codes(arr)
        except DataError as e:  # (the file and the column it is about)
            raise DataError(f"{where}: column {self.name!r}: {e}") from None
        if self.gather:
            out[:, 0] = codes
        else:
            out[np.arange(len(out)), codes] = 1

    def state(self) -> dict:
        extra = {"gather": True} if self.gather else {}
        if self.shared:
            extra.update(shared=True, salt=self.salt)
        if self.cats is not None:
            return {"kind": "categorical", "name": self.name, "categories": self.cats.state_dict(), **extra}
        return {"kind": "hashed", "name": self.name, "buckets": self.buckets, **extra}


class _Cross(_OneHot):
    """A feature cross: the pair of two categorical columns' values, hashed into ``buckets``
    (Vowpal Wabbit's ``-q``, Keras ``FeatureSpace(crosses=...)``); missing where either is."""

    def __init__(self, a: str, b: str, buckets: int, gather: bool = False, shared: bool = False):
        super().__init__(f"{a}*{b}", buckets=buckets, gather=gather, shared=shared)
        self.kind, self.pair = "cross", (a, b)

    def codes_of(self, table) -> np.ndarray:
        """Each row's code: 0 where either value is missing, else 1 + the pair's bucket."""
        a, b = (table.column(k) for k in self.pair)
        h = fmix64(hash64(a, salt=1) ^ fmix64(hash64(b, salt=2)))
        codes = (h % np.uint64(self.buckets)).astype(np.int64) + 1
        codes[null_mask(a) | null_mask(b)] = 0
        return codes

    def encode_table(self, table, out: np.ndarray, where: str) -> None:
        codes = self.codes_of(table)
        if self.gather:
            out[:, 0] = codes
        else:
            out[np.arange(len(out)), codes] = 1

    def state(self) -> dict:
        return {"kind": "cross", "name": self.name, "columns": list(self.pair), "buckets": self.buckets,
                **({"gather": True} if self.gather else {}), **({"shared": True} if self.shared else {})}


class _Label:
    """A class label: its sorted distinct values; a row's class index (float64, NaN where missing)."""

    def __init__(self, name: str, values: pa.Array):
        self.name, self.values = name, values
        self.kind = kind_of(values.type)

    @property
    def classes(self) -> list:
        return self.values.to_pylist()

    def encode(self, arr, where: str) -> np.ndarray:
        vals, kind = canonical(arr)
        if kind != self.kind:
            raise DataError(f"{where}: label {self.name!r} holds {kind} values, the classes are {self.kind}s")
        idx = pc.index_in(vals, value_set=self.values)
        out = pc.cast(idx, pa.float64()).to_numpy(zero_copy_only=False)
        unseen = np.isnan(out) & ~null_mask(vals)
        if unseen.any():
            bad = vals.filter(pa.array(unseen))[0].as_py()
            raise DataError(f"{where}: label value {bad!r} is not one of the classes seen in training "
                            f"({', '.join(map(repr, self.classes[:8]))}{', ...' if len(self.classes) > 8 else ''})")
        return out

    def describe(self) -> str:
        """``N classes: a, b, ...`` (the first 10)."""
        shown = ", ".join(map(str, self.classes[:10])) + (f", ... ({len(self.classes) - 10} more)"
                                                           if len(self.classes) > 10 else "")
        return f"{len(self.classes)} classes: {shown}"

    def state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "classes": values_to_json(self.values)}


class Encoding:
    """The learned encoding of a table: which columns are read, the inputs they become, the label.

    Attributes
    ----------
    feature_names : list of str, shape (width,)
        One name per input (``col``, ``col:missing``, ``col=value``, ``col=<other>``, ``col#k``).
    keys : list of str
        The raw columns read (features, then the label).
    left_out : list of (name, why)
        The columns not used, each with its reason.
    notes : list of (name, note)
        Columns used as they are that may not be what they seem (whole numbers that look like an
        identifier), each with a note for the user; from the pass that learned the encoding alone
        (not kept in the checkpoint).
    unscaled : ndarray of bool, shape (width,)
        Inputs that are 0/1 (one-hot codes, indicators): standard scaling leaves them as they are.
    classes : list or None
        A class label's values (sorted), or None where the label is numeric (or absent).
    """

    def __init__(self, columns: list, label: _Label | None, label_name: str | None,
                 left_out: list[tuple[str, str]], rows: int = 0):
        self.columns, self.label, self.label_name = columns, label, label_name
        self.left_out, self.rows = list(left_out), rows
        self.notes: list[tuple[str, str]] = []
        self.feature_names = [n for c in columns for n in c.names]
        seen: dict[str, int] = {}
        for i, n in enumerate(self.feature_names):  # values cut short may collide: number them
            if n in seen:
                self.feature_names[i] = f"{n}#{i}"
            seen[n] = i
        self.unscaled = np.array([not s for c in columns for s in c.scaled], dtype=bool)
        #: per input, whether it is a column of codes (rows of the first layer, never scaled)
        self.gathered_inputs = np.array([bool(getattr(c, "gather", False)) for c in columns for _ in c.scaled],
                                        dtype=bool)
        #: the raw columns the features read (a cross reads two of them, which are features too)
        self.inputs = [c.name for c in columns if not isinstance(c, _Cross)]
        self.keys = self.inputs + ([label_name] if label_name else [])
        #: the raw columns read as codes alone (not needed for the plain inputs' statistics): not
        #: those a one-hot cross also reads
        crossed = {n for c in columns if isinstance(c, _Cross) and not c.gather for n in c.pair}
        self.code_inputs = [c.name for c in columns if not isinstance(c, _Cross) and getattr(c, "gather", False)
                            and c.name not in crossed]
        self._offsets = np.cumsum([0] + [len(c.names) for c in columns])

    @property
    def gathered(self) -> bool:
        """Whether any column is read as codes that select rows of the first layer's weights."""
        return any(getattr(c, "gather", False) for c in self.columns)

    def layout(self) -> tuple[list[int], ...] | None:
        """Where each input meets the first layer's weights: ``(dense_cols, dense_rows, code_cols,
        offsets, sizes)``, ``nn.network.InputLayout``'s arguments; None where every input is a row
        of its own (no gathered column)."""
        if not self.gathered:
            return None
        dense_cols, dense_rows, code_cols, offsets, sizes = [], [], [], [], []
        row, shared_at = 0, None
        for c, a in zip(self.columns, self._offsets[:-1]):
            if getattr(c, "shared", False):  # one table, wherever its first column is
                if shared_at is None:
                    shared_at, row = row, row + c.n_rows
                code_cols.append(int(a))
                offsets.append(shared_at)
                sizes.append(c.n_rows)
            elif getattr(c, "gather", False):
                code_cols.append(int(a))
                offsets.append(row)
                sizes.append(c.n_rows)
                row += c.n_rows
            else:
                dense_cols += range(int(a), int(a) + len(c.names))
                dense_rows += range(row, row + len(c.names))
                row += len(c.names)
        return dense_cols, dense_rows, code_cols, offsets, sizes

    @property
    def n_rows(self) -> int:
        """The first layer's weight rows: one per input, or per value of a gathered column."""
        shared = next((c.n_rows for c in self.columns if getattr(c, "shared", False)), 0)
        return shared + sum(c.n_rows if getattr(c, "gather", False) else len(c.names) for c in self.columns
                            if not getattr(c, "shared", False))

    @property
    def width(self) -> int:
        return int(self._offsets[-1])

    @property
    def classes(self) -> list | None:
        return None if self.label is None else self.label.classes

    def transform(self, table: pa.Table, dtype, where: str, codes: bool = True) -> np.ndarray:
        """The inputs of a table's rows: shape (rows, width), of ``dtype`` (a gathered column's
        input is its code, an integer, exact in float32 below 2**24; ``codes`` False: left 0, and
        the table need not hold ``code_inputs``)."""
        X = np.zeros((table.num_rows, self.width), dtype=dtype)
        for c, a, b in zip(self.columns, self._offsets[:-1], self._offsets[1:]):
            if not codes and getattr(c, "gather", False):
                continue
            if isinstance(c, _Cross):
                c.encode_table(table, X[:, a:b], where)
            else:
                c.encode(table.column(c.name), X[:, a:b], where)
        return X

    def labels(self, col, where: str) -> np.ndarray:
        """A label column's values: class indices (float64, NaN where missing) for a class label;
        numbers as stored otherwise (float64 with NaN where any is missing)."""
        if self.label is not None:
            return self.label.encode(col, where)
        if col.null_count:
            return _numbers(col)
        return col.to_numpy()

    def outside_categories(self, X: np.ndarray) -> dict[str, int]:
        """Per categorical column, the rows of ``X`` (rows, inputs: as ``transform`` made them)
        whose value is not among its categories (read as its ``<other>``), where there are any."""
        out, a = {}, 0
        for c in self.columns:
            width = len(c.names)  # (a gathered column: one input, its code)
            if type(c) is _OneHot and c.cats is not None:
                oov = c.cats.oov_buckets
                if c.gather:  # (codes 1..oov_buckets)
                    n = int(np.count_nonzero((X[:, a] >= 1) & (X[:, a] <= oov)))
                else:  # (inputs <missing>, then the <other> ones)
                    n = int(np.count_nonzero(X[:, a + 1:a + 1 + oov].any(axis=1)))
                if n:
                    out[c.name] = n
            a += width
        return out

    def describe(self) -> dict[str, str]:
        """Each column of the table (the label's included) and how it is used, as one line."""
        out = {}
        for c in self.columns:
            seen = getattr(c, "seen", None)  # what the pass saw (not kept in the checkpoint)
            text = {"numeric": "numeric", "vector": "numeric, one input per element",
                    "categorical": "categorical, one-hot", "hashed": "hashed, one-hot",
                    "cross": "a cross of two columns, hashed, one-hot",
                    # (the pass says which seconds; a model read back knows the kind alone)
                    "datetime": getattr(c, "reads", "datetime, seconds")}[c.kind]
            if isinstance(c, _OneHot):
                text += (f": {len(c.cats)} categor{'y' if len(c.cats) == 1 else 'ies'} + missing + other"
                         if c.cats is not None else f": {c.buckets} bucket{'' if c.buckets == 1 else 's'} + missing")
                if c.gather:
                    text = text.replace(", one-hot", ", codes selecting first-layer rows")
                    if c.shared:
                        text = text.replace("first-layer rows", "rows of the table all hashed columns share")
                    text += f" ({c.n_rows} rows, 1 input)"
                    out[c.name] = f"{seen}; {text}" if seen else text
                    continue
            if isinstance(c, _Numeric) and c.indicator:
                text += ": missing values become the mean, with an indicator input"
            if isinstance(c, _Numeric) and c.parts:
                text += f"; and its {', '.join(c.parts)}, one-hot" + (f", in {c.zone}" if c.zone else "")
            text += f" ({len(c.names)} input{'s' if len(c.names) != 1 else ''})"
            out[c.name] = f"{seen}; {text}" if seen else text
        for name, why in self.left_out:
            out[name] = f"left out: {why}"
        if self.label_name is not None:
            out[self.label_name] = "the label: " + (
                self.label.describe() if self.label is not None
                else "numbers (whole numbers are classes, others a regression's target; --task chooses)")
        return out

    # -- JSON -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """A JSON-able dict (:meth:`from_state` reads it back)."""
        return {"format": _FORMAT, "version": _VERSION, "columns": [c.state() for c in self.columns],
                "label": None if self.label is None else self.label.state(), "label_name": self.label_name,
                "left_out": [list(x) for x in self.left_out], "rows": self.rows}

    @classmethod
    def from_state(cls, state) -> Encoding:
        """The encoding a :meth:`state_dict` describes (untrusted input: every field checked; a
        ValueError naming what is wrong)."""
        what = "encoding"
        check_header(state, _FORMAT, _VERSION, what)
        cols = state.get("columns")
        if not isinstance(cols, list) or not 1 <= len(cols) <= MAX_COLUMNS:
            raise ValueError(f"{what}: columns must be a list of 1 to {MAX_COLUMNS} columns")
        columns = [_column_from_state(c, what) for c in cols]
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{what}: a column is encoded twice")
        kinds = {c.name: c.kind for c in columns}
        if len({c.buckets for c in columns if getattr(c, "shared", False)}) > 1:
            raise ValueError(f"{what}: the columns of the shared table must have as many buckets")
        for c in columns:
            if isinstance(c, _Cross) and any(kinds.get(k) not in ("categorical", "hashed") for k in c.pair):
                raise ValueError(f"{what}: cross {c.name!r} must cross two categorical or hashed columns")
        label_name = state.get("label_name")
        if label_name is not None and not _short_str(label_name):
            raise ValueError(f"{what}: label_name must be a string or null")
        label = state.get("label")
        if label is not None:
            if not isinstance(label, dict) or label.get("name") != label_name:
                raise ValueError(f"{what}: label must be a dict naming label_name")
            values = values_from_json(label.get("classes"), label.get("kind"), MAX_LABEL_CLASSES, what)
            if len(set(values.to_pylist())) != len(values):  # (sorted, or in the order --classes gave)
                raise ValueError(f"{what}: the label's classes must be distinct")
            label = _Label(label_name, values)
        left = state.get("left_out")
        if not isinstance(left, list) or len(left) > MAX_COLUMNS or not all(
                isinstance(x, list) and len(x) == 2 and all(_short_str(s) for s in x) for x in left):
            raise ValueError(f"{what}: left_out must be a list of [name, reason] pairs")
        rows = state.get("rows")
        if type(rows) is not int or rows < 0:
            raise ValueError(f"{what}: rows must be a non-negative integer")
        return cls(columns, label, label_name, [tuple(x) for x in left], rows)


def _short_str(x) -> bool:
    return isinstance(x, str) and len(x) <= 4096


def _finite(c: dict, key: str, what: str) -> float:
    x = c.get(key)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{what}: {key} must be a finite number")
    return float(x)


def _zone_known(zone: str) -> bool:
    """Whether Arrow knows the time zone ``zone`` (its hour of an instant can be read)."""
    try:
        pc.hour(pa.array([0], pa.timestamp("s", tz=zone)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _column_from_state(c, what: str):
    if not isinstance(c, dict) or not _short_str(c.get("name")):
        raise ValueError(f"{what}: each column is a dict with a name")
    kind, name = c.get("kind"), c["name"]
    if kind in ("numeric", "datetime"):
        if not isinstance(c.get("indicator"), bool):
            raise ValueError(f"{what}: column {name!r}: indicator must be true or false")
        parts = c.get("parts", [])
        if not isinstance(parts, list) or not all(isinstance(p, str) and p in DATE_PARTS for p in parts) \
                or len(set(parts)) != len(parts) or (parts and kind != "datetime"):
            raise ValueError(f"{what}: column {name!r}: parts must be distinct names of {', '.join(DATE_PARTS)}, "
                             "of a datetime column")
        zone = c.get("zone")
        if zone is not None and not (parts and _short_str(zone) and _zone_known(zone)):
            raise ValueError(f"{what}: column {name!r}: zone must be a time zone's name, of a column with parts")
        for flag in ("text", "percent"):
            if c.get(flag, False) is not True and flag in c:
                raise ValueError(f"{what}: column {name!r}: {flag} must be true where it is given")
        return _Numeric(name, kind, _finite(c, "center", what), _finite(c, "fill", what), c["indicator"], "impute",
                        tuple(parts), zone, "text" in c, "percent" in c)
    if kind == "vector":
        w = c.get("width")
        if type(w) is not int or not 1 <= w <= MAX_COLUMNS:
            raise ValueError(f"{what}: column {name!r}: width must be an integer in [1, {MAX_COLUMNS}]")
        return _Vector(name, w)
    if kind in ("categorical", "hashed", "cross") and not isinstance(c.get("gather", False), bool):
        raise ValueError(f"{what}: column {name!r}: gather must be true or false")
    shared, salt = c.get("shared", False), c.get("salt", 0)
    if not isinstance(shared, bool) or (shared and kind not in ("hashed", "cross")) \
            or type(salt) is not int or not 0 <= salt < 1 << 64:
        raise ValueError(f"{what}: column {name!r}: shared must be true or false (a hashed column's), salt an "
                         "integer in [0, 2**64)")
    if kind == "categorical":
        return _OneHot(name, cats=Categories.from_state(c.get("categories")), gather=c.get("gather", False))
    # (one table shared by every column has --hash-bits' rows, up to 2**MAX_HASH_BITS)
    if kind == "hashed":
        b, most = c.get("buckets"), 1 << (MAX_HASH_BITS if shared else 20)
        if type(b) is not int or not 1 <= b <= most:
            raise ValueError(f"{what}: column {name!r}: buckets must be an integer in [1, {most}]")
        return _OneHot(name, buckets=b, gather=c.get("gather", False), shared=shared, salt=salt)
    if kind == "cross":
        b, pair, most = c.get("buckets"), c.get("columns"), 1 << (MAX_HASH_BITS if shared else 24)
        if type(b) is not int or not 1 <= b <= most:
            raise ValueError(f"{what}: column {name!r}: buckets must be an integer in [1, {most}]")
        if not isinstance(pair, list) or len(pair) != 2 or not all(_short_str(x) for x in pair) \
                or pair[0] == pair[1] or name != f"{pair[0]}*{pair[1]}":
            raise ValueError(f"{what}: column {name!r}: columns must be two distinct names, the cross named by them")
        return _Cross(pair[0], pair[1], b, gather=c.get("gather", False), shared=shared)
    raise ValueError(f"{what}: column {name!r} has an unknown kind {kind!r:.40}")
