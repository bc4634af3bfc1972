"""Zarr reader (format 2 and 3, through zarr-python 3): directory, zip or remote stores.

Either a 2-D feature array plus a label array, or a group of 1-D arrays, one
per feature, as xarray's ``Dataset.to_zarr`` writes it.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES, Capabilities, Dataset
from .arrow_columns import Spec, arrow_type, cf_time, is_plain, to_arrow
from .columns import FEATURE_KEYS, LABEL_KEYS, Column, fill_features, find_key, left_out, select_columns
from .layout import as_features, as_labels, check_chunk_size, uniform_bounds
from .remote import is_url
from .tabular import adopt_encoding, chunk_tables, encoded_chunk, encoded_keys, plan_table

__all__ = ["ZarrDataset"]

# Codecs that can execute code while decoding: never used on untrusted data.
# (vlen-utf8, how strings are stored, only splits bytes into text: it is safe.)
UNSAFE_CODECS = ("pickle", "numcodecs.pickle", "msgpack2", "json2")


def _arrays(group, prefix: str = "") -> dict[str, object]:
    import zarr

    found = {}
    # by name: a store lists its members in no fixed order (a directory's listing)
    for name, member in sorted(group.members(), key=lambda m: m[0]):
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            found[path] = member
        else:
            found.update(_arrays(member, path + "/"))
    return found


def _codec_names(arr) -> list[str]:
    names = []
    for codec in [*(arr.filters or ()), *(arr.compressors or ()), getattr(arr, "serializer", None)]:
        if codec is None:
            continue
        cid = getattr(codec, "codec_id", None) or getattr(codec, "codec_name", None)
        inner = getattr(codec, "codec", None)  # zarr 3 wraps numcodecs codecs
        cid = cid or getattr(inner, "codec_id", None)
        if not cid and hasattr(codec, "to_dict"):  # zarr 3's own codecs name themselves so: zstd, blosc, bytes
            try:
                cid = codec.to_dict().get("name")
            except Exception:
                cid = None
        cid = cid or type(codec).__name__
        names.append(str(cid).lower())
    return names


def _check_safe(arr, path: str, text: bool = False) -> None:
    """Refuse an array whose codecs can run code or whose chunk grid is malformed, or one that is
    not numbers (``text``: strings and timestamps are read too, as a table's columns)."""
    if arr.dtype.kind not in ("biufTUSM" if text else "biuf"):
        what = "numeric, bool, string and timestamp arrays are" if text else "only numeric and bool arrays are"
        raise DataError(f"{path}: array {arr.path!r} has dtype {arr.dtype}; {what} read")
    bad = [c for c in _codec_names(arr) if any(u in c for u in UNSAFE_CODECS)]
    if bad:
        raise DataError(f"{path}: array {arr.path!r} uses the {bad[0]} codec, which can run code; refused")
    try:
        grid = [tuple(arr.chunks), tuple(getattr(arr, "shards", None) or arr.chunks)]
    except Exception as e:  # zarr's own checks of the metadata
        raise DataError(f"{path}: array {arr.path!r} has a malformed chunk grid ({e}); refused") from None
    for shape in grid:
        if len(shape) != arr.ndim or any(not isinstance(u, int) or u < 1 for u in shape):
            raise DataError(f"{path}: array {arr.path!r} declares chunks of shape {list(shape)} for shape "
                            f"{list(arr.shape)}; every chunk side must be at least 1; refused as malformed")


def _spec(arr) -> Spec:
    """What a 1-D array holds: text, timestamps (numpy's, or xarray's CF ``units``), or numbers."""
    if arr.dtype.kind in "TUSO":
        return Spec("string")
    if arr.dtype.kind == "M":
        return Spec("datetime", unit=np.datetime_data(arr.dtype)[0])
    if arr.dtype.kind in "iuf":
        return cf_time(arr.attrs) or Spec()
    return Spec()


def _dims(arr) -> tuple[str, ...] | None:
    """Dimension names, from Zarr 3 metadata or xarray's Zarr 2 attribute."""
    names = getattr(arr.metadata, "dimension_names", None)
    return tuple(names) if names else tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ())) or None


def _open_group(path: str, storage_options: dict | None):
    import zarr

    if is_url(path):
        return zarr.open_group(path, mode="r", storage_options=storage_options or {})
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    if path.endswith(".zip"):
        from zarr.storage import ZipStore

        return zarr.open_group(ZipStore(path, mode="r"), mode="r")
    return zarr.open_group(path, mode="r")


class ZarrDataset(Dataset):
    """Rows of a Zarr group; chunks are the row chunks (or shards) of the feature array(s)."""

    format = "zarr"

    def __init__(self, path: str, features: str | list[str] | None = None, label: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32,
                 storage_options: dict | None = None, allow_missing_chunks: bool = False,
                 encoding: dict | None = None, encode: dict | None = None):
        # encoding: a model's learned column encoding (its state); encode: options to learn one
        super().__init__(cache_bytes, dtype)
        self._encode = {"encoding": encoding, "encode": encode}
        self.path = str(path)
        self._allow_missing = allow_missing_chunks
        try:
            group = _open_group(self.path, storage_options)
            arrays = _arrays(group)
        except DataError:
            raise
        except Exception as e:  # zarr raises many types for a bad store
            raise DataError(f"{self.path}: not a readable Zarr group ({type(e).__name__}: {e})") from None
        want = features if isinstance(features, str) else None
        matrix = want if want in arrays and arrays[want].ndim == 2 else None
        if matrix is None and features is None:
            matrix = next((k for k in FEATURE_KEYS if k in arrays and arrays[k].ndim == 2), None)
        self._seen_written: set[int] = set()  # row chunks seen stored (files are taken as unchanging)
        if matrix is not None:
            self._open_matrix(arrays, matrix, label)
        else:
            self._open_columns(arrays, features, label)
        self._check_layout()

    def _open_matrix(self, arrays, x_key, label) -> None:
        from . import only_classes

        enc = self._encode
        if enc["encoding"] is not None or (enc["encode"] and not only_classes(enc["encode"])):
            raise DataError(f"{self.path}: column encoding settings apply to a group of 1-D arrays (one per "
                            "column, as xarray writes them), not to a features matrix")
        self.encoding = None
        y_key = find_key(list(arrays), label, LABEL_KEYS, "label array", self.path, False)
        X = arrays[x_key]
        _check_safe(X, self.path)
        self._X, self._y, self._columns = X, None if y_key is None else arrays[y_key], None
        if self._y is not None:
            _check_safe(self._y, self.path)
        self.n_rows = int(X.shape[0])
        if self._y is not None and self._y.shape[0] != self.n_rows:
            raise DataError(f"{self.path}: features have {self.n_rows} rows but label {y_key!r} has {self._y.shape[0]}")
        names_attr = X.attrs.get("feature_names")
        self.feature_names = (list(map(str, names_attr)) if names_attr is not None
                              and len(names_attr) == X.shape[1] else [f"f{j}" for j in range(X.shape[1])])
        self.label_name = y_key
        self._x_key = x_key
        self._set_bounds(X, X.shape[1])

    def _open_columns(self, arrays, features, label) -> None:
        # Arrays that index a dimension (xarray coordinates such as "time") are not features, unless
        # named (--features time): then they are a column as any other.
        named = set(features) if isinstance(features, (list, tuple)) else set()
        coords = {k for k, a in arrays.items() if a.ndim == 1 and _dims(a) == (k.split("/")[-1],)}
        one_d = {k: a for k, a in arrays.items() if a.ndim == 1 and (k not in coords or k in named)}
        if not one_d:
            raise DataError(f"{self.path}: no 2-D features array and no 1-D feature arrays "
                            f"(looked for {', '.join(FEATURE_KEYS)}; found: {', '.join(arrays) or 'nothing'})")
        specs = {k: _spec(a) for k, a in one_d.items()}
        columns = [Column(k, k, None, is_plain(specs[k], a.dtype), type=str(a.dtype)) for k, a in one_d.items()]
        schema = pa.schema([(k, arrow_type(specs[k], a.dtype)) for k, a in one_d.items()])
        self._one_d, self._specs = one_d, specs
        self._x_key = None
        self._arrow_schema = schema
        self.notes: list[tuple[str, str]] = []
        self.encoding = plan_table(schema, features, label, self.path, self._tables, lambda name: 0,
                                   nan_missing=True, notes=self.notes, **self._encode)
        if self.encoding is not None:
            def label_type(plain: bool) -> str:
                kind = one_d[self.encoding.label_name].dtype
                return str(kind) if plain and kind.kind in "biu" else "float64"

            self._keys = adopt_encoding(self, schema.names, label, label_type, _not_columns(arrays, features))
            self._check_columns(one_d, self._keys)
            self._columns = {k: one_d[k] for k in self._keys}
            self._feature_cols, self._label_col = [], None
            first = self._columns[self._keys[0]]
            self._X = first
            self._y = one_d[self.label_name] if self.label_name else None
            self.n_rows = int(first.shape[0])
            self._set_bounds(first, len(self._keys))
            return
        self._feature_cols, self._label_col = select_columns(columns, features, label, self.path)
        if features is None:
            self.left_out = left_out(columns, self._feature_cols, self._label_col) + _not_columns(arrays, features)
        keys = [c.key for c in self._feature_cols] + ([self._label_col.key] if self._label_col else [])
        self._check_columns(one_d, keys)
        for k in keys:
            _check_safe(one_d[k], self.path)
        self._columns = {k: one_d[k] for k in keys}
        first = self._columns[keys[0]]
        self._X = first
        self._y = None if self._label_col is None else one_d[self._label_col.key]
        self.feature_names = [c.name for c in self._feature_cols]
        self.label_name = self._label_col.name if self._label_col else None
        self.nan_is_missing = True
        self.n_rows = int(first.shape[0])
        self._set_bounds(first, 1)

    def _check_columns(self, one_d, keys) -> None:
        """The arrays ``keys`` are safe to read and hold as many rows each."""
        lengths = {one_d[k].shape[0] for k in keys}
        if len(lengths) > 1:  # (a variable over another dimension, as xarray writes one beside the table's)
            count = Counter(one_d[k].shape[0] for k in keys)
            main = max(count, key=lambda n: (count[n], n))
            odd = [k for k in keys if one_d[k].shape[0] != main]
            raise DataError(f"{self.path}: {', '.join(odd)} {'has' if len(odd) == 1 else 'have'} "
                            f"{', '.join(sorted({str(one_d[k].shape[0]) for k in odd}))} rows where the other arrays "
                            f"have {main}: not columns of this table; leave "
                            f"{'it' if len(odd) == 1 else 'them'} out with "
                            + " ".join(f"--drop {k}" for k in odd))
        for k in keys:
            _check_safe(one_d[k], self.path, text=True)

    def _arrow(self, i: int, names: list[str]) -> pa.Table:
        """Chunk ``i``'s arrays ``names`` as an Arrow table, with the meaning their writer gave them."""
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        try:
            return pa.table([to_arrow(self._one_d[k][a:b], self._specs[k]) for k in names], names=names)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({type(e).__name__}: {e})") from None

    def _tables(self, names: list[str], part: tuple[int, int] | None = None):
        """Chunks' arrays ``names`` as Arrow tables, in order (the encoding's pass; ``part``: a share)."""
        self._check_columns(self._one_d, names)
        self.n_rows = int(self._one_d[names[0]].shape[0])
        self._set_bounds(self._one_d[names[0]], len(names))  # (set again once the columns are chosen)
        return chunk_tables(self.n_chunks, self._arrow, names, part)

    def _set_bounds(self, arr, width: int) -> None:
        # A shard is the unit one read fetches; reading less than a shard decodes it anyway.
        unit = getattr(arr, "shards", None) or arr.chunks
        row_bytes = arr.dtype.itemsize * (arr.shape[1] if arr.ndim == 2 else width)
        check_chunk_size(unit[0] * row_bytes, self.path, f"array {arr.path!r}")
        self.bounds = uniform_bounds(self.n_rows, unit[0], self.path)

    def _feature_arrays(self) -> list:
        if self.encoding is not None:
            return [self._one_d[name] for name in self.encoding.inputs]
        return list(self._columns[c.key] for c in self._feature_cols) if self._columns is not None else [self._X]

    def _written(self, a: int, b: int) -> bool:
        """Whether any feature array stores an object (chunk or shard) holding rows ``a:b``.

        zarr reads a missing object as fill values, and by default does not write an object
        equal to the fill value, so one missing column chunk can be genuine data; rows for which
        no feature array stores anything were never written (or were deleted)."""
        from zarr.core.sync import sync

        for arr in self._feature_arrays():
            unit = getattr(arr, "shards", None) or arr.chunks  # the stored objects' grid
            grid = [range(-(-n // u)) for n, u in zip(arr.shape, unit)]
            grid[0] = range(a // unit[0], (b - 1) // unit[0] + 1)
            store, prefix = arr.store_path.store, arr.store_path.path
            for coords in itertools.product(*grid):
                key = arr.metadata.encode_chunk_key(coords)
                if sync(store.exists(f"{prefix}/{key}" if prefix else key)):
                    return True
        return False

    def _check_written(self, i: int, a: int, b: int) -> None:
        if self._allow_missing or i in self._seen_written:
            return
        try:
            written = self._written(a, b)
        except (AttributeError, TypeError, NotImplementedError):  # a zarr without these internals
            written = True
        if not written:
            raise DataError(f"{self.path}: rows {a}-{b} were never written (no chunk of the features holds "
                            "them; zarr would read fill values); pass --allow-missing-chunks to train on them")
        self._seen_written.add(i)

    def _load_chunk(self, i: int):
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        if not self._allow_missing:
            self._check_written(i, a, b)
        if self.encoding is not None:
            return encoded_chunk(self, self._arrow(i, encoded_keys(self)), f"{self.path}, rows {a}-{b}")
        try:
            if self._columns is not None:
                X = fill_features(self._feature_cols, b - a, self.dtype, lambda k: self._columns[k][a:b])
            else:
                X = as_features(self._X[a:b], self.dtype, self.path)
            y = None if self._y is None else as_labels(self._y[a:b], self.path)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({type(e).__name__}: {e})") from None
        return X, y

    def _load_labels(self, i: int):
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        if self.encoding is not None:
            if self.label_name is None:
                return None
            column = self._arrow(i, [self.label_name]).column(self.label_name)
            return as_labels(self.encoding.labels(column, self.path), self.path)
        try:
            return None if self._y is None else as_labels(self._y[a:b], self.path)
        except Exception as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({type(e).__name__}: {e})") from None

    # A store of more files than this is stamped by its metadata files alone (and sampled chunks).
    MAX_STAMPED_FILES = 10_000

    def _stamped_files(self):
        if is_url(self.path) or not os.path.isdir(self.path):
            return [] if is_url(self.path) else [self.path]  # a zip store is one file
        files, meta = [], []
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            for n in sorted(names):
                (meta if n in ("zarr.json", ".zarray", ".zgroup", ".zattrs") else files).append(os.path.join(root, n))
            if len(files) > self.MAX_STAMPED_FILES:
                return meta
        return meta + files

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(decodes_chunks=True, remote=is_url(self.path))

    @property
    def selection(self):
        if self.encoding is not None:
            return list(self.encoding.inputs)
        return self._x_key or list(self.feature_names)

    def label_dtype(self):
        if self.encoding is not None:
            return self._label_type
        return None if self._y is None else str(self._y.dtype)

    def extra_info(self):
        return {"features_array": self._x_key, "stored_dtype": str(self._X.dtype),
                "zarr_format": self._X.metadata.zarr_format, "codecs": _codec_names(self._X)}


def _not_columns(arrays: dict, features) -> list[tuple[str, str]]:
    """The arrays of a group of columns that are not one (2-D and more: a variable over a second
    dimension, as xarray writes one; an xarray coordinate, which indexes its dimension, of as many
    rows as the table), each with the reason it is left out; none where the user chose the features."""
    if features is not None:
        return []
    lengths = Counter(a.shape[0] for k, a in arrays.items() if a.ndim == 1 and _dims(a) != (k.split("/")[-1],))
    rows = max(lengths, key=lambda n: (lengths[n], n)) if lengths else None
    return [(k, f"{a.ndim}-D array {tuple(a.shape)}: not a column (one 1-D array per column is; split it "
                f"into 1-D arrays to use it)") for k, a in arrays.items() if a.ndim >= 2] + \
        [(k, f"{a.dtype}: an xarray coordinate, the index of dimension {k.split('/')[-1]!r} (--features names it, "
             "with the columns to use, to take it as one)")
         for k, a in arrays.items() if a.ndim == 1 and _dims(a) == (k.split("/")[-1],) and a.shape[0] == rows]

