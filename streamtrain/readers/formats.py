"""The one table of file formats: name -> suffixes, reader, writer, compressions.

``open_dataset``, the writers (``make-data``, ``predict``), the service's landing directory and
the CLI's help all read it, so a format is added here alone: a ``Format`` whose reader is a
``Dataset`` class and whose writer is an ``io.writers.Writer`` class (either given as the class,
or as ``"module:name"``, imported on first use so that h5py, zarr and pyarrow load only when used).

>>> format_for("runs/pred.parquet").name
'parquet'
>>> format_for("notes.txt")
Traceback (most recent call last):
...
streamtrain.errors.DataError: notes.txt: unknown format; use one of .h5, .hdf5, .hdf, .he5, .zarr, .zip, .parquet, .pq, .parq, .csv, .csv.gz, .csv.zst, .csv.bz2, .tsv, .tsv.gz, .jsonl, .ndjson, .jsonl.gz, .jsonl.zst, .ndjson.gz
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["Format", "FORMATS", "register", "format_for", "suffixes", "load"]


@dataclass(frozen=True)
class Format:
    """A file format. ``reader``/``writer``: a class or ``"module:name"`` (None: not read / not
    written); ``compressions``: what the writer can compress with (None: uncompressed), the first
    being its default."""

    name: str
    suffixes: tuple[str, ...]
    reader: Any = None
    writer: Any = None
    compressions: tuple = (None,)


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add (or replace) a format in the table; returns it."""
    FORMATS[fmt.name] = fmt
    return fmt


register(Format("hdf5", (".h5", ".hdf5", ".hdf", ".he5"), "streamtrain.readers.hdf5:HDF5Dataset",
                "streamtrain.io.writers:HDF5Writer", (None, "gzip", "lzf")))
register(Format("zarr", (".zarr", ".zip"), "streamtrain.readers.zarr:ZarrDataset",
                "streamtrain.io.writers:ZarrWriter", ("zstd", None, "gzip", "blosc")))
register(Format("parquet", (".parquet", ".pq", ".parq"), "streamtrain.readers.parquet:ParquetDataset",
                "streamtrain.io.writers:ParquetWriter", ("snappy", None, "zstd", "gzip", "lz4", "brotli")))
register(Format("csv", (".csv", ".csv.gz", ".csv.zst", ".csv.bz2", ".tsv", ".tsv.gz"),
                "streamtrain.readers.text:CSVDataset", "streamtrain.io.writers:CSVWriter"))
register(Format("jsonl", (".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".ndjson.gz"),
                "streamtrain.readers.text:JSONLinesDataset"))


def load(ref):
    """The class a table entry names (``"module:name"`` imported now), or the class itself."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def suffixes(readable: bool = True) -> tuple[str, ...]:
    """Every suffix of the formats streamtrain reads (``readable=False``: writes; a compressed
    text suffix such as ``.csv.gz`` is read only)."""
    return tuple(s for f in FORMATS.values() if (f.reader if readable else f.writer) for s in f.suffixes
                 if readable or s.count(".") == 1)


def format_for(path: str | os.PathLike, readable: bool = True) -> Format:
    """The format a path's suffix names; one ``DataError`` for every unknown suffix, listing the
    suffixes that are read (``readable=False``: written)."""
    name = Path(str(path).rstrip("/")).name.lower()
    # the longest suffix that fits: data.csv.gz is compressed CSV, not gzip
    known = sorted(((s, f) for f in FORMATS.values() for s in f.suffixes), key=lambda x: -len(x[0]))
    for suffix, f in known:
        if name.endswith(suffix) and name != suffix and suffix in suffixes(readable) \
                and (f.reader if readable else f.writer):
            return f
    raise DataError(f"{path}: unknown format; use one of {', '.join(suffixes(readable))}")
