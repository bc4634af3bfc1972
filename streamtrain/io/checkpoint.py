"""Checkpoints: arrays plus JSON metadata in one NPZ, checksummed, written atomically, rotated.

Loading uses ``np.load(allow_pickle=False)`` and ``json``: a checkpoint
cannot execute code. The checksum covers the metadata and every array
(name, dtype, shape, bytes), so a truncated or altered file is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, os_reason
from .atomic import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint",
           "resolve_checkpoint", "params_digest", "check_loadable", "DirectoryLock", "BackgroundWriter",
           "FORMAT_VERSION", "Schema"]

# 2: config, model, state and fingerprint sections; the history is in metrics.jsonl, not here.
FORMAT_VERSION = 2
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


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                    schema: "Schema | None" = None) -> Path:
    """Write ``arrays`` and JSON-able ``meta`` to ``path`` atomically; returns the path.

    Nothing is written that ``load_checkpoint`` (with ``schema``, where given) would refuse: such
    a checkpoint is a ``CheckpointError`` here, and the previous checkpoints stay as they are."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, **meta}
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    try:
        check_loadable(arrays, meta_bytes, schema)
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise CheckpointError(f"{path}: not written: its loader would refuse it ({_one_line(e)})") from None
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

    def wait_quietly(self) -> None:
        """Block until the last write is done, dropping its error (another one is on its way up)."""
        try:
            self.wait()
        except Exception:
            pass

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
    write into the same directory. The kernel drops it when the process dies, however it dies.

    The directory itself stays open while the lock is held: if it is deleted or replaced
    meanwhile (which would let a second trainer take a fresh lock there), ``check`` says so.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._fd: int | None = None
        self._dir_fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._close_dir()
            raise CheckpointError(f"{self.directory}: cannot use it as the checkpoint directory "
                                  f"({os_reason(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            self._close_dir()
            raise CheckpointError(f"{self.directory}: another trainer (pid {holder}) is writing checkpoints here; "
                                  "stop it or use another --checkpoint-dir") from None
        try:
            # The lock file may be writable where the directory is not (its mode, the mount): find
            # out now, not when the first checkpoint is due after an epoch of training.
            probe = self.directory / f".write-probe-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:
            os.close(fd)
            self._close_dir()
            raise CheckpointError(f"{self.directory}: cannot write in the checkpoint directory "
                                  f"({os_reason(e)})") from None
        self._fd = fd
        remove_leftovers(self.directory)
        return self

    def check(self) -> None:
        """Raise ``CheckpointError`` if the directory or its lock file is no longer the one locked."""
        if self._fd is None:
            return
        try:
            same_dir = os.path.samestat(os.stat(self.directory), os.fstat(self._dir_fd))
            same_lock = os.path.samestat(os.stat(self.directory / ".lock"), os.fstat(self._fd))
        except OSError:
            same_dir = same_lock = False
        if not (same_dir and same_lock):
            raise CheckpointError(f"{self.directory}: the checkpoint directory was deleted or replaced while "
                                  "this run was using it; stopping without writing there")

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        self._close_dir()


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files a crashed save left behind (never a finished checkpoint)."""
    gone = []
    for p in Path(directory).glob(".ckpt-*.npz.tmp-*"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


# Bounds on what a checkpoint may declare, checked before anything is read or allocated: a
# checkpoint is untrusted input (its checksum detects accidents, not someone who can write it).
MAX_META_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
MAX_MEMBERS = 64
# Without a schema (a plain ``load_checkpoint``), the arrays together may declare at most this.
MAX_UNCHECKED_BYTES = 1 << 30


class Schema:
    """What a kind of checkpoint holds: ``arrays(meta)`` validates the metadata and returns
    ``(required, optional_groups)``, each a mapping of array name -> ``(dtype, shape)`` (an
    optional group is present whole or not at all); ``check(arrays, meta)`` validates the
    values once read. Both raise ``ValueError`` with the problem."""

    def upgrade(self, meta: dict) -> dict:
        """Metadata written by an older version, in today's layout (unchanged here)."""
        return meta

    def arrays(self, meta: dict) -> tuple[dict, list[dict]]:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, arrays: dict[str, np.ndarray], meta: dict) -> None:  # pragma: no cover - interface
        pass


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text (strings skipped), without parsing it:
    ``json.loads`` recurses, so deep input must be refused before it is parsed."""
    text = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", data)
    opens = np.frombuffer(text, np.uint8)
    step = np.isin(opens, (ord("["), ord("{"))).astype(np.int64) - np.isin(opens, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def check_loadable(arrays: dict[str, np.ndarray], meta_bytes: bytes, schema: Schema | None = None) -> None:
    """Raise ``ValueError`` with the reason ``load_checkpoint`` (with ``schema``) would refuse a
    checkpoint of ``arrays`` and the metadata ``meta_bytes``: the same bounds, the same checks."""
    if len(arrays) + 2 > MAX_MEMBERS:
        raise ValueError(f"{len(arrays)} arrays, more than {MAX_MEMBERS - 2}")
    if len(meta_bytes) > MAX_META_BYTES:
        raise ValueError(f"its metadata is {len(meta_bytes)} bytes, more than the {MAX_META_BYTES} a checkpoint "
                         "may hold")
    if json_depth(meta_bytes) > MAX_JSON_DEPTH:
        raise ValueError(f"metadata nested more than {MAX_JSON_DEPTH} deep")
    headers = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if name in (_META, _SUM) or a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise ValueError(f"array {name}: dtype {a.dtype} is not allowed" if name not in (_META, _SUM)
                             else f"array name {name} is reserved")
        headers[name] = (tuple(a.shape), a.dtype, 0)
    if schema is None:
        return  # (the bound on unchecked arrays is for files of unknown kind, not for what a writer knows)
    meta = json.loads(meta_bytes)  # what the loader will see
    if not isinstance(meta, dict):
        raise ValueError(f"metadata is a {type(meta).__name__}, not a mapping")
    meta = schema.upgrade(meta)
    _expect(meta, schema, headers)
    schema.check({name: np.asarray(a) for name, a in arrays.items()}, meta)


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str):
    """``(shape, dtype, data offset)`` of an NPY member, from its header alone."""
    from numpy.lib import format as npf

    with zf.open(info) as fh:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fh, max_header_size=4096)
        elif version == (2, 0):
            shape, fortran, dtype = npf.read_array_header_2_0(fh, max_header_size=4096)
        else:
            raise ValueError(f"array {where}: unsupported NPY version {version}")
        offset = fh.tell()
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"array {where}: dtype {dtype} is not allowed")
    if fortran and len(shape) > 1:
        raise ValueError(f"array {where}: Fortran order is not allowed")
    if any(d < 0 for d in shape):
        raise ValueError(f"array {where}: negative dimension in {shape}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise ValueError(f"array {where}: declares {shape} {dtype} ({nbytes} bytes) but holds "
                         f"{info.file_size - offset}")
    return tuple(int(d) for d in shape), dtype, offset


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, shape, dtype, offset) -> np.ndarray:
    """The member's data, exactly as many bytes as its (already checked) header declares."""
    buf = bytearray(info.file_size - offset)
    with zf.open(info) as fh:
        fh.seek(offset)
        if fh.readinto(buf) != len(buf):
            raise EOFError("array data ends early")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _expect(meta: dict, schema: Schema | None, headers: dict) -> None:
    """Check the arrays the file declares (names, dtypes, shapes) against what ``meta`` implies."""
    if schema is None:
        total = sum(int(np.prod(s, dtype=object)) * d.itemsize for s, d, _ in headers.values())
        if total > MAX_UNCHECKED_BYTES:
            raise ValueError(f"the arrays declare {total} bytes, more than {MAX_UNCHECKED_BYTES}")
        return
    required, groups = schema.arrays(meta)
    names = set(headers)
    missing = sorted(set(required) - names)
    if missing:
        raise ValueError(f"array {missing[0]} is missing")
    expected = dict(required)
    for group in groups:
        present = names & set(group)
        if present and present != set(group):
            raise ValueError(f"array {sorted(set(group) - present)[0]} is missing")
        if present:
            expected.update(group)
    extra = sorted(names - set(expected))
    if extra:
        raise ValueError(f"unexpected array {extra[0]}")
    for name, (dtype, shape) in expected.items():
        got_shape, got_dtype, _ = headers[name]
        if got_dtype != np.dtype(dtype) or got_shape != tuple(shape):
            raise ValueError(f"array {name} is {got_dtype} {got_shape}; the model needs "
                             f"{np.dtype(dtype)} {tuple(shape)}")


def load_checkpoint(path: str | os.PathLike, schema: Schema | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a checkpoint file, after verifying its checksum.

    Nothing is trusted: member count, metadata size and nesting, and every array's declared
    dtype and shape are checked before data is read (against ``schema``, the model the
    metadata describes, where given); any problem is a ``CheckpointError``.
    """
    if hasattr(path, "read"):  # the bytes of a checkpoint, in memory (broadcast to other processes)
        source, path = path, Path(getattr(path, "name", "<checkpoint>"))
    else:
        source = path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with zipfile.ZipFile(source) as zf:
            infos = {}
            for info in zf.infolist():
                if len(infos) >= MAX_MEMBERS or not info.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {info.filename!r}")
                infos[info.filename[:-4]] = info
            if _META not in infos or _SUM not in infos:
                raise CheckpointError(f"{path}: not a streamtrain checkpoint (no metadata)")
            headers = {name: _npy_header(zf, info, name) for name, info in infos.items()}
            for name, limit in ((_META, MAX_META_BYTES), (_SUM, 64)):
                shape, dtype, _ = headers.pop(name)
                if dtype != np.uint8 or len(shape) != 1 or shape[0] > limit:
                    raise ValueError(f"{name} is {dtype} {shape}")
            meta_bytes = _read_member(zf, infos[_META], *_npy_header(zf, infos[_META], _META)).tobytes()
            expected = _read_member(zf, infos[_SUM], *_npy_header(zf, infos[_SUM], _SUM)).tobytes()
            if json_depth(meta_bytes) > MAX_JSON_DEPTH:
                raise ValueError(f"metadata nested more than {MAX_JSON_DEPTH} deep")
            meta = json.loads(meta_bytes)
            if not isinstance(meta, dict):
                raise ValueError(f"metadata is a {type(meta).__name__}, not a mapping")
            version = meta.get("format_version", 0)
            if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
                raise CheckpointError(f"{path}: written by a newer streamtrain (format {version}); upgrade")
            if schema is not None:
                meta = schema.upgrade(meta)
            _expect(meta, schema, headers)
            arrays = {name: _read_member(zf, infos[name], *h) for name, h in headers.items()}
    except CheckpointError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, zipfile.BadZipFile, EOFError,
            RecursionError, UnicodeDecodeError, NotImplementedError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a valid streamtrain checkpoint ({_one_line(e)})") from None
    if _digest(meta_bytes, arrays) != expected.decode("ascii", "replace"):
        raise CheckpointError(f"{path}: checksum mismatch; the file is corrupt")
    if schema is not None:
        try:
            schema.check(arrays, meta)
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: not a valid streamtrain checkpoint ({_one_line(e)})") from None
    return arrays, meta


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def checkpoint_name(step: int) -> str:
    return f"ckpt-{int(step):012d}.npz"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), reverse=True)


def latest_checkpoint(directory: str | os.PathLike, warn=None, schema: Schema | None = None,
                      set_aside: bool = False):
    """``(path, arrays, meta)`` of the newest checkpoint that loads (and fits ``schema``), or None
    when the directory holds no checkpoint at all.

    A newer checkpoint that fails to load is reported through ``warn`` and skipped (with
    ``set_aside``, renamed ``*.invalid`` so it cannot outrank the checkpoints written after it),
    so a crash while writing (or a damaged file) never costs more than one interval; when every
    one fails, that is a ``CheckpointError``.
    """
    warn = warn or logging.getLogger("streamtrain").warning
    found = list_checkpoints(directory)
    for i, p in enumerate(found):
        try:
            arrays, meta = load_checkpoint(p, schema)
        except CheckpointError as e:
            if i + 1 == len(found):
                raise CheckpointError(f"{e}; no valid checkpoint left in {directory}") from None
            if set_aside:
                os.replace(p, p.with_name(p.name + ".invalid"))
                warn(f"{e}; moved aside to {p.name}.invalid, using an older checkpoint")
            else:
                warn(f"{e}; using an older checkpoint")
            continue
        return p, arrays, meta
    return None


def resolve_checkpoint(path: str | os.PathLike, schema: Schema | None = None, warn=None):
    """``(path, arrays, meta)`` from a checkpoint file, or from a directory's newest valid one."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path, warn, schema)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint in this directory")
        return found
    arrays, meta = load_checkpoint(path, schema)
    return path, arrays, meta


def rotate(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the newest)."""
    for old in list_checkpoints(directory)[max(1, keep):]:
        old.unlink(missing_ok=True)
        crash_point("during_rotation")
