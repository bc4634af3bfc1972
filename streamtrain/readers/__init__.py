"""Chunked readers: one module per format, one Dataset interface for all."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES, Dataset
from .formats import FORMATS, Format, format_for, load, register
from .many import ManyFiles, expand, is_many
from .memory import ArrayDataset
from .remote import is_url, open_filesystem, remote_error

__all__ = ["open_dataset", "Dataset", "ArrayDataset", "detect_format", "FORMATS", "Format", "register"]


def detect_format(path: str | os.PathLike) -> str:
    """The format name of a path, from its suffix (the table in ``formats``) or, for directories
    without one, its contents."""
    p = Path(str(path).rstrip("/"))
    try:
        return format_for(p).name
    except DataError:
        if is_url(path):
            return _detect_remote(str(path))
        if p.is_dir():
            if (p / "zarr.json").exists() or (p / ".zgroup").exists():
                return "zarr"
            if _first_data_file_is_parquet(p):
                return "parquet"
            files = [f.name for f in p.iterdir() if not f.name.startswith((".", "_"))][:5]
            raise DataError(f"{path}: a directory with neither a Zarr group nor Parquet files in it ("
                            + (f"found: {', '.join(sorted(files))}" if files else "it is empty") + ")") from None
        raise


def _detect_remote(url: str) -> str:
    """The format of a remote prefix without a telling suffix: a Zarr group or Parquet files under it."""
    fs, root = open_filesystem(url)
    root = root.rstrip("/")
    try:
        if fs.exists(f"{root}/zarr.json") or fs.exists(f"{root}/.zgroup"):
            return "zarr"
        if any(f.endswith(FORMATS["parquet"].suffixes) for f in fs.find(root)):
            return "parquet"
    except Exception as e:  # credentials, network, permissions: whatever the filesystem raises
        raise DataError(f"{url}: cannot list it ({remote_error(e)})") from None
    raise DataError(f"{url}: no Zarr group or Parquet files found there")


def _first_data_file_is_parquet(directory: Path) -> bool:
    """True if the first data file under ``directory`` (hidden and ``_`` files skipped, as Spark
    and pyarrow.dataset do) is Parquet, by suffix or by its ``PAR1`` magic bytes."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if name.startswith((".", "_")):
                continue
            if name.endswith(FORMATS["parquet"].suffixes):
                return True
            with open(os.path.join(root, name), "rb") as fh:
                return fh.read(4) == b"PAR1"
    return False


def open_dataset(source, features=None, label: str | None = None, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32,
                 nonfinite: str = "error", **options) -> Dataset:
    """Open a dataset without reading its rows.

    Parameters
    ----------
    source : str, os.PathLike, Dataset, (X, y) tuple, ndarray, pandas DataFrame or Arrow table
        A path whose suffix names its format (``.h5``, ``.zarr``, ``.parquet``, ...: the table in
        ``readers.formats``), a directory (Zarr group, Parquet dataset), a URL (``s3://...``, read
        through fsspec; ``storage_options=`` goes to it), arrays ``X`` (rows, features) and ``y``
        (rows,), or a table whose label column is found as for Parquet. A ``Dataset`` is returned
        as it is.
    features : str or list of str, optional
        The feature dataset/array path, or the feature columns (names or globs, in order). None:
        found by the readers' rules (docs/formats.md).
    label : str, optional
        The label dataset/array/column. None: found by name (y, label, target, ...).
    cache_bytes : int
        The bound on the decoded chunks kept in memory.
    dtype : numpy dtype
        The features' type once read (float32 by default).
    nonfinite : {"error", "skip"}
        A row holding NaN or Inf is an error naming it, or is skipped.
    **options
        Reader options (``storage_options``, ``allow_missing_chunks``, ``allow_external``).

    Returns
    -------
    Dataset
        ``n_rows``, ``n_features``, ``feature_names``, ``label_name``; rows are read by chunk.

    Examples
    --------
    >>> ds = open_dataset("data/breast_cancer.h5")
    >>> ds.n_rows, ds.n_features, ds.label_name
    (569, 30, 'y')
    """
    if nonfinite not in ("error", "skip"):
        raise ValueError("nonfinite must be 'error' or 'skip'")
    if isinstance(source, Dataset):
        return source  # already open: its own settings stand
    ds = _open(source, features, label, cache_bytes, dtype, options)
    ds.nonfinite = nonfinite
    if isinstance(source, (str, os.PathLike)) or is_many(source):
        # How to open it again elsewhere (the decoding process), as plain JSON.
        reopen = {"source": expand(source) if is_many(source) else os.fspath(source), "features": features, "label": label,
                  "dtype": np.dtype(dtype).str, "nonfinite": nonfinite, "options": options}
        if ds.encoding is not None:  # learned once here; elsewhere it is applied, not learned again
            reopen["options"] = {**options, "encoding": ds.encoding.state_dict()}
        try:
            ds.reopen = json.loads(json.dumps(reopen))
        except (TypeError, ValueError):
            pass
    return ds


def reopen_dataset(spec: dict, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Dataset:
    """Open again, in another process, the dataset whose ``reopen`` spec (plain JSON) this is."""
    from .subset import HoldoutSplit

    ds = open_dataset(spec["source"], spec["features"], spec["label"], cache_bytes=cache_bytes,
                      dtype=spec["dtype"], nonfinite=spec["nonfinite"], **spec["options"])
    for split in spec.get("splits", []):  # hold-out splits taken of it, innermost first
        ds = HoldoutSplit(ds, **split)
    return ds


def _open(source, features, label, cache_bytes, dtype, options) -> Dataset:
    if isinstance(source, tuple) and len(source) == 2:
        return ArrayDataset(source[0], source[1], cache_bytes=cache_bytes, dtype=dtype)
    if isinstance(source, np.ndarray):
        return ArrayDataset(source, None, cache_bytes=cache_bytes, dtype=dtype)
    if is_many(source):
        return _open_many(expand(source), features, label, cache_bytes, dtype, options)
    if _is_table(source):
        return ArrayDataset.from_table(source, features, label, cache_bytes=cache_bytes, dtype=dtype,
                                       **{k: v for k, v in options.items() if k in ("encoding", "encode")})
    path = os.fspath(source)
    if not is_url(path) and not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory")
    fmt = detect_format(path)
    cls = load(FORMATS[fmt].reader)
    if "encode" in options and "encoding" not in inspect.signature(cls).parameters and only_classes(options["encode"]):
        options = {k: v for k, v in options.items() if k != "encode"}  # --classes alone: the labels take it
    if ("encode" in options or "encoding" in options) and "encoding" not in inspect.signature(cls).parameters:
        raise DataError(f"{path}: column encoding settings (categorical, numeric, hash, drop, max_categories, "
                        f"min_frequency, hash_buckets, one_hot_max, missing) apply to tables (Parquet, CSV, data frames, HDF5 and Zarr tables), not to {fmt}")
    try:
        return cls(path, features=features, label=label, cache_bytes=cache_bytes, dtype=dtype, **options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise DataError(f"{path}: option not supported for {fmt}: {e}") from None
        raise


def _open_many(paths: list[str], features, label, cache_bytes, dtype, options) -> Dataset:
    """Several files as one dataset: tables by their reader (one encoding over all), others joined."""
    if len(paths) == 1:
        return _open(paths[0], features, label, cache_bytes, dtype, options)
    formats = {p: detect_format(p) for p in paths}
    kinds = sorted(set(formats.values()))
    if len(kinds) > 1:
        other = next(p for p in paths if formats[p] != formats[paths[0]])
        raise DataError(f"{other}: is {formats[other]}, where {paths[0]} is {formats[paths[0]]}; the files of one "
                        "dataset must share a format")
    fmt = kinds[0]
    cls = load(FORMATS[fmt].reader)
    if fmt in ("parquet", "csv", "jsonl"):
        return cls(paths, features=features, label=label, cache_bytes=cache_bytes, dtype=dtype, **options)
    parts = []
    try:
        for p in paths:
            parts.append(_open(p, features, label, cache_bytes, dtype, options))
            if len(parts) == 1 and parts[0].encoding is not None and "encoding" not in options:
                # one encoding over every file (learned again: the first file's covers it alone)
                options = {**options, "encoding": _learn_many(parts[0], paths, features, label, cache_bytes,
                                                             dtype, options).state_dict()}
                parts[0].close()
                parts[0] = _open(p, features, label, cache_bytes, dtype, options)
        return ManyFiles(parts)
    except BaseException:
        for ds in parts:
            ds.close()
        raise


def _learn_many(first: Dataset, paths: list[str], features, label, cache_bytes, dtype, options):
    """The encoding of the columns ``first`` (the first file, opened) chose, learned in one pass
    over every file of ``paths`` (HDF5 or Zarr: files whose columns need an encoding)."""
    from itertools import chain

    from .tabular import many_name, plan_table

    plain = {k: v for k, v in options.items() if k not in ("encode", "encoding")}
    cls = type(first)
    opened: list[Dataset] = [first]

    def tables(keys):
        if len(opened) == 1:  # the others, opened once (a pass may ask more than once), with the first's encoding
            for path in paths[1:]:
                opened.append(cls(path, features=features, label=label, cache_bytes=cache_bytes, dtype=dtype,
                                  encoding=first.encoding.state_dict(), **plain))
        return chain(*(ds._tables(keys) for ds in opened))

    try:
        return plan_table(first._arrow_schema, features, label, many_name(paths), tables, lambda name: 0,
                          encode=options.get("encode"), nan_missing=True)
    finally:
        for ds in opened[1:]:
            ds.close()


def _is_table(obj) -> bool:
    """A pandas DataFrame or an Arrow table (checked by name, to import neither)."""
    return type(obj).__name__ in ("DataFrame", "Table") and hasattr(obj, "columns")


def only_classes(encode: dict) -> bool:
    """Whether column-encoding options give nothing but ``classes`` (the rest at their defaults)."""
    from ..features.encoding import EncodingOptions

    defaults = EncodingOptions()
    return all(v == getattr(defaults, k) for k, v in encode.items() if k != "classes")
