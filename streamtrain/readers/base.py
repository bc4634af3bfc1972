"""The Dataset interface every reader implements: chunks of rows, read whole or gathered.

A dataset is a table of ``n_rows`` rows split into chunks (row ranges that are
cheap to read whole: HDF5 chunks, Zarr chunks or shards, Parquet row groups).
Readers implement ``_load_chunk`` and declare their ``capabilities``; gathering
arbitrary rows, the bounded chunk cache (``cache.py``) and the NaN/Inf screen
(``screen.py``) are shared here; what a dataset is (``describe``, ``fingerprint``) is
``identity.py``'s.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .cache import ChunkCache
from .identity import Identity
from .layout import kept
from .screen import bad_rows, unlabelled_rows

__all__ = ["Dataset", "Capabilities", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 64 << 20
# A run of rows from an uncached chunk spanning at most 1/this of it is read on its own.
SPARSE_SPAN_FRACTION = 8

Batch = tuple[np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class Capabilities:
    """How a dataset is read, which decides how the loader serves it.

    ``in_place``: any rows, in any order, are copied straight from memory or the page cache, with
    no chunk to decode (arrays, uncompressed HDF5): a shuffle needs no window buffers.
    ``in_memory``: every row is in this process's memory already: nothing to read ahead.
    ``decodes_chunks``: reading means decoding whole chunks (compression, columnar files): worth
    doing ahead, in worker processes for shuffle windows.
    ``remote``: rows come over a network (fsspec URLs).
    """

    in_place: bool = False
    in_memory: bool = False
    decodes_chunks: bool = True
    remote: bool = False


class Dataset(Identity):
    """Rows of features (and optionally a label) stored in chunks.

    Subclasses set ``path``, ``n_rows``, ``feature_names``, ``label_name``,
    ``bounds`` (int64 chunk boundaries, shape ``(n_chunks + 1,)``), ``format``
    and implement ``_load_chunk(i) -> (X, y)``.
    """

    format: str = "?"
    path: str
    n_rows: int
    feature_names: list[str]
    label_name: str | None
    bounds: np.ndarray
    dtype: np.dtype

    #: The learned column encoding (``features.encoding.Encoding``) of a table with strings,
    #: categories or missing values; None where the features are read as they are stored.
    encoding = None
    #: Whether an encoded chunk reads and encodes its columns of codes (False: they are left 0, a
    #: statistics pass's setting; codes are never scaled, and hashing them is most of a click log's reading).
    read_codes = True
    #: Whether a NaN in a column is a missing value the encoding can impute (HDF5 and Zarr tables,
    #: where a float's NaN is how pandas and xarray store one), for the screen's advice.
    nan_is_missing = False

    @property
    def label_classes(self) -> list | None:
        """A class label's own values (strings, categories), whose indices the labels read are; None
        where labels are read as they are stored."""
        return None if self.encoding is None else self.encoding.classes

    @property
    def missing_labels(self) -> str:
        """Rows whose label is missing (an encoded table's nulls): "skip" them (the default where the
        columns are encoded), or "error" as any NaN is; set ``missing_label`` to choose."""
        return self.__dict__.get("missing_label") or ("skip" if self.encoding is not None else "error")

    #: What to do with rows holding NaN or Inf: "error" (naming the row) or "skip" them.
    nonfinite: str = "error"
    #: How ``open_dataset`` can open this dataset again in another process (JSON), if it can.
    reopen: dict | None = None

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32):
        self.cache_bytes = int(cache_bytes)
        self.dtype = np.dtype(dtype)
        self._cache = ChunkCache(self.cache_bytes)
        self._io_lock = threading.Lock()
        self._pid = os.getpid()
        self._skipped: dict[int, np.ndarray] = {}  # chunk -> keep mask, for nonfinite="skip"
        self._unlabelled: dict[int, int] = {}  # chunk -> how many of its skipped rows lack only a label
        # What reading cost: decoded bytes and chunks read, rows taken directly (read amplification).
        self.stats = {"bytes_read": 0, "chunks_read": 0, "rows_taken": 0}

    @property
    def capabilities(self) -> Capabilities:
        """How this dataset is read (the loader chooses its source from this)."""
        return Capabilities()

    # -- layout -----------------------------------------------------------
    @property
    def selection(self):
        """The ``features`` argument that reopens this dataset with the same feature selection."""
        return getattr(self, "_x_key", None) or list(self.feature_names)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_chunks(self) -> int:
        return len(self.bounds) - 1

    @property
    def chunk_sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def _check_layout(self) -> None:
        if self.n_rows == 0:
            raise DataError(f"{self.path}: the dataset has zero rows")
        if self.n_features == 0:
            raise DataError(f"{self.path}: no feature columns selected")

    # -- reading ----------------------------------------------------------
    def _load_chunk(self, i: int) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def _in_child_process(self) -> bool:
        """True after a fork: file handles opened by the parent must not be reused."""
        return os.getpid() != self._pid

    def read_chunk(self, i: int) -> Batch:
        """Features ``(rows, n_features)`` and labels ``(rows,)`` of chunk ``i`` (cached)."""
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} out of range for {self.n_chunks} chunks")
        block, loaded = self._cache.get_or_load(i, lambda: self._checked(i, *self._load_locked(i)))
        if loaded:
            self.stats["chunks_read"] += 1
            self.stats["bytes_read"] += block[0].nbytes + (0 if block[1] is None else block[1].nbytes)
        return block

    def load_chunk(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Chunk ``i`` decoded now, bypassing the cache: ``(X, y, keep)``, where ``keep`` marks the
        rows to use under nonfinite="skip" (None: all). For readers that decode windows of chunks."""
        X, y = self._checked(i, *self._load_locked(i))
        return X, y, self._skipped.get(i)

    def _load_locked(self, i: int) -> Batch:
        # File handles are not shared between threads mid-read: one decode at a time per
        # dataset; the other thread meanwhile gathers rows from cached chunks.
        with self._io_lock:
            return self._load_chunk(i)

    def _checked(self, i: int, X: np.ndarray, y: np.ndarray | None) -> Batch:
        """Chunk ``i`` after the NaN/Inf policy: unchanged, or an error naming the row.

        With "skip", the chunk is returned whole (so row numbers still line up with the
        file) and a keep-mask is remembered; ``read`` and ``iter_chunks`` drop those rows.
        """
        clean = self._clean_flags()
        if clean[i] or i in self._skipped:
            return X, y  # screened before: files are taken as unchanging while open
        bad = self._bad_rows(int(self.bounds[i]), X, y)
        if bad is None:
            clean[i] = True
        else:
            self._skipped[i] = ~bad
            self._unlabelled[i] = unlabelled_rows(X, y, bad)
        return X, y

    def rows_left_out(self, part: tuple[int, int] = (0, 1)) -> tuple[int, int]:
        """Of the chunks screened so far (those ``i % part[1] == part[0]``): the rows left out for
        having no label (their features whole), and those left out for NaN or Inf in a feature."""
        skipped = unlabelled = 0
        for i, keep in self._skipped.items():
            if i % part[1] == part[0]:
                skipped += int(keep.size - np.count_nonzero(keep))
                unlabelled += self._unlabelled.get(i, 0)
        return unlabelled, skipped - unlabelled

    def _clean_flags(self) -> np.ndarray:
        """Per chunk: screened and free of NaN/Inf."""
        clean = self.__dict__.get("_clean")
        if clean is None or len(clean) != self.n_chunks:
            clean = self._clean = np.zeros(self.n_chunks, dtype=bool)
        return clean

    def chunk_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The chunk of each row, and the chunks touched (ascending)."""
        uniform = self.__dict__.get("_uniform_rows")
        if uniform is None:  # rows per chunk if all chunks but a shorter last one are equal, else 0
            sizes = self.chunk_sizes
            same = len(sizes) == 1 or sizes[:-1].min() == sizes[:-1].max() >= sizes[-1]
            uniform = self._uniform_rows = int(sizes[0]) if same else 0
        if uniform:
            chunk_of = rows // uniform
        else:
            chunk_of = np.searchsorted(self.bounds, rows, side="right") - 1
        seen = np.zeros(self.n_chunks, dtype=bool)
        seen[chunk_of] = True
        return chunk_of, np.flatnonzero(seen)

    def _screened(self, rows: np.ndarray, chunks: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
        """Keep-mask of ``rows`` under the NaN/Inf policy (None: keep all), for formats that gather
        rows without reading their chunks: each chunk touched is screened whole, once per open.
        ``chunks``: ``self.chunk_of(rows)``, if known."""
        chunk_of, touched = chunks or self.chunk_of(rows)
        clean = self._clean_flags()
        if clean[touched].all():
            return None
        touched = touched.tolist()
        for c in touched:
            if not clean[c] and c not in self._skipped:
                X, y = self._chunk_to_screen(c)
                self.stats["chunks_read"] += 1
                self.stats["bytes_read"] += X.nbytes + (0 if y is None else y.nbytes)
                self._checked(c, X, y)
        keep = None
        for c in touched:
            mask = self._skipped.get(c)
            if mask is not None:
                keep = np.ones(len(rows), dtype=bool) if keep is None else keep
                sel = chunk_of == c
                keep[sel] = mask[rows[sel] - self.bounds[c]]
        return keep

    def _chunk_to_screen(self, c: int) -> Batch:
        """Chunk ``c`` as stored, for the NaN/Inf screen (formats gathering in place may lend a view)."""
        return self._load_locked(c)

    def _bad_rows(self, rows: int | np.ndarray, X: np.ndarray, y: np.ndarray | None) -> np.ndarray | None:
        """Mask of rows holding NaN/Inf (None if there are none); raises under nonfinite="error"."""
        return bad_rows(X, y, rows, self.nonfinite, self.path, self.missing_labels,
                        getattr(self, "feature_names", None), self.nan_is_missing, self._label_option)

    @property
    def _label_option(self) -> str:
        """The option that leaves rows without a label out: a table's own, else any NaN row's."""
        return "--missing-label skip" if self.encoding is not None or "missing_label" in self.__dict__ \
            else "--skip-nonfinite"

    def _take(self, c: int, local: np.ndarray, sparse: bool) -> Batch | None:
        """Rows ``local`` (sorted) of chunk ``c`` read directly, without the whole chunk, or None.

        ``sparse`` says the rows span a small part of the chunk. Formats that can
        read a few rows cheaply (uncompressed HDF5, memory) override this.
        """
        return None

    def _gather_from(self, c: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(X, y, keep)`` for sorted ``local`` rows of chunk ``c``.

        A cached chunk serves them; otherwise the format may read just those rows
        (global shuffle touches many chunks for a row or two each, and reading
        whole chunks for them would multiply the I/O); otherwise the whole chunk
        is read and cached.
        """
        hit = self._cache.get(c)
        if hit is None:
            sparse = (int(local[-1] - local[0]) + 1) * SPARSE_SPAN_FRACTION <= self.chunk_sizes[c]
            got = self._take(c, local, sparse)
            if got is not None:
                X, y = got
                self.stats["rows_taken"] += len(local)
                self.stats["bytes_read"] += X.nbytes + (0 if y is None else y.nbytes)
                bad = self._bad_rows(local + self.bounds[c], X, y)
                return X, y, None if bad is None else ~bad
        X, y = hit if hit is not None else self.read_chunk(c)
        keep = self._skipped.get(c)
        return X[local], None if y is None else y[local], None if keep is None else keep[local]

    def read(self, rows: npt.ArrayLike) -> Batch:
        """Gather the given rows (sorted ascending) as ``(X, y)``.

        Only the chunks that hold the rows are touched, each once. Under
        nonfinite="skip" rows holding NaN/Inf are left out.
        """
        rows = self._checked_rows(rows)
        if rows.size > 1 and np.any(rows[1:] < rows[:-1]):
            raise ValueError("rows must be sorted ascending")
        return kept(*self._read_rows(rows))

    def gather(self, rows: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(X, y, keep)`` of ``rows`` in the given order (any order, repeats allowed).

        ``keep`` is None, or marks the rows to use: the others hold NaN/Inf and are
        skipped under nonfinite="skip" (``kept`` applies it).
        """
        rows = self._checked_rows(rows)
        if self.capabilities.in_place or rows.size < 2 or not np.any(rows[1:] < rows[:-1]):
            return self._read_rows(rows)  # data gathered in place takes rows in any order: no sort
        order = np.argsort(rows, kind="stable")
        sorted_parts = self._read_rows(rows[order])
        out = []
        for a in sorted_parts:  # back to the asked order
            if a is not None:
                b = np.empty_like(a)
                b[order] = a
                a = b
            out.append(a)
        return tuple(out)

    def _checked_rows(self, rows: npt.ArrayLike) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"row index out of range for {self.n_rows} rows")
        return rows

    def _read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(X, y, keep)`` of ``rows``: sorted, chunk by chunk here; in any order where the
        format gathers in place (``capabilities.in_place``)."""
        X_out = np.empty((rows.size, self.n_features), dtype=self.dtype)
        y_out = None
        keep_out = None
        if rows.size:
            chunk_of = np.searchsorted(self.bounds, rows, side="right") - 1
            # Start of each run of rows that fall in the same chunk.
            starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
            for a, b in zip(starts, np.r_[starts[1:], rows.size]):
                c = int(chunk_of[a])
                X, y, keep = self._gather_from(c, rows[a:b] - self.bounds[c])
                X_out[a:b] = X
                if y is not None:
                    if y_out is None:
                        y_out = np.empty((rows.size,) + y.shape[1:], dtype=y.dtype)
                    y_out[a:b] = y
                if keep is not None:
                    if keep_out is None:
                        keep_out = np.ones(rows.size, dtype=bool)
                    keep_out[a:b] = keep
        return X_out, y_out, keep_out

    def set_budget(self, nbytes: int) -> None:
        """The memory the loader's shuffle may use (only data gathered in place from a mapped file
        has a use for it: its mapped pages, there being no window buffers)."""

    def release(self) -> None:
        """The rows read so far are done with (only data gathered in place from a mapped file acts
        on it: its mapped pages leave the process)."""

    def prefetch(self, i: int) -> None:
        """Have chunk ``i`` ready for the reads to come (a hint: errors surface when it is read)."""
        self.read_chunk(i)

    def iter_chunks(self, part: tuple[int, int] = (0, 1)):
        """Yield ``(X, y)`` for every chunk in order, bypassing the cache (skipped rows dropped);
        ``part=(k, n)``: only chunks ``i`` with ``i % n == k`` (one process's share)."""
        # (the chunks whole, as the stamp reads them: not a statistics pass's, without its codes)
        watch = self._stamp_watch() if part == (0, 1) and self.read_codes else None
        for i in range(part[0], self.n_chunks, part[1]):
            X, y = self._load_chunk(i)
            if watch is not None:  # (the content stamp's sampled chunks, hashed as they go by)
                watch.see(i, X, y)
            X, y = self._checked(i, X, y)
            keep = self._skipped.get(i)
            if keep is not None:
                X, y = X[keep], None if y is None else y[keep]
            yield X, y
            # Drop our references before reading the next chunk, so its memory can be reused
            # (fresh pages cost a page fault each: as much as reading uncompressed data).
            del X, y
        if watch is not None:
            watch.done()

    def _load_labels(self, i: int) -> np.ndarray | None:
        """The labels of chunk ``i`` as stored (formats that can read them alone override this)."""
        return self._load_chunk(i)[1]

    def iter_labels(self, part: tuple[int, int] = (0, 1)):
        """Yield the labels of every chunk in order (of chunks ``i % part[1] == part[0]``), without
        reading features where the format stores them apart (rows with a non-finite label: an
        error, or skipped)."""
        for i in range(part[0], self.n_chunks, part[1]):
            y = self._load_labels(i)
            if y is None:
                return
            bad = bad_rows(np.zeros((len(y), 0), np.float32), y, int(self.bounds[i]), self.nonfinite, self.path,
                           self.missing_labels, label_option=self._label_option)
            yield y if bad is None else y[~bad]

    def close(self) -> None:
        """Release file handles and cached chunks."""
        self._cache.clear()

    # Picklable (for spawn-started worker processes): what stays behind, as {attribute: its value in
    # the copy} (a callable makes a fresh one); a reader adds its own handles to its class's table.
    _UNPICKLED: dict[str, Any] = {"_cache": None, "_io_lock": None}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state):
        self.__dict__.update(state)
        for k, v in self._UNPICKLED.items():
            setattr(self, k, v() if callable(v) else v)
        self._cache, self._io_lock = ChunkCache(self.cache_bytes), threading.Lock()
        self._pid = os.getpid()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path!r}: {self.n_rows} rows x "
                f"{self.n_features} features, label={self.label_name!r}, {self.n_chunks} chunks>")
