"""HDF5 reader: a 2-D feature dataset plus a label dataset, or a table (compound dataset) with
named columns as PyTables and pandas ``to_hdf(format="table")`` write it; read chunk by chunk,
or gathered in place from the mapped file where its rows lie plainly in it. What the file holds
(its datasets and tables, their safety, filters and byte locations) is found by ``hdf5_nodes``."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES, Capabilities, Dataset
from .arrow_columns import Spec, arrow_type, to_arrow
from .columns import FEATURE_KEYS, LABEL_KEYS, fill_features, find_key, left_out, select_columns
from .filemap import FileMap, RowMap
from .hdf5_nodes import check_safe, check_written, compression, find_datasets, locate, table_columns
from .tabular import adopt_encoding, chunk_tables, encoded_chunk, encoded_keys, plan_table
from .layout import (
    as_features,
    as_labels,
    check_chunk_size,
    uniform_bounds,
    virtual_chunk_rows,
)

__all__ = ["HDF5Dataset"]

class HDF5Dataset(Dataset):
    """Features from a 2-D HDF5 dataset (label from a 1-D one), or columns of an HDF5 table.

    The file is opened lazily and reopened in a child process, so no h5py
    handle crosses a fork. External storage, external links and virtual
    datasets pointing outside the file are refused unless ``allow_external``.
    """

    format = "hdf5"
    # the h5py file, its nodes and the file maps are reopened in a process that receives a copy
    _UNPICKLED = {**Dataset._UNPICKLED, "_file": None, "_nodes": dict, "_maps": None}

    def __init__(self, path: str, features: str | list[str] | None = None, label: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32,
                 allow_external: bool = False, allow_missing_chunks: bool = False,
                 encoding: dict | None = None, encode: dict | None = None):
        # encoding: a model's learned column encoding (its state); encode: options to learn one
        super().__init__(cache_bytes, dtype)
        self._encode = {"encoding": encoding, "encode": encode}
        self._allow_missing = allow_missing_chunks
        self.path = str(path)
        self._file = None
        self._nodes: dict[str, object] = {}
        self._maps: dict | None = None
        self._budget = self.cache_bytes  # for pages mapped from the file (see set_budget)
        self._allow_external = allow_external
        dsets, tables = find_datasets(self._handle(), self.path, allow_external)
        want = features.lstrip("/") if isinstance(features, str) else None
        if want is not None and want not in dsets and f"{want}/table" in tables:  # (pandas' key: its table's group)
            want = f"{want}/table"
        plain = {k: v for k, v in dsets.items() if v.dtype.names is None}
        if not tables and not any(v.ndim == 2 or k in FEATURE_KEYS for k, v in plain.items()) \
                and sum(v.ndim == 1 for v in plain.values()) > 1:  # (columns as datasets: Zarr's layout, not HDF5's)
            names = ", ".join(k for k, v in plain.items() if v.ndim == 1)
            raise DataError(f"{self.path}: its datasets ({names}) are 1-D, one per column, which an HDF5 file is not "
                            "read as: write the columns as one table (pandas' DataFrame.to_hdf(path, key='data', "
                            "format='table'), or Parquet) or the features as one 2-D dataset")
        elif want in plain:
            self._open_matrix(dsets, want, _strip(label))
        elif want in tables:
            self._open_table(dsets[want], want, None, label)
        elif features is None:
            if not tables and not any(k.split("/")[-1] in FEATURE_KEYS for k in plain):
                _refuse_pandas_fixed(self._handle(), self.path)
            key = find_key(list(plain), None, FEATURE_KEYS, "features dataset", self.path, required=not tables)
            if key is not None:
                self._open_matrix(dsets, key, _strip(label))
            else:
                key = self._one_table(tables)
                self._open_table(dsets[key], key, None, label)
        elif tables:  # column names or globs: columns of the table
            key = self._one_table(tables)
            self._open_table(dsets[key], key, features, label)
        else:
            raise DataError(f"{self.path}: no features dataset named {features!r} "
                            f"(found: {', '.join(dsets) or 'nothing'})")
        self._several_tables = len(tables) > 1
        self._check_layout()

    def _one_table(self, tables: list[str]) -> str:
        """The file's one table; several (pandas' "train" and "test" in one file: the first could be
        either) are an error naming them, with the option that chooses one."""
        if len(tables) > 1:
            keys = [t.removesuffix("/table") for t in tables]
            raise DataError(f"{self.path}: holds {len(tables)} tables ({', '.join(keys[:8])}"
                            f"{', ...' if len(keys) > 8 else ''}): choose one with --features, e.g. --features "
                            f"{keys[0]}")
        return tables[0]

    # -- the two layouts ------------------------------------------------------
    def _open_matrix(self, dsets, x_key, y_key) -> None:
        from . import only_classes

        names = list(dsets)
        x_key = find_key(names, x_key, FEATURE_KEYS, "features dataset", self.path, True)
        y_key = find_key(names, y_key, LABEL_KEYS, "label dataset", self.path, False)
        text_label = y_key is not None and dsets[y_key].dtype.kind in "SUO" and dsets[y_key].ndim == 1
        enc = self._encode
        if not text_label and enc["encoding"] is None and enc["encode"] and not only_classes(enc["encode"]):
            raise DataError(f"{self.path}: column encoding settings apply to tables (an HDF5 table, as pandas and "
                            "PyTables write them), not to a features matrix")
        X = dsets[x_key]
        if X.ndim != 2:
            raise DataError(f"{self.path}: features dataset {x_key!r} has shape {X.shape}; need 2-D (rows, features)")
        if X.dtype.kind not in "biuf":
            raise DataError(f"{self.path}: features dataset {x_key!r} has non-numeric dtype {X.dtype}")
        for d in (X, dsets.get(y_key)):
            if d is not None:
                check_safe(d, self.path, self._allow_external)
                check_written(d, self.path, self._allow_missing)
        self._table = None
        self._fields: dict[str, tuple] = {}
        self._x_key, self._y_key = x_key, y_key
        self.n_rows = int(X.shape[0])
        if y_key is not None and dsets[y_key].shape[0] != self.n_rows:
            raise DataError(f"{self.path}: features have {self.n_rows} rows but label {y_key!r} has "
                            f"{dsets[y_key].shape[0]}")
        names_attr = X.attrs.get("feature_names")
        if names_attr is not None and len(names_attr) == X.shape[1]:
            self.feature_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_attr]
        else:
            self.feature_names = [f"f{j}" for j in range(X.shape[1])]
        self.label_name = y_key
        self._set_bounds(X)
        self._stored_dtype = str(X.dtype)
        self._label_dtype = None if y_key is None else str(dsets[y_key].dtype)
        if text_label or enc["encoding"] is not None:  # class names as text: the label is encoded
            self._fields = {n: (x_key, None, j, Spec()) for j, n in enumerate(self.feature_names)}
            if y_key is not None:
                self._fields[y_key] = (y_key, None, None, Spec("string") if text_label else Spec())
            schema = pa.schema([(n, arrow_type(spec, dsets[key].dtype)) for n, (key, _, _, spec) in self._fields.items()])
            self._arrow_schema = schema
            self.encoding = plan_table(schema, list(self.feature_names), y_key if y_key else False, self.path,
                                       self._tables, lambda name: 0, nan_missing=True, **enc)
            self._keys = adopt_encoding(self, schema.names, y_key if y_key else False, lambda plain: "float64")
            self._label_dtype = self._label_type

    def _open_table(self, T, key, features, label) -> None:
        check_safe(T, self.path, self._allow_external)
        check_written(T, self.path, self._allow_missing)
        columns, specs = table_columns(T)
        self._table = key
        self._x_key = key
        self.n_rows = int(T.shape[0])
        self._set_bounds(T)
        self._stored_dtype = "table"
        # each column as Arrow reads it: (dataset, field, element, meaning)
        self._fields = {c.name: (key, c.key, c.index, specs[c.key]) for c in columns}
        schema = pa.schema([(c.name, arrow_type(specs[c.key], T.dtype.fields[c.key][0].base)) for c in columns])
        self._arrow_schema = schema
        self.notes: list[tuple[str, str]] = []
        self.encoding = plan_table(schema, features, label, self.path, self._tables, lambda name: 0,
                                   nan_missing=True, notes=self.notes, **self._encode)
        if self.encoding is not None:
            def label_type(plain: bool) -> str:
                base = T.dtype.fields[self._fields[self.encoding.label_name][1]][0].base
                return str(base) if plain and base.kind in "biu" else "float64"

            self._keys = adopt_encoding(self, schema.names, label, label_type)
            self._label_dtype = self._label_type
            return
        self._feature_cols, self._label_col = select_columns(columns, features, label, self.path)
        if features is None:
            self.left_out = left_out(columns, self._feature_cols, self._label_col)
        self.feature_names = [c.name for c in self._feature_cols]
        self.label_name = self._label_col.name if self._label_col else None
        self._label_dtype = None if self._label_col is None else str(T.dtype.fields[self._label_col.key][0].base)
        self.nan_is_missing = True

    def _arrow(self, i: int, names: list[str]) -> pa.Table:
        """Chunk ``i``'s columns ``names`` as an Arrow table, with the meaning their writer gave them."""
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        blocks: dict[str, np.ndarray] = {}
        arrays = []
        try:
            for name in names:
                key, field, index, spec = self._fields[name]
                if key not in blocks:
                    blocks[key] = self._node(key)[a:b]
                v = blocks[key] if field is None else blocks[key][field]
                arrays.append(to_arrow(v if index is None else v[:, index], spec))
        except OSError as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({e})") from None
        return pa.table(arrays, names=names)

    def _tables(self, names: list[str], part: tuple[int, int] | None = None):
        """Chunks' columns ``names`` as Arrow tables, in order (the encoding's pass; ``part``: a share)."""
        return chunk_tables(self.n_chunks, self._arrow, names, part)

    def _set_bounds(self, d) -> None:
        row_bytes = d.dtype.itemsize * (d.shape[1] if d.ndim == 2 else 1)
        if d.chunks:
            check_chunk_size(d.chunks[0] * row_bytes, self.path, d.name)
        chunk_rows = d.chunks[0] if d.chunks else virtual_chunk_rows(1, row_bytes)
        self.bounds = uniform_bounds(self.n_rows, chunk_rows, self.path)
        self._compression = compression(d)

    # -- reading ------------------------------------------------------------------
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
            self._nodes = {}
        return self._file

    def _node(self, key: str):
        """The h5py Dataset object for ``key``, looked up once per open file."""
        f = self._handle()
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = f[key]
        return node

    def _load_chunk(self, i: int):
        if self.encoding is not None:
            return encoded_chunk(self, self._arrow(i, encoded_keys(self)), f"{self.path}, rows {self.bounds[i]}-{self.bounds[i + 1]}")
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        try:
            if self._table is not None:
                rows = self._node(self._table)[a:b]
                X = fill_features(self._feature_cols, b - a, self.dtype, lambda k: rows[k])
                y = as_labels(rows[self._label_col.key], self.path) if self._label_col else None
                if y is not None and y.ndim == 2 and self._label_col.index is not None:
                    y = y[:, self._label_col.index]
            else:
                X = as_features(self._node(self._x_key)[a:b], self.dtype, self.path)
                y = None if self._y_key is None else as_labels(self._node(self._y_key)[a:b], self.path)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({e})") from None
        return X, y

    def _load_labels(self, i: int):
        if self.encoding is not None:
            if self.label_name is None:
                return None
            table = self._arrow(i, [self.label_name])
            return as_labels(self.encoding.labels(table.column(self.label_name), self.path), self.path)
        if self._table is not None:
            return super()._load_labels(i)
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        try:
            return None if self._y_key is None else as_labels(self._node(self._y_key)[a:b], self.path)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read rows {a}-{b} ({e})") from None

    def _take(self, c, local, sparse):
        if not sparse or self._table is not None or self._compression or self.encoding is not None:
            return None  # compressed chunks decode whole anyway: read and cache the chunk
        start = int(self.bounds[c] + local[0])
        stop = int(self.bounds[c] + local[-1]) + 1
        idx = local - local[0]
        X = as_features(self._node(self._x_key)[start:stop][idx], self.dtype, self.path)
        y = None if self._y_key is None else as_labels(self._node(self._y_key)[start:stop][idx], self.path)
        return X, y

    @property
    def capabilities(self) -> Capabilities:
        in_place = self._row_maps() is not None
        return Capabilities(in_place=in_place, decodes_chunks=not in_place)

    def _read_rows(self, rows):
        maps = self._row_maps() if rows.size else None
        if maps is None:
            return super()._read_rows(rows)
        # Rows in any order, no sort: vectorised copies from the page cache, in as few pieces as
        # the budget for mapped pages allows.
        x, y, file_map = maps
        X = Y = None
        chunks = self.chunk_of(rows)
        for part in file_map.pieces(*chunks):
            if isinstance(part, slice):  # the whole gather at once
                X, Y = x.take(rows), None if y is None else y.take(rows)
                break
            if X is None:
                X = np.empty((len(rows), *x.row_shape), dtype=x.dtype)
                Y = None if y is None else np.empty((len(rows), *y.row_shape), dtype=y.dtype)
            X[part] = x.take(rows[part])
            if Y is not None:
                Y[part] = y.take(rows[part])
        X = as_features(X, self.dtype, self.path)
        Y = as_labels(Y, self.path)
        self.stats["rows_taken"] += len(rows)
        self.stats["bytes_read"] += X.nbytes + (0 if Y is None else Y.nbytes)
        return X, Y, self._screened(rows, chunks)

    def _chunk_to_screen(self, c: int):
        maps = self._row_maps()
        if maps is None:
            return super()._chunk_to_screen(c)
        x, y, file_map = maps
        file_map.admit(file_map.blocks(np.array([c])))  # count the pages the screen maps
        a, b = int(self.bounds[c]), int(self.bounds[c + 1])
        return x.view(a, b), None if y is None else y.view(a, b)  # screened where they lie: no copy

    def release(self) -> None:
        for maps in (self._maps or {}).values():
            maps[2].drop()

    def set_budget(self, nbytes: int) -> None:
        """Pages mapped from the file stay within ``max(cache_bytes, nbytes)`` (the shuffle's budget,
        which data gathered in place spends on mapped pages rather than window buffers)."""
        self._budget = max(self.cache_bytes, int(nbytes))
        for maps in (self._maps or {}).values():
            maps[2].limit_bytes = self._budget

    def prefetch(self, i: int) -> None:
        maps = self._row_maps()
        if maps is None:
            return super().prefetch(i)
        for m in maps[:2]:
            if m is not None:
                m.will_need(int(self.bounds[i]), int(self.bounds[i + 1]))

    def _row_maps(self):
        """``(X map, y map, file map)`` over the file's bytes when every row lies plainly in it, else None.

        The OS page cache is then the cache, and a gather of any rows is one
        vectorised copy: no per-chunk work, which is what makes global shuffle fast.
        """
        if self._maps is None or self._in_child_process():
            self._maps = {}
            if self._table is None and self.encoding is None:
                x = locate(self.path, self._node(self._x_key))
                y = None if self._y_key is None else locate(self.path, self._node(self._y_key))
                if x is not None and (self._y_key is None or y is not None):
                    file_map = FileMap(self.path, self._budget)
                    maps = [None if loc is None else RowMap(file_map, *loc) for loc in (x, y)]
                    for m in maps:
                        if m is not None:  # each chunk's rows' bytes
                            firsts, lasts = m.byte_start(self.bounds[:-1]), m.byte_start(self.bounds[1:] - 1)
                            file_map.add_ranges(firsts, lasts + m.row_bytes)
                    self._maps["rows"] = (*maps, file_map)
        return self._maps.get("rows")

    def _stamped_files(self):
        return [self.path]

    def label_dtype(self):
        return self._label_dtype

    def extra_info(self):
        return {"features_dataset": self._x_key, "stored_dtype": self._stored_dtype,
                "compression": self._compression}

    @property
    def selection(self):
        if self._table is not None and self.__dict__.get("_several_tables"):  # (its key: the one table chosen)
            return self._table
        if self.encoding is not None:  # (a matrix's columns are named by its attribute: reopened as the matrix)
            return list(self.encoding.inputs) if self._table is not None else self._x_key
        return list(self.feature_names) if self._table is not None else self._x_key

    def close(self):
        super().close()
        if not self._in_child_process():
            if self._file is not None:
                self._file.close()
            for maps in (self._maps or {}).values():
                for m in maps:
                    if m is not None:
                        m.close()
        self._file, self._nodes, self._maps = None, {}, None


def _strip(key: str | None) -> str | None:
    return key.lstrip("/") if isinstance(key, str) else key


def _refuse_pandas_fixed(f, path: str) -> None:
    """A DataFrame pandas wrote in HDF5's fixed format (``to_hdf``'s default: blocks of columns by
    type, no rows to read in chunks) is an error saying how to write it readably."""
    import h5py

    for key in f.keys():
        if not isinstance(f.get(key, getlink=True), h5py.HardLink):  # (no link is followed out of the file)
            continue
        node = f[key]
        kind = node.attrs.get("pandas_type") if isinstance(node, h5py.Group) else None
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind in ("frame", "series"):
            raise DataError(f"{path}: {key!r} is a pandas {'DataFrame' if kind == 'frame' else 'Series'} in HDF5's "
                            "fixed format (to_hdf's default: blocks of columns, not rows); write it with "
                            f"to_hdf(path, key={key!r}, format='table'), or as Parquet, to read it")
