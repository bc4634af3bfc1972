"""Several files of one format as one dataset: their rows one after the other, in the order given
(a sorted glob), each file's chunks in the sampler's plan, the fingerprint covering every file.

Tables (Parquet, CSV, JSON lines) are opened as one dataset by their reader, which learns one
encoding over all files; other formats (HDF5, Zarr) are opened file by file and joined here,
their feature names and label checked to agree.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from ..errors import DataError
from .base import Capabilities, Dataset
from .tabular import many_name

__all__ = ["ManyFiles", "expand", "is_many"]

GLOB_CHARS = "*?["


def is_many(source) -> bool:
    """A list of paths, or a path with glob characters that names no file itself."""
    if isinstance(source, list):
        return bool(source) and all(isinstance(s, (str, os.PathLike)) for s in source)
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        return any(c in s for c in GLOB_CHARS) and not os.path.exists(s) and "://" not in s
    return False


def expand(source) -> list[str]:
    """The files a list or a glob names, in order (a glob's matches sorted); a DataError for a glob
    that matches nothing."""
    if isinstance(source, list):
        return [os.fspath(s) for s in source]
    pattern = os.fspath(source)
    found = sorted(glob.glob(pattern, recursive=True))
    if not found:
        raise DataError(f"{pattern}: no files match")
    return found


class ManyFiles(Dataset):
    """The rows of several datasets of one format, one after the other."""

    def __init__(self, parts: list[Dataset]):
        first = parts[0]
        super().__init__(first.cache_bytes, first.dtype)
        self.parts = parts
        self.path = many_name([p.path for p in parts])
        self.format = first.format
        self.feature_names, self.label_name = list(first.feature_names), first.label_name
        for p in parts[1:]:
            if list(p.feature_names) != self.feature_names:
                diff = next((f"{a!r} vs {b!r}" for a, b in zip(p.feature_names, self.feature_names) if a != b),
                            f"{p.n_features} features vs {first.n_features}")
                raise DataError(f"{p.path}: its features differ from {first.path}'s ({diff}); the files of one "
                                "dataset must hold the same features (select common ones with --features)")
            if p.label_name != self.label_name:
                raise DataError(f"{p.path}: its label {p.label_name!r} differs from {first.path}'s "
                                f"{self.label_name!r}")
        self._starts = np.cumsum([0] + [p.n_rows for p in parts]).astype(np.int64)
        self.n_rows = int(self._starts[-1])
        self.bounds = np.concatenate([[0]] + [p.bounds[1:] + s for p, s in zip(parts, self._starts)]).astype(np.int64)
        self._chunk_part = np.concatenate([np.full(p.n_chunks, k) for k, p in enumerate(parts)]).astype(np.int64)
        self._chunk_first = np.cumsum([0] + [p.n_chunks for p in parts]).astype(np.int64)
        self.left_out = first.left_out
        self.notes = list(getattr(first, "notes", ()))  # (plain numbers: the first file's first chunk looked at)
        self.encoding = first.encoding  # one over every file (learned by the opener)
        self._check_layout()

    @property
    def nonfinite(self) -> str:
        return self.parts[0].nonfinite

    @nonfinite.setter
    def nonfinite(self, policy: str) -> None:  # each file screens the rows it gathers in place
        for p in self.parts:
            p.nonfinite = policy

    @property
    def read_codes(self) -> bool:
        return self.parts[0].read_codes

    @read_codes.setter
    def read_codes(self, value: bool) -> None:  # each file reads its own chunks
        for p in self.parts:
            p.read_codes = value

    def _local(self, i: int) -> tuple[Dataset, int]:
        k = int(self._chunk_part[i])
        return self.parts[k], i - int(self._chunk_first[k])

    @property
    def capabilities(self) -> Capabilities:
        caps = [p.capabilities for p in self.parts]
        return Capabilities(in_place=all(c.in_place for c in caps), in_memory=all(c.in_memory for c in caps),
                            decodes_chunks=any(c.decodes_chunks for c in caps), remote=any(c.remote for c in caps))

    @property
    def selection(self):
        return self.parts[0].selection

    def _load_chunk(self, i: int):
        part, local = self._local(i)
        return part._load_chunk(local)

    def _load_labels(self, i: int):
        part, local = self._local(i)
        return part._load_labels(local)

    def _read_rows(self, rows: np.ndarray):
        if not self.capabilities.in_place:
            return super()._read_rows(rows)  # chunk by chunk, through this dataset's cache and screen
        # in place: each file gathers its own rows, in any order
        X = np.empty((rows.size, self.n_features), dtype=self.dtype)
        y = keep = None
        part_of = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(part_of).tolist():
            sel = part_of == k
            Xk, yk, kk = self.parts[k]._read_rows(rows[sel] - self._starts[k])
            X[sel] = Xk
            if yk is not None:
                if y is None:
                    y = np.empty((rows.size,) + yk.shape[1:], dtype=yk.dtype)
                y[sel] = yk
            if kk is not None:
                keep = np.ones(rows.size, dtype=bool) if keep is None else keep
                keep[sel] = kk
        return X, y, keep

    def prefetch(self, i: int) -> None:
        part, local = self._local(i)
        part.prefetch(local)

    def set_budget(self, nbytes: int) -> None:
        for p in self.parts:
            p.set_budget(nbytes // len(self.parts))

    def release(self) -> None:
        for p in self.parts:
            p.release()

    def label_dtype(self):
        return self.parts[0].label_dtype()

    def extra_info(self):
        return {"files": len(self.parts), **{k: v for k, v in self.parts[0].extra_info().items() if k != "files"}}

    def _stamped_files(self):
        return [f for p in self.parts for f in p._stamped_files()]

    def fingerprint(self):
        fp = super().fingerprint()
        fp["files"] = [os.path.abspath(p.path) for p in self.parts]
        return fp

    def close(self):
        super().close()
        for p in self.parts:
            p.close()
