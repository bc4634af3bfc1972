"""A decoded local copy of a compressed or remote dataset (``--cache-dir``).

The first run over a source that decodes chunks (gzip/Blosc HDF5, Zarr, Parquet, ``s3://``)
decodes it once, in order, into an uncompressed HDF5 file in the cache directory; later epochs,
runs and resumes gather rows from that file in place, as uncompressed HDF5 is read. The copy is
named by the source's fingerprint (its files' sizes and times, a hash of a few decoded chunks,
its layout, the feature selection and the dtype), so a changed source is never served from a
stale copy; it is written under a temporary name and renamed when complete.

``DecodedCopy`` keeps the source's identity (path, chunk boundaries, fingerprint): the shuffle,
the checkpoints and the resume checks see the source, and the batches are bitwise those of
decoding it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError, os_reason
from .base import Capabilities, Dataset

__all__ = ["DecodedCopy", "decoded_copy", "COPY_VERSION"]

COPY_VERSION = 1
_HEADROOM = 1 << 30  # free disk left to others after the copy


class DecodedCopy(Dataset):
    """``source`` as seen by training, its rows read from ``copy`` (an in-place HDF5 dataset)."""

    def __init__(self, source: Dataset, copy: Dataset, copy_path: Path, fingerprint: dict):
        super().__init__(source.cache_bytes, source.dtype)
        self.source, self.copy, self.copy_path = source, copy, copy_path
        self._fingerprint = fingerprint  # the source's, taken once (it decodes a few chunks)
        self.path, self.format, self.nonfinite = source.path, source.format, source.nonfinite
        self.n_rows, self.bounds = source.n_rows, source.bounds
        self.feature_names, self.label_name = source.feature_names, source.label_name
        self.encoding = source.encoding
        copy.nonfinite = source.nonfinite
        copy.missing_label = source.missing_labels  # (the copy has no encoding of its own)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(in_place=True, decodes_chunks=False, remote=False)

    @property
    def selection(self):
        return self.source.selection

    def _load_chunk(self, i: int):
        X, y, _ = self.copy._read_rows(np.arange(self.bounds[i], self.bounds[i + 1], dtype=np.int64))
        return X, y

    def _read_rows(self, rows):
        return self.copy._read_rows(rows)  # in place, any order; the copy screens as the source would

    def _chunk_to_screen(self, c: int):
        return self._load_chunk(c)

    def prefetch(self, i: int) -> None:
        pass  # gathered in place: nothing to decode ahead

    def set_budget(self, nbytes: int) -> None:
        self.copy.set_budget(nbytes)

    def release(self) -> None:
        self.copy.release()

    def label_dtype(self):
        return self.source.label_dtype()

    def extra_info(self):
        return {**self.source.extra_info(), "decoded_copy": str(self.copy_path)}

    def fingerprint(self):
        return dict(self._fingerprint)

    def stamp_soon(self) -> None:
        """Nothing to make: the source's fingerprint was taken when the copy was."""

    def close(self) -> None:
        super().close()
        self.copy.close()
        self.source.close()


def _key(source: Dataset, fingerprint: dict) -> str:
    what = {"fingerprint": fingerprint, "selection": source.selection, "label": source.label_name,
            "dtype": source.dtype.str, "version": COPY_VERSION}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _open_copy(path: Path, source: Dataset) -> Dataset | None:
    """The copy at ``path`` if it is complete and matches ``source``; None otherwise."""
    from . import open_dataset

    try:
        copy = open_dataset(path, "X", "y" if source.label_name is not None else None, dtype=source.dtype,
                            nonfinite=source.nonfinite)
    except Exception:  # a damaged copy is rebuilt, never trusted
        return None
    if copy.n_rows != source.n_rows or copy.n_features != source.n_features or not copy.capabilities.in_place:
        copy.close()
        return None
    return copy


def decoded_copy(source: Dataset, cache_dir: str | os.PathLike, max_gb: float,
                 log: Callable[[str], None] | None = None) -> Dataset:
    """``source`` read from its decoded copy in ``cache_dir`` (made now if there is none); the
    source itself where it needs no copy or none can be made (too large for ``max_gb`` or the free
    disk), with a message saying why."""
    caps = source.capabilities
    if caps.in_place or not (caps.decodes_chunks or caps.remote):
        return source  # read in place already
    say = log or (lambda message: None)
    directory = Path(cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{directory}: cannot use it as the cache directory ({os_reason(e)})") from None
    fingerprint = source.fingerprint()
    path = directory / f"{_key(source, fingerprint)}.h5"
    copy = _open_copy(path, source) if path.exists() else None
    if copy is not None:
        say(f"reading {source.path} from its decoded copy {path}")
        return DecodedCopy(source, copy, path, fingerprint)
    label_dtype = source.label_dtype()  # numeric: the readers refuse other labels
    row_bytes = source.n_features * source.dtype.itemsize + (0 if label_dtype is None else
                                                             np.dtype(label_dtype).itemsize)
    need = source.n_rows * row_bytes
    if need > max_gb * 2**30:
        say(f"{source.path}: its decoded copy would take {need / 2**30:.2f} GB, over --cache-max-gb {max_gb:g}; "
            "decoding it every epoch")
        return source
    free = shutil.disk_usage(directory).free
    if need + _HEADROOM > free:
        say(f"{source.path}: its decoded copy would take {need / 2**30:.2f} GB and {directory} has "
            f"{free / 2**30:.2f} GB free; decoding it every epoch")
        return source
    say(f"decoding {source.path} once into {path} ({need / 2**20:,.0f} MB)")
    try:
        _write(source, path, label_dtype)
    except OSError as e:
        raise DataError(f"{directory}: cannot write the decoded copy of {source.path} ({os_reason(e)})") from None
    copy = _open_copy(path, source)
    if copy is None:  # pragma: no cover - a copy just written that does not open is a bug
        raise RuntimeError(f"{path}: the decoded copy just written does not open")
    return DecodedCopy(source, copy, path, fingerprint)


def _write(source: Dataset, path: Path, label_dtype: str | None) -> None:
    """Decode ``source`` chunk by chunk into an uncompressed HDF5 file, atomically."""
    import h5py

    # (machines that share the cache directory each write their own; their process ids may be alike)
    tmp = path.with_name(f".{path.stem}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            # uncompressed chunks of about 8 MB: gathered in place, and screened and mapped a chunk at a time
            chunk = max(1, min(source.n_rows, (8 << 20) // (source.n_features * source.dtype.itemsize)))
            X = f.create_dataset("X", (source.n_rows, source.n_features), dtype=source.dtype,
                                 chunks=(chunk, source.n_features))
            y = None if label_dtype is None else f.create_dataset("y", (source.n_rows,), dtype=label_dtype)
            for i in range(source.n_chunks):
                a, b = int(source.bounds[i]), int(source.bounds[i + 1])
                # checked as the source is read (a NaN under "error" names its row), written as decoded,
                # so that the copy skips the same rows under "skip"
                Xi, yi, _ = source.load_chunk(i)
                X[a:b] = Xi
                if y is not None:
                    y[a:b] = np.asarray(yi).reshape(-1)
            f.attrs["source"] = json.dumps({"path": str(source.path), "version": COPY_VERSION})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
