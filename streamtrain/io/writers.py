"""Chunk-by-chunk writers for HDF5, Zarr and Parquet, each committed atomically.

Used by ``make-data``, ``predict`` and the sample-data script: rows arrive in
blocks and are written as they come, so memory stays flat whatever the size.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from ..errors import DataError, os_reason
from ..readers.formats import format_for, load
from .atomic import atomic_path
from .outputs import check_output

__all__ = ["open_writer", "Writer", "HDF5Writer", "ZarrWriter", "ParquetWriter", "CSVWriter"]


class Writer:
    """Rows appended block by block to a temporary path (``open(tmp)``, ``_write(at, X, y)``,
    ``close()`` or ``abort()``); ``open_writer`` renames it into place. A format's writer in
    ``readers.formats`` is a subclass."""

    def __init__(self, path: Path, n_rows: int, feature_names, label_name, label_dtype,
                 chunk_rows: int, compression, dtype):
        self.path, self.n_rows, self.chunk_rows = path, int(n_rows), int(chunk_rows)
        self.feature_names, self.label_name = list(feature_names), label_name
        self.label_dtype = None if label_dtype is None else np.dtype(label_dtype)
        self.compression, self.dtype = compression, np.dtype(dtype)
        self.written = 0

    def write(self, X: np.ndarray, y: np.ndarray | None) -> None:
        """Append a block of rows."""
        n = X.shape[0]
        if self.written + n > self.n_rows:
            raise ValueError(f"{self.path}: more rows written than the {self.n_rows} declared")
        self._write(self.written, X, y)
        self.written += n

    def close(self) -> None:
        if self.written != self.n_rows:
            raise ValueError(f"{self.path}: {self.written} rows written, {self.n_rows} declared")

    def layout(self) -> str:
        """Where the columns are in the file, as a message names them: ``columns a, b, y``."""
        return "columns " + ", ".join(self.feature_names + ([self.label_name] if self.label_name else []))


class _Matrix(Writer):
    """A format that keeps the columns as one 2-D array ``X`` (their names in its ``feature_names``
    attribute) beside the label's 1-D array."""

    def layout(self) -> str:
        return (f"array X ({', '.join(self.feature_names)}: its feature_names attribute)"
                + (f" and array {self.label_name}" if self.label_name else ""))


class HDF5Writer(_Matrix):
    def open(self, tmp: Path):
        import h5py

        opts = {} if self.compression in (None, "none") else {"compression": self.compression}
        self._f = h5py.File(tmp, "w")
        chunks = (min(self.chunk_rows, self.n_rows), len(self.feature_names))
        self._X = self._f.create_dataset("X", (self.n_rows, len(self.feature_names)), self.dtype, chunks=chunks, **opts)
        self._X.attrs["feature_names"] = np.array(self.feature_names, dtype=h5py.string_dtype())
        self._y = None
        if self.label_name:
            text = self.label_dtype.kind in "UO"  # a class label's own values: UTF-8 strings
            self._y = self._f.create_dataset(self.label_name, (self.n_rows,),
                                             h5py.string_dtype() if text else self.label_dtype,
                                             chunks=(chunks[0],), **opts)

    def _write(self, a, X, y):
        self._X[a:a + len(X)] = X
        if self._y is not None:
            self._y[a:a + len(X)] = y.astype(object) if y.dtype.kind == "U" else y

    def close(self):
        super().close()
        self._f.close()

    def abort(self):
        self._f.close()


class ZarrWriter(_Matrix):
    def open(self, tmp: Path):
        import zarr

        compressors = None if self.compression in (None, "none") else [_zarr_codec(self.compression)]
        group = zarr.create_group(store=str(tmp), zarr_format=3)
        rows = min(self.chunk_rows, self.n_rows)
        self._X = group.create_array("X", shape=(self.n_rows, len(self.feature_names)), chunks=(rows, len(self.feature_names)),
                                     dtype=self.dtype, compressors=compressors)
        self._X.attrs["feature_names"] = self.feature_names
        self._y = None
        if self.label_name:
            text = self.label_dtype.kind in "UO"  # a class label's own values: Zarr's string type
            self._y = group.create_array(self.label_name, shape=(self.n_rows,), chunks=(rows,),
                                         dtype=str if text else self.label_dtype, compressors=compressors)

    def _write(self, a, X, y):
        self._X[a:a + len(X)] = X
        if self._y is not None:
            self._y[a:a + len(X)] = y

    def abort(self):
        pass


def _zarr_codec(name: str):
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    table = {"zstd": lambda: ZstdCodec(level=3), "gzip": lambda: GzipCodec(level=5),
             "blosc": lambda: BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")}
    if name not in table:
        raise DataError(f"zarr compression {name!r} unknown; use one of none, {', '.join(table)}")
    return table[name]()


class ParquetWriter(Writer):
    def open(self, tmp: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [pa.field(n, pa.from_numpy_dtype(self.dtype)) for n in self.feature_names]
        if self.label_name:
            fields.append(pa.field(self.label_name, pa.from_numpy_dtype(self.label_dtype)))
        self._schema = pa.schema(fields)
        self._w = pq.ParquetWriter(tmp, self._schema, compression=self.compression or "none")
        self._pending_X, self._pending_y, self._pending = [], [], 0

    def _write(self, a, X, y):
        # Buffer blocks so each row group has chunk_rows rows whatever the block size.
        self._pending_X.append(X)
        self._pending_y.append(y)
        self._pending += len(X)
        while self._pending >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def _flush(self, n):
        import pyarrow as pa

        X = np.concatenate(self._pending_X)
        y = np.concatenate(self._pending_y) if self.label_name else None
        cols = [pa.array(X[:n, j]) for j in range(X.shape[1])]
        if self.label_name:
            cols.append(pa.array(y[:n]))
        self._w.write_table(pa.Table.from_arrays(cols, schema=self._schema), row_group_size=n)
        self._pending_X, self._pending_y = [X[n:]], [y[n:] if y is not None else None]
        self._pending = len(X) - n

    def close(self):
        super().close()
        if self._pending:
            self._flush(self._pending)
        self._w.close()

    def abort(self):
        self._w.close()


class CSVWriter(Writer):
    """CSV with a header row (predictions); tab-separated for ``.tsv``."""

    def open(self, tmp: Path):
        self._sep = "\t" if self.path.name.lower().endswith(".tsv") else ","
        self._fh = open(tmp, "w", newline="")
        header = self.feature_names + ([self.label_name] if self.label_name else [])
        self._fh.write(self._sep.join(_csv_field(h, self._sep) for h in header) + "\n")

    def _write(self, a, X, y):
        if y is not None and y.dtype.kind in "UOb":  # a class label's own values (True, False), quoted where needed
            text = io.StringIO()
            np.savetxt(text, X, fmt="%.9g", delimiter=self._sep)
            lines = text.getvalue().splitlines()
            self._fh.write("".join(f"{line}{self._sep}{_csv_field(str(v), self._sep)}\n" for line, v in zip(lines, y)))
            return
        block = X if y is None else np.column_stack([X, y.astype(np.float64)])
        fmt = ["%.9g"] * X.shape[1] + (["%.17g" if self.label_dtype is not None and self.label_dtype.kind == "f"
                                         else "%d"] if y is not None else [])
        np.savetxt(self._fh, block, fmt=fmt, delimiter=self._sep)

    def close(self):
        super().close()
        self._fh.close()

    def abort(self):
        self._fh.close()


def _csv_field(name: str, sep: str = ",") -> str:
    return '"' + name.replace('"', '""') + '"' if any(c in name for c in sep + '"\n\r') else name


@contextlib.contextmanager
def open_writer(path: str | os.PathLike, n_rows: int, feature_names, label_name: str | None = "y",
                label_dtype="int32", chunk_rows: int = 16384, compression: str | None = "default",
                dtype="float32", overwrite: bool = False, inputs=()):
    """Context manager yielding a writer with ``write(X, y)``; the file appears atomically on success.

    The format comes from the suffix of ``path`` (.h5, .zarr, .parquet, or .csv). ``n_rows``
    must be known up front. ``inputs``: the paths the command reads, which it must not replace
    (see ``io.outputs``).
    """
    path = Path(path)
    fmt = format_for(path, readable=False)
    if compression == "default":
        compression = fmt.compressions[0]
    compression = None if compression == "none" else compression
    if compression not in fmt.compressions:
        raise DataError(f"{path}: {fmt.name} compression {compression!r} unknown; use one of "
                        f"{', '.join(c or 'none' for c in fmt.compressions)}")
    check_output(path, overwrite=overwrite, inputs=inputs)
    writer = load(fmt.writer)(path, n_rows, feature_names, label_name, label_dtype, chunk_rows, compression, dtype)
    try:
        with atomic_path(path) as tmp:
            writer.open(tmp)
            try:
                yield writer
            except BaseException:
                writer.abort()
                raise
            writer.close()
    except OSError as e:  # disk full, permissions, a vanished directory: the old file (if any) is intact
        raise DataError(f"{path}: cannot write ({os_reason(e)})") from None
