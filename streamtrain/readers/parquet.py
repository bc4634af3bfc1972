"""Parquet reader: a file or a (hive-partitioned) directory of files; row groups are the chunks.

Columns may be one per feature or a fixed-size-list column holding all
features; only the selected columns of each row group are read.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES, Capabilities, Dataset
from .columns import Column, fill_features, left_out, select_columns, vector_columns
from .layout import MAX_CHUNK_BYTES, MAX_CHUNKS, as_labels
from .remote import is_url, open_filesystem
from .tabular import adopt_encoding, chunk_tables, encoded_chunk, encoded_keys, many_name, plan_table

__all__ = ["ParquetDataset"]

# Open file handles kept at once for a many-file dataset.
MAX_OPEN_FILES = 16


def _columns(schema) -> list[Column]:
    import pyarrow.types as pat

    def numeric(t):
        return pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t)

    cols: list[Column] = []
    for field in schema:
        t = field.type
        if pat.is_dictionary(t):
            t = t.value_type
        if pat.is_fixed_size_list(t):
            cols += vector_columns(field.name, t.list_size, numeric(t.value_type), type=str(field.type))
        else:
            cols.append(Column(field.name, field.name, None, numeric(t), type=str(field.type)))
    return cols


class ParquetDataset(Dataset):
    """Rows of a Parquet file or directory dataset (pandas, polars, DuckDB, Spark, pyarrow.dataset)."""

    format = "parquet"
    _UNPICKLED = {**Dataset._UNPICKLED, "_handles": OrderedDict, "_metadata": None}  # open files are reopened where used

    def __init__(self, path: str, features: list[str] | str | None = None, label: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32,
                 storage_options: dict | None = None, allow_missing_chunks: bool = False,
                 encoding: dict | None = None, encode: dict | None = None, name: str | None = None):
        # (allow_missing_chunks: accepted for every format; a Parquet row group is always written)
        # encoding: a model's learned column encoding (its state); encode: options to learn one;
        # name: how messages name the data (a CSV file read through its Parquet copy)
        import pyarrow as pa
        import pyarrow.dataset as pds

        super().__init__(cache_bytes, dtype)
        # Several files (a list, from a glob) are one dataset: their rows in the list's order.
        many = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else None
        self.path = name or (many_name(many) if many else str(path))
        self._storage_options = storage_options or {}
        fs, root = open_filesystem(many[0] if many else str(path), self._storage_options)
        self._fs = fs
        for p in many or [str(path)]:
            if not is_url(p) and not os.path.exists(p):
                raise DataError(f"{p}: no such file or directory")
        try:
            if many:
                roots = [open_filesystem(p, self._storage_options)[1] for p in many]
                files = [f for r in roots for f in (pds.dataset(r, format="parquet", filesystem=fs).files
                                                    if _is_dir(fs, r) else [r])]
                dataset = pds.dataset(files, format="parquet", filesystem=fs)
            else:
                try:
                    dataset = pds.dataset(root, format="parquet", partitioning="hive", filesystem=fs)
                except Exception:
                    # Some writers (polars) also keep the partition column in the files, with another
                    # type than hive discovery infers: then the files' own columns are the truth.
                    dataset = pds.dataset(root, format="parquet", filesystem=fs)
            fragments = list(dataset.get_fragments())
            parts, self._files, self._partitions, stored = [], [], [], []
            self._strings: list[list[str]] = []  # each file's string columns (kept through pickling)
            for f_idx, frag in enumerate(fragments):
                frag.ensure_complete_metadata()
                self._files.append(frag.path)
                self._partitions.append(pds.get_partition_keys(frag.partition_expression) or {})
                stored.append(set(frag.physical_schema.names))
                self._strings.append([f.name for f in frag.physical_schema
                                      if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)])
                parts += [(f_idx, rg.id, rg.num_rows) for rg in frag.row_groups if rg.num_rows]
        except DataError:
            raise
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a bad footer
            raise DataError(f"{self.path}: not a readable Parquet file or dataset ({_first_line(e)})") from None
        if not fragments:
            raise DataError(f"{self.path}: no Parquet files found")
        schema = dataset.schema
        self._parts = parts
        self.bounds = np.concatenate([[0], np.cumsum([p[2] for p in parts], dtype=np.int64)]).astype(np.int64)
        self.n_rows = int(self.bounds[-1])
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._metadata = [frag.metadata for frag in fragments]
        self._leaves_of: dict[int, dict[str, list[int]]] = {}
        # Hive partition keys (part=a/ directories) are not features unless named.
        partition_keys = set().union(*self._partitions) if self._partitions else set()
        self.notes: list[tuple[str, str]] = []
        self.encoding = plan_table(schema, features, label, self.path, self._tables, self._null_count,
                                   partition_keys, encoding, encode, notes=self.notes)
        if self.encoding is not None:
            self._encoded(schema, label, partition_keys)
        else:
            self.columns = [c if c.key not in partition_keys else replace(c, auto=False) for c in _columns(schema)]
            self._feature_cols, self._label_col = select_columns(self.columns, features, label, self.path)
            if features is None:
                self.left_out = left_out(self.columns, self._feature_cols, self._label_col)
            self.feature_names = [c.name for c in self._feature_cols]
            self.label_name = self._label_col.name if self._label_col else None
            self._label_type = None if self._label_col is None else str(schema.field(self._label_col.key).type)
            self._keys = list(dict.fromkeys([c.key for c in self._feature_cols]
                                            + ([self._label_col.key] if self._label_col else [])))
        for f_idx, names in enumerate(stored):  # files of one dataset whose columns disagree
            missing = [k for k in self._keys if k not in names and k not in self._partitions[f_idx]]
            if missing:
                raise DataError(f"{self._files[f_idx]}: has no column {missing[0]!r}, which {self.path} "
                                "selects (the files' columns disagree; select common columns with --features)")
        self._check_declared_rows()
        first = fragments[0].metadata
        self._compression = first.row_group(0).column(0).compression if first.num_row_groups else None
        self._n_files = len(fragments)
        self._check_layout()

    def _encoded(self, schema, label, partition_keys: set) -> None:
        """Features and label from the learned encoding (strings, categories, missing values...)."""
        def label_type(plain: bool) -> str:  # as read: numbers with missing values are float64 (NaN)
            name = self.encoding.label_name
            return str(schema.field(name).type) if plain and self._null_count(name) == 0 else "float64"

        self._feature_cols, self._label_col = [], None
        self._keys = adopt_encoding(self, schema.names, label, label_type,
                                    [(k, "a hive partition key: used only when named in --features")
                                     for k in sorted(partition_keys) if k not in self.encoding.keys])

    def _leaves(self, f_idx: int) -> dict[str, list[int]]:
        """File ``f_idx``'s leaf columns by the top-level column they store ("x", or "x.list.element"
        for a list; a column named "a.b" beside "a" counts toward both: at worst "a" is encoded
        needlessly). Made once per file: asked column by column it was quadratic in the columns."""
        found = self._leaves_of.get(f_idx)
        if found is None:
            schema, found = self._metadata[f_idx].schema, {}
            for j in range(len(schema)):
                path = schema.column(j).path
                for k in range(len(path)):
                    if k == len(path) - 1 or path[k + 1] == ".":
                        found.setdefault(path[:k + 1], []).append(j)
            self._leaves_of[f_idx] = found
        return found

    def _null_count(self, key: str) -> int | None:
        """Missing values of a column as the files' statistics record them (None: not recorded)."""
        total = 0
        for f_idx, meta in enumerate(self._metadata):
            if key in self._partitions[f_idx]:
                continue
            leaves = self._leaves(f_idx).get(key)
            if not leaves:
                raise DataError(f"{self._files[f_idx]}: has no column {key!r}, which {self.path} selects (the files' "
                                "columns disagree; select common columns with --features)")
            for r in range(meta.num_row_groups):
                for j in leaves:
                    stats = meta.row_group(r).column(j).statistics
                    if stats is None or not stats.has_null_count:
                        return None
                    total += stats.null_count
        return total

    def _tables(self, keys: list[str], part: tuple[int, int] | None = None):
        """Row groups' ``keys`` columns as Arrow tables, in order (the encoding's pass; ``part``: a share)."""
        return chunk_tables(self.n_chunks, self._table, keys, part)

    def _check_declared_rows(self) -> None:
        """Refuse a row group whose declared rows would decode to more than a chunk may hold, before
        anything is allocated for it: a footer may claim any number (10^12 rows in a 38 kB file)."""
        row_bytes = len(self.feature_names) * self.dtype.itemsize + (8 if self._label_col is not None else 0)
        if len(self._parts) > MAX_CHUNKS:
            raise DataError(f"{self.path}: declares {len(self._parts)} row groups, more than {MAX_CHUNKS}; "
                            "refused as malformed")
        # A row group is read whole: one that would not fit in half the memory free now cannot be
        # read here whether its footer lies or not (a sound wide table's 1M-row groups still can).
        limit = max(MAX_CHUNK_BYTES, _free_memory() // 2)
        for f_idx, rg, rows in self._parts:
            if rows * row_bytes > limit:
                raise DataError(f"{self._files[f_idx]}: row group {rg} declares {rows:,} rows, "
                                f"{rows * row_bytes / 2**30:,.1f} GiB decoded, more than the {limit / 2**30:,.1f} GiB "
                                "a row group may take here (half the free memory); if the file is sound, rewrite it "
                                "with smaller row groups (pyarrow.parquet.write_table(..., row_group_size=1_000_000))")

    def _file(self, f_idx: int):
        import pyarrow.parquet as pq

        if self._in_child_process():
            self._handles.clear()
            self._pid = os.getpid()
        handle = self._handles.get(f_idx)
        if handle is None:
            # Strings as Parquet keeps them, a dictionary per column chunk: hashed and counted once
            # per value there, and never made into a string array of every row (most of the
            # encoding pass over a click log's string columns, and of reading them)
            handle = pq.ParquetFile(self._fs.open_input_file(self._files[f_idx]) if hasattr(self._fs, "open_input_file")
                                    else self._fs.open(self._files[f_idx], "rb"),
                                    read_dictionary=self._strings[f_idx] or None)
            self._handles[f_idx] = handle
            while len(self._handles) > MAX_OPEN_FILES:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(f_idx)
        return handle

    def _table(self, i: int, keys: list[str]):
        """Row group ``i``'s ``keys`` columns (only those read; hive partition values as constant columns)."""
        import pyarrow as pa

        f_idx, rg, n = self._parts[i]
        partition = self._partitions[f_idx]
        stored = [k for k in keys if k not in partition]
        try:
            table = self._file(f_idx).read_row_group(rg, columns=stored)
            have = set(table.column_names)  # (a property that builds its list anew at each call)
            missing = [k for k in stored if k not in have]
            if missing:
                raise DataError(f"{self._files[f_idx]}: has no column {missing[0]!r} (changed since it was opened?)")
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self._files[f_idx]}: cannot read row group {rg} ({_first_line(e)})") from None
        for k in keys:
            if k in partition:
                table = table.append_column(k, pa.array([partition[k]] * n))
        return table

    def _fetcher(self, i: int, keys: list[str]):
        """``(fetch(key) -> array, rows)`` over row group ``i``'s ``keys`` (only those columns read)."""
        import pyarrow.types as pat

        f_idx, rg, n = self._parts[i]
        partition = self._partitions[f_idx]
        table = self._table(i, [k for k in keys if k not in partition])

        def fetch(key):
            if key in partition:  # hive partition value: constant for the whole file
                return np.full(n, partition[key])
            col = table.column(key)
            if col.null_count:
                raise DataError(f"{self._files[f_idx]}: column {key!r} has missing values in row group {rg}")
            if pat.is_fixed_size_list(col.type):
                flat = col.combine_chunks().flatten().to_numpy()
                return flat.reshape(n, col.type.list_size)
            return col.to_numpy()

        return fetch, n

    def _load_chunk(self, i: int):
        if self.encoding is not None:
            return encoded_chunk(self, self._table(i, encoded_keys(self)), self._where(i))
        fetch, n = self._fetcher(i, self._keys)
        try:
            X = fill_features(self._feature_cols, n, self.dtype, fetch)
        except (ValueError, TypeError) as e:
            raise DataError(f"{self._files[self._parts[i][0]]}: cannot convert features to numbers ({e})") from None
        y = as_labels(fetch(self._label_col.key), self.path) if self._label_col else None
        return X, y

    def _where(self, i: int) -> str:
        """Chunk ``i`` as a message names it."""
        return f"{self._files[self._parts[i][0]]}, row group {self._parts[i][1]}"

    def _load_labels(self, i: int):
        if self.label_name is None:
            return None
        if self.encoding is not None:
            table = self._table(i, [self.label_name])
            return as_labels(self.encoding.labels(table.column(self.label_name), self.path), self.path)
        fetch, _ = self._fetcher(i, [self._label_col.key])
        return as_labels(fetch(self._label_col.key), self.path)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(decodes_chunks=True, remote=is_url(self.path))

    def _stamped_files(self):
        return [] if is_url(self.path) else list(self._files)

    @property
    def selection(self):
        if self.encoding is not None:
            return list(self.encoding.inputs)
        return list(self.feature_names)

    def label_dtype(self):
        return self._label_type

    def extra_info(self):
        return {"files": self._n_files, "compression": self._compression}

    def close(self):
        super().close()
        if not self._in_child_process():
            for h in self._handles.values():
                h.close()
        self._handles.clear()


def _is_dir(fs, path: str) -> bool:
    """Whether ``path`` is a directory of a pyarrow or an fsspec filesystem."""
    if hasattr(fs, "get_file_info"):
        return fs.get_file_info(path).type.name == "Directory"
    return fs.isdir(path)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _free_memory() -> int:
    """The memory free now (Linux's available pages), or 0 where the platform does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
