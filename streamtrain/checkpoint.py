"""Checkpoints: arrays plus JSON metadata in one NPZ, checksummed, written atomically, rotated.

Loading uses ``np.load(allow_pickle=False)`` and ``json``: a checkpoint
cannot execute code. The checksum covers the metadata and every array
(name, dtype, shape, bytes), so a truncated or altered file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint",
           "resolve_checkpoint", "params_digest", "DirectoryLock", "BackgroundWriter", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META = "__meta__"
_SUM = "__sha256__"
_NAME = re.compile(r"^ckpt-(\d{12})\.npz$")


def _digest(meta_bytes: bytes, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        a = np.asarray(arrays[name], order="C")
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def params_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the named arrays (dtype, shape and bytes): equal digests mean equal parameters."""
    return _digest(b"", arrays)


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and JSON-able ``meta`` to ``path`` atomically; returns the path."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, **meta}
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    payload = {name: np.asarray(a, order="C") for name, a in arrays.items()}
    payload[_META] = np.frombuffer(meta_bytes, dtype=np.uint8)
    payload[_SUM] = np.frombuffer(_digest(meta_bytes, arrays).encode(), dtype=np.uint8)
    with atomic_path(path, before_rename=lambda: crash_point("after_data")) as tmp:
        crash_point("before_data")
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
    crash_point("after_rename")
    return path


class BackgroundWriter:
    """Runs one write at a time in a thread, so training goes on while a checkpoint reaches the disk
    (serialising, hashing and three fsyncs: milliseconds, a few percent of an interval of training).

    ``submit`` first waits for the write before it, so writes land in order and at most one
    snapshot waits in memory; a write's error is raised by the next ``submit`` or ``wait``.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write) -> None:
        self.wait()

        def run():
            try:
                write()
            except BaseException as e:  # handed to the training thread, which reports it
                self._error = e

        self._thread = threading.Thread(target=run, name="streamtrain-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        """Block until the last write is on disk; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


_CRASH_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here, as kill -9 would, when STREAMTRAIN_CRASH_AT is "NAME" or "NAME:K" (the K-th time).

    For the fault-injection tests; costs one environment lookup per checkpoint otherwise.
    """
    want = os.environ.get("STREAMTRAIN_CRASH_AT")
    if not want or want.split(":")[0] != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if _CRASH_COUNTS[name] >= int(want.split(":")[1] if ":" in want else 1):
        os._exit(137)


class DirectoryLock:
    """An exclusive lock on a checkpoint directory (flock on DIR/.lock), so two trainers never
    write into the same directory. The kernel drops it when the process dies, however it dies."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(f"{self.directory}: another trainer (pid {holder}) is writing checkpoints here; "
                                  "stop it or use another --checkpoint-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        remove_leftovers(self.directory)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files a crashed save left behind (never a finished checkpoint)."""
    gone = []
    for p in Path(directory).glob(".ckpt-*.npz.tmp-*"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a checkpoint file, after verifying its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable streamtrain checkpoint ({type(e).__name__}: {e})") from None
    if _META not in arrays or _SUM not in arrays:
        raise CheckpointError(f"{path}: not a streamtrain checkpoint (no metadata)")
    meta_bytes = arrays.pop(_META).tobytes()
    expected = arrays.pop(_SUM).tobytes().decode("ascii", "replace")
    if _digest(meta_bytes, arrays) != expected:
        raise CheckpointError(f"{path}: checksum mismatch; the file is corrupt")
    try:
        meta = json.loads(meta_bytes)
    except ValueError:
        raise CheckpointError(f"{path}: corrupt metadata") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer streamtrain (format {meta['format_version']}); upgrade")
    return arrays, meta


def checkpoint_name(step: int) -> str:
    return f"ckpt-{int(step):012d}.npz"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), reverse=True)


def latest_checkpoint(directory: str | os.PathLike, warn=None):
    """``(path, arrays, meta)`` of the newest checkpoint that loads, or None.

    A newer checkpoint that fails to load is reported through ``warn`` and
    skipped, so a crash while writing never costs more than one interval.
    """
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    for p in list_checkpoints(directory):
        try:
            arrays, meta = load_checkpoint(p)
        except CheckpointError as e:
            warn(f"{e}; using an older checkpoint")
            continue
        return p, arrays, meta
    return None


def resolve_checkpoint(path: str | os.PathLike):
    """``(path, arrays, meta)`` from a checkpoint file, or from a directory's newest valid one."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no valid checkpoint in this directory")
        return found
    arrays, meta = load_checkpoint(path)
    return path, arrays, meta


def rotate(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the newest)."""
    for old in list_checkpoints(directory)[max(1, keep):]:
        old.unlink(missing_ok=True)
        crash_point("during_rotation")
