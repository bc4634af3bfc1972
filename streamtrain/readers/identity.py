"""What a dataset is, as distinct from reading its rows: ``describe`` (what ``inspect`` prints: layout
and selection) and ``fingerprint`` (what a resumed run compares: layout, names and a stamp of the
content). ``base.Dataset`` has these through ``Identity``; a reader adds ``extra_info``,
``label_dtype`` and ``_stamped_files``."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import numpy as np

__all__ = ["Identity"]


class Identity:
    """A dataset's description and fingerprint, from its layout (``path``, ``format``, ``n_rows``,
    ``feature_names``, ``label_name``, ``bounds``) and, for the content stamp, a few chunks read
    whole (``_load_locked``)."""

    def label_dtype(self) -> str | None:
        """The stored label dtype as a string, or None without a label."""
        return None

    def extra_info(self) -> dict[str, Any]:
        """Format-specific facts for ``inspect`` (compression, dataset paths...)."""
        return {}

    #: ``(name, why)`` of the columns found beside the features and the label that are not used
    #: (set by column-oriented readers where the features were found by themselves).
    left_out: list = []

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
        encoding = getattr(self, "encoding", None)
        label = getattr(encoding, "label", None)
        if label is not None:  # (the label's values are read as the codes of its classes)
            kind = {"string": "strings", "int": "integers", "bool": "booleans"}.get(label.kind, label.kind)
            info["label_dtype"] = f"{info['label_dtype']} (the codes of {len(label.classes)} classes: {kind})"
        if encoding is not None:  # every column of a table and its treatment
            info["columns"] = encoding.describe()
            for name, why in self.left_out:  # (and what the reader left out itself: a hive partition's key)
                info["columns"].setdefault(name, f"left out: {why}")
        elif self.left_out:
            info["left_out"] = {name: why for name, why in self.left_out}
        # (plain numbers' notes; an encoded table's are in its columns' lines, but the label's)
        notes = getattr(self, "notes", None) if encoding is None else [
            (name, note) for name, note in encoding.notes if name == encoding.label_name]
        if notes:
            info["notes"] = {name: note for name, note in notes}
        return info

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the data for resume checks: layout and names, and ``content``, which changes
        when the data is rewritten in place (see ``content_stamp``), and ``sample``, the part of it
        that another machine's copy of the same data shares (the sampled chunks' bytes)."""
        content, sample = self._stamps()
        return {
            "path": os.path.abspath(self.path) if self.format != "memory" else self.path,
            "format": self.format,
            "n_rows": int(self.n_rows),
            "feature_names": list(self.feature_names),
            "label": self.label_name,
            "n_chunks": int(self.n_chunks),
            "chunk_rows_max": int(self.chunk_sizes.max()),
            "content": content,
            "sample": sample,
        }

    #: Chunks whose bytes ``content_stamp`` hashes (first, middle, last).
    SAMPLED_CHUNKS = 3

    def content_stamp(self) -> str:
        """A SHA-256 of what is cheap to know about the data's content: the size and modification
        time of each local file read (``_stamped_files``) and the decoded bytes of a few chunks."""
        return self._stamps()[0]

    def _stamps(self) -> tuple[str, str]:
        """``content_stamp``, and a SHA-256 of the sampled chunks' bytes alone. Kept for this open
        dataset while its files' sizes and times stay the same (a run's start asks up to three
        times, and remote chunks are slow to read); data in memory, which may change in place
        unseen, is hashed at each call. A whole pass over the chunks in order (``iter_chunks``: the
        scaling statistics' pass, before a run asks, where it reads every column) hashes them as
        they go by (``_StampWatch``)."""
        soon = self.__dict__.pop("_stamping", None)
        if soon is not None:  # (made on a thread: its error, if any, is this call's)
            soon.join()
            if soon.error is not None:
                raise soon.error
        return self._stamps_now()

    def _stamps_now(self) -> tuple[str, str]:
        stamps = self._file_stamps()
        kept = self.__dict__.get("_stamps_kept")
        if kept is not None and kept[0] == stamps and self.format != "memory":
            return kept[1]
        watch = _StampWatch(self, stamps)
        for c in watch.picks:
            watch.see(c, *self._load_locked(c))
        return watch.done(check_files=False)

    def stamp_soon(self) -> None:
        """Start making the content stamps on a thread, where they are still to be made (a run's
        start asks for them after drawing its first layer, which leaves the other core free)."""
        if self.format == "memory" or "_stamps_kept" in self.__dict__ or "_stamping" in self.__dict__:
            return
        self.__dict__["_stamping"] = _Soon(self._stamps_now)

    def _file_stamps(self) -> list[str]:
        stamps = []
        for path in self._stamped_files():
            try:
                st = os.stat(path)
                stamps.append(f"{os.path.basename(path)}|{st.st_size}|{st.st_mtime_ns}\n")
            except OSError:
                stamps.append(f"{path}|missing\n")
        return stamps

    def _stamp_watch(self) -> _StampWatch | None:
        """What ``iter_chunks`` feeds its chunks to, where the stamps are still to be made."""
        if self.format == "memory" or "_stamps_kept" in self.__dict__:
            return None
        return _StampWatch(self, self._file_stamps())

    def _stamped_files(self) -> list[str]:
        """The local files whose size and modification time stand for the content (none here)."""
        return []


class _Soon(threading.Thread):
    """``work()`` on a thread of its own; ``error``, what it raised."""

    def __init__(self, work):
        super().__init__(name="streamtrain-stamp", daemon=True)
        self.work, self.error = work, None
        self.start()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # (raised again where the stamps are asked for)
            self.error = e


class _StampWatch:
    """The content stamps made from the sampled chunks as they are read in order: the file stamps,
    then each sampled chunk's bytes (``see``); ``done`` keeps them on the dataset."""

    def __init__(self, ds: Identity, stamps: list[str]):
        self.ds, self.stamps = ds, stamps
        self.picks = sorted({0, ds.n_chunks // 2, ds.n_chunks - 1})[:ds.SAMPLED_CHUNKS]
        self.h, self.sample, self.seen = hashlib.sha256(), hashlib.sha256(), 0
        for line in stamps:
            self.h.update(line.encode())

    def see(self, i: int, X: np.ndarray, y: np.ndarray | None) -> None:
        """Chunk ``i`` as loaded, whole (rows a NaN screen skips included)."""
        if self.seen < len(self.picks) and i == self.picks[self.seen]:
            for part in (X, y):
                if part is not None:
                    data = np.ascontiguousarray(part).tobytes()
                    self.h.update(data)
                    self.sample.update(data)
            self.seen += 1

    def done(self, check_files: bool = True) -> tuple[str, str] | None:
        """The stamps, kept on the dataset; None where a sampled chunk was not seen or (``check_files``)
        a file changed meanwhile."""
        if self.seen < len(self.picks) or (check_files and self.ds._file_stamps() != self.stamps):
            return None
        self.ds.__dict__["_stamps_kept"] = (self.stamps, (self.h.hexdigest(), self.sample.hexdigest()))
        return self.ds.__dict__["_stamps_kept"][1]
