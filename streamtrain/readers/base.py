"""The Dataset interface every reader implements: chunks of rows, read whole or gathered.

A dataset is a table of ``n_rows`` rows split into chunks (row ranges that are
cheap to read whole: HDF5 chunks, Zarr chunks or shards, Parquet row groups).
Readers implement ``_load_chunk``; gathering arbitrary sorted rows and the
bounded chunk cache are shared here.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError

__all__ = ["Dataset", "DEFAULT_CACHE_BYTES", "uniform_bounds", "as_features", "as_labels", "kept"]

DEFAULT_CACHE_BYTES = 64 << 20
# A run of rows from an uncached chunk spanning at most 1/this of it is read on its own.
SPARSE_SPAN_FRACTION = 8
# Contiguous (unchunked) sources are split into virtual chunks of about this size.
VIRTUAL_CHUNK_BYTES = 4 << 20

Batch = tuple[np.ndarray, "np.ndarray | None"]


# More chunks than this (a 128 MB boundary table) means malformed metadata, not data.
MAX_CHUNKS = 1 << 24


def uniform_bounds(n_rows: int, chunk_rows: int, path: str = "<data>") -> np.ndarray:
    """Chunk boundaries ``[0, r, 2r, ..., n_rows]`` for chunks of ``chunk_rows`` rows."""
    chunk_rows = max(1, int(chunk_rows))
    if -(-int(n_rows) // chunk_rows) > MAX_CHUNKS:
        raise DataError(f"{path}: declares {n_rows} rows in chunks of {chunk_rows}: more than "
                        f"{MAX_CHUNKS} chunks; refused as malformed")
    bounds = np.arange(0, n_rows, chunk_rows, dtype=np.int64)
    return np.append(bounds, np.int64(n_rows))


def virtual_chunk_rows(n_features: int, itemsize: int) -> int:
    """Rows per virtual chunk for a source without a chunk layout of its own."""
    return max(1, VIRTUAL_CHUNK_BYTES // max(1, n_features * itemsize))


def as_features(X: np.ndarray, dtype: npt.DTypeLike, path: str) -> np.ndarray:
    """Cast a block of raw feature values to ``dtype`` as a 2-D C-contiguous array."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: features have non-numeric dtype {X.dtype}")
    if X.ndim == 1:
        X = X[:, None]
    return np.ascontiguousarray(X, dtype=dtype)


def as_labels(y: np.ndarray | None, path: str) -> np.ndarray | None:
    """Labels as stored, except bool becomes int8 so arithmetic works."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: label has non-numeric dtype {y.dtype}")
    if y.dtype.kind == "b":
        y = y.astype(np.int8)
    return y


def kept(X: np.ndarray, y: np.ndarray | None, keep: np.ndarray | None = None) -> Batch:
    """``(X, y)`` less the rows that ``keep`` leaves out (rows skipped for NaN/Inf)."""
    if keep is None:
        return X, y
    return X[keep], None if y is None else y[keep]


class Dataset:
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

    #: What to do with rows holding NaN or Inf: "error" (naming the row) or "skip" them.
    nonfinite: str = "error"
    #: Whether decoding chunks ahead in a second thread pays (not for data already in memory).
    prefetchable: bool = True
    #: Whether any rows, in any order, are gathered straight from memory or the page cache with
    #: no chunk to decode (in-memory arrays, uncompressed HDF5): shuffling then needs no window buffers.
    in_place: bool = False
    #: How ``open_dataset`` can open this dataset again in another process (JSON), if it can.
    reopen: dict | None = None

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES, dtype: npt.DTypeLike = np.float32):
        self.cache_bytes = int(cache_bytes)
        self.dtype = np.dtype(dtype)
        self._cache: OrderedDict[int, Batch] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._inflight: dict[int, threading.Event] = {}
        self._pid = os.getpid()
        self._skipped: dict[int, np.ndarray] = {}  # chunk -> keep mask, for nonfinite="skip"
        # What reading cost: decoded bytes and chunks read, rows taken directly (read amplification).
        self.stats = {"bytes_read": 0, "chunks_read": 0, "rows_taken": 0}

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
        """Features ``(rows, n_features)`` and labels ``(rows,)`` of chunk ``i``."""
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} out of range for {self.n_chunks} chunks")
        # Two threads (the loader and its chunk prefetcher) may ask for the same chunk:
        # the first decodes it, the other waits for that result instead of decoding it again.
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
            pending = self._inflight.get(i)
            if pending is None:
                self._inflight[i] = threading.Event()
        if pending is not None:
            pending.wait()
            with self._lock:
                hit = self._cache.get(i)
            if hit is not None:
                return hit
            return self._checked(i, *self._load_locked(i))  # evicted meanwhile: read it again, uncached
        try:
            X, y = self._checked(i, *self._load_locked(i))
            self.stats["chunks_read"] += 1
            self.stats["bytes_read"] += X.nbytes + (0 if y is None else y.nbytes)
            self._remember(i, (X, y))
        finally:
            with self._lock:
                self._inflight.pop(i).set()
        return X, y

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
        return X, y

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
        """Mask of rows holding NaN/Inf (None if there are none); raises under nonfinite="error".

        ``rows``: the row number of each row of ``X``, or of its first row where they follow on."""
        # A cheap screen finds NaN/Inf; only then is the row located exactly.
        with np.errstate(over="ignore", invalid="ignore"):
            # min and max propagate NaN and show +-Inf; single-threaded, unlike a BLAS dot whose
            # spinning worker threads slow the reader on a 2-core machine.
            suspect = (X.dtype.kind == "f" and len(X) and not (np.isfinite(X.min()) and np.isfinite(X.max()))) or (
                y is not None and y.dtype.kind == "f" and not np.isfinite(y.sum()))
        if not suspect:
            return None
        bad = ~np.isfinite(X).all(axis=1) if X.dtype.kind == "f" else np.zeros(len(X), bool)
        if y is not None and y.dtype.kind == "f":
            bad |= ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        if not bad.any():
            return None
        if self.nonfinite == "error":
            at = int(np.argmax(bad))
            row = rows + at if isinstance(rows, int) else int(rows[at])
            raise DataError(f"{self.path}: NaN or Inf in row {row}; clean the data or skip such rows "
                            "(--skip-nonfinite, nonfinite='skip')")
        return bad

    def _remember(self, i: int, block: Batch) -> None:
        size = block[0].nbytes + (0 if block[1] is None else block[1].nbytes)
        if size > self.cache_bytes:
            return
        with self._lock:
            if i in self._cache:
                return
            self._cache[i] = block
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, (X, y) = self._cache.popitem(last=False)
                self._cached_bytes -= X.nbytes + (0 if y is None else y.nbytes)

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
        with self._lock:
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
        if self.in_place or rows.size < 2 or not np.any(rows[1:] < rows[:-1]):
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
        format gathers in place (``in_place``)."""
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

    def iter_chunks(self):
        """Yield ``(X, y)`` for every chunk in order, bypassing the cache (skipped rows dropped)."""
        for i in range(self.n_chunks):
            X, y = self._checked(i, *self._load_chunk(i))
            keep = self._skipped.get(i)
            if keep is not None:
                X, y = X[keep], None if y is None else y[keep]
            yield X, y
            # Drop our references before reading the next chunk, so its memory can be reused
            # (fresh pages cost a page fault each: as much as reading uncompressed data).
            del X, y

    # -- description ------------------------------------------------------
    def label_dtype(self) -> str | None:
        """The stored label dtype as a string, or None without a label."""
        return None

    def extra_info(self) -> dict[str, Any]:
        """Format-specific facts for ``inspect`` (compression, dataset paths...)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What ``inspect`` prints: layout and selection, without reading data."""
        sizes = self.chunk_sizes
        info = {
            "path": self.path,
            "format": self.format,
            "n_rows": int(self.n_rows),
            "n_features": self.n_features,
            "feature_names": list(self.feature_names),
            "label": self.label_name,
            "label_dtype": self.label_dtype(),
            "n_chunks": int(self.n_chunks),
            "chunk_rows_max": int(sizes.max()) if sizes.size else 0,
            "chunk_rows_min": int(sizes.min()) if sizes.size else 0,
        }
        info.update(self.extra_info())
        return info

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the data for resume checks: layout and names, and ``content``, which changes
        when the data is rewritten in place (see ``content_stamp``)."""
        return {
            "path": os.path.abspath(self.path) if self.format != "memory" else self.path,
            "format": self.format,
            "n_rows": int(self.n_rows),
            "feature_names": list(self.feature_names),
            "label": self.label_name,
            "n_chunks": int(self.n_chunks),
            "chunk_rows_max": int(self.chunk_sizes.max()),
            "content": self.content_stamp(),
        }

    #: Chunks whose bytes ``content_stamp`` hashes (first, middle, last).
    SAMPLED_CHUNKS = 3

    def content_stamp(self) -> str:
        """A SHA-256 of what is cheap to know about the data's content: the size and modification
        time of each local file read (``_stamped_files``) and the decoded bytes of a few chunks."""
        h = hashlib.sha256()
        for path in self._stamped_files():
            try:
                st = os.stat(path)
                h.update(f"{os.path.basename(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}|missing\n".encode())
        picks = sorted({0, self.n_chunks // 2, self.n_chunks - 1})[:self.SAMPLED_CHUNKS]
        for c in picks:
            X, y = self._load_locked(c)
            h.update(np.ascontiguousarray(X).tobytes())
            if y is not None:
                h.update(np.ascontiguousarray(y).tobytes())
        return h.hexdigest()

    def _stamped_files(self) -> list[str]:
        """The local files whose size and modification time stand for the content (none here)."""
        return []

    def close(self) -> None:
        """Release file handles and cached chunks."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    # Picklable (for spawn-started worker processes): handles, lock and cache stay behind.
    _UNPICKLED = {"_file": None, "_nodes": {}, "_maps": None, "_handles": None, "_cache": None,
                  "_cached_bytes": 0, "_lock": None, "_io_lock": None, "_inflight": None}

    def __getstate__(self):
        return {k: (self._UNPICKLED[k] if k in self._UNPICKLED else v) for k, v in self.__dict__.items()}

    def __setstate__(self, state):
        from collections import OrderedDict as _OD

        self.__dict__.update(state)
        self._cache, self._cached_bytes, self._lock = _OD(), 0, threading.Lock()
        self._io_lock, self._inflight = threading.Lock(), {}
        if "_handles" in state:
            self._handles = _OD()
        self._pid = os.getpid()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path!r}: {self.n_rows} rows x "
                f"{self.n_features} features, label={self.label_name!r}, {self.n_chunks} chunks>")


# -- selecting features and label ----------------------------------------------
# Auto-detection, documented in the README: an array/dataset named like a feature
# matrix and one named like a label; for column formats a label column and every
# other numeric column as a feature.
FEATURE_KEYS = ("X", "x", "features", "data", "inputs")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def find_key(available: list[str], wanted: str | None, candidates: tuple[str, ...],
             what: str, path: str, required: bool) -> str | None:
    """The array/column name to use: ``wanted`` if given, else the first candidate present."""
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"{path}: no {what} named {wanted!r} (found: {', '.join(available) or 'nothing'})")
        return wanted
    for name in candidates:
        # A candidate matches a top-level name first, then the last part of a nested path.
        for key in [k for k in available if k == name] + [k for k in available if k.split("/")[-1] == name]:
            return key
    if required:
        raise DataError(f"{path}: no {what} found; name it with --{what.split()[0]} "
                        f"(looked for {', '.join(candidates)}; found: {', '.join(available) or 'nothing'})")
    return None


# A declared chunk larger than this is refused before anything is allocated for it.
MAX_CHUNK_BYTES = 1 << 30


def check_chunk_size(nbytes: int, path: str, what: str) -> None:
    """Refuse absurd declared chunk sizes (malformed or hostile metadata) before allocating."""
    if nbytes > MAX_CHUNK_BYTES:
        raise DataError(f"{path}: {what} declares chunks of {nbytes / 2**30:.1f} GiB; refused "
                        f"(more than {MAX_CHUNK_BYTES >> 30} GiB per chunk)")
