"""A directory of landing files, each trained once, in arrival order."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ...readers.formats import suffixes
from ..rows import Columns
from .base import Entry, Rejected, StreamSource
from .broker import _reason

__all__ = ['DirectorySource']


class DirectorySource(StreamSource):
    """Files of the formats streamtrain reads (``readers.formats``) that land in ``path`` by atomic
    rename, each trained once, in arrival order (the time of their rename, then the name). The
    position is the file being read and the rows of it already read; the files done are in
    ``state``, each until it leaves the directory (so the list stays as long as the directory,
    and a new file under a done name is read). Names starting with a dot (files still being
    written, by the usual convention) are not read."""

    name = "directory"

    def __init__(self, path: str | os.PathLike, columns: Columns, chunk_rows: int = 65536):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: not a directory")
        self.columns, self.chunk_rows = columns, int(chunk_rows)
        self.done: list[str] = []
        self._done: set[str] = set()
        self.current: str | None = None
        self.row = 0
        self.dataset = None

    def start(self, position, state):
        self.done = list(state.get("done", []))
        self._done = set(self.done)
        if position is not None:
            self.current, self.row = position.get("file"), int(position.get("row", 0))

    def state(self):
        return {"done": list(self.done)}

    def _arrivals(self, forget_gone: bool = False) -> list[str]:
        """The files waiting, in arrival order; ``forget_gone``: also drop the done files that have
        left the directory (only the thread that reads, which also adds to the list, does that)."""
        found, present = [], set()
        with os.scandir(self.path) as it:
            for e in it:
                if e.name.startswith(".") or not e.name.lower().endswith(suffixes()):  # the format table's
                    continue
                if e.name in self._done:
                    present.add(e.name)
                    continue
                try:
                    found.append((e.stat(follow_symlinks=False).st_ctime_ns, e.name))
                except OSError:
                    continue
        if forget_gone and len(present) < len(self._done):
            self.done = [name for name in self.done if name in present]
            self._done = set(self.done)
        return [name for _, name in sorted(found)]

    def lag(self):
        return float(len(self._arrivals()) - (self.current is not None))

    def _open(self, name: str):
        from ...readers import open_dataset

        cols = self.columns
        encoding = getattr(cols, "encoding", None)  # a model trained on an encoded table: its encoding, applied
        if encoding is not None:
            ds = open_dataset(self.path / name, label=cols.label, dtype=cols.dtype, encoding=encoding.state_dict())
            expected = list(encoding.feature_names)
        else:
            ds = open_dataset(self.path / name, cols.features, cols.label)
            expected = cols.features
        if expected is None:
            cols.features = list(ds.feature_names)
        elif list(ds.feature_names) != expected:
            ds.close()
            raise DataError(f"{self.path / name}: features {list(ds.feature_names)}, the stream's are {expected}")
        return ds

    def poll(self, timeout):
        if self.current is None:
            waiting = self._arrivals(forget_gone=True)
            if not waiting:
                time.sleep(min(timeout, 0.2))
                return []
            self.current, self.row = waiting[0], 0
        name, a = self.current, self.row
        where = str(self.path / name)
        try:
            if self.dataset is None:
                self.dataset = self._open(name)
            ds = self.dataset
            if ds.n_rows == 0:
                raise DataError(f"{where}: no rows")
            end = min(ds.n_rows, a + self.chunk_rows)
            X, y = _rows(ds, a, end)
        except Exception as e:  # whatever the file holds: the rest of it is left out, and recorded
            self._finish(name)
            return [Rejected(self._position(), where, str(e) if isinstance(e, DataError) else
                             f"{where}: {_reason(e)}")]
        self.row = end
        if end == ds.n_rows:
            self._finish(name)
        return [Entry(self._position(), X, y, f"{where} rows {a}-{end}")]

    def _position(self) -> dict:
        return {"file": self.current, "row": self.row}

    def _finish(self, name: str) -> None:
        if self.dataset is not None:
            self.dataset.close()
            self.dataset = None
        self.done.append(name)
        self._done.add(name)
        self.current, self.row = None, 0

    def close(self):
        if self.dataset is not None:
            self.dataset.close()


def _rows(ds, a: int, b: int):
    """Rows ``a:b`` of a dataset, by its chunks."""
    bounds = ds.bounds
    first = int(np.searchsorted(bounds, a, side="right") - 1)
    Xs, ys = [], []
    i = first
    while i < ds.n_chunks and bounds[i] < b:
        X, y = ds.read_chunk(i)
        lo, hi = max(a, bounds[i]) - bounds[i], min(b, bounds[i + 1]) - bounds[i]
        Xs.append(X[lo:hi])
        ys.append(None if y is None else y[lo:hi])
        i += 1
    return np.concatenate(Xs), (None if ys[0] is None else np.concatenate(ys))
