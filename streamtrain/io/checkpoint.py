"""Checkpoints: arrays plus JSON metadata in one NPZ, checksummed, written atomically.

Loading uses ``np.load(allow_pickle=False)`` and ``json``: a checkpoint
cannot execute code. The checksum covers the metadata and every array
(name, dtype, shape, bytes), so a truncated or altered file is refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .atomic import atomic_path
from .digest import _digest, array_header
from .npz import write_npz
from .background import crash_point

__all__ = ['FORMAT_VERSION', 'checkpoint_name', 'save_checkpoint', 'MAX_META_BYTES', 'MAX_JSON_DEPTH', 'MAX_MEMBERS', 'MAX_UNCHECKED_BYTES', 'Schema', 'json_depth', 'check_loadable', 'load_checkpoint']


# 2: config, model, state and fingerprint sections; the history is in metrics.jsonl, not here.
FORMAT_VERSION = 2


_META = "__meta__"


_SUM = "__sha256__"


def checkpoint_name(step: int) -> str:
    """The file name of a run's checkpoint at ``step`` (zero-padded: names sort as steps do)."""
    return f"ckpt-{int(step):012d}.npz"


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
    # (the checksum is computed beside the write, and written last: a table's gigabytes take a
    # second or so each way)
    summed = _Beside(lambda stop: {_SUM: np.frombuffer(_digest(meta_bytes, arrays, stop).encode(), dtype=np.uint8)})
    try:
        with atomic_path(path, before_rename=lambda: crash_point("after_data")) as tmp:
            crash_point("before_data")
            write_npz(tmp, payload, last=summed.result)
    finally:
        summed.stop()  # (a failed write: the checksum is not finished for nothing, nor raced by the next)
    crash_point("after_rename")
    return path


class _Beside:
    """``fn(stop)`` run in a thread; ``result()`` waits for it (and raises its error); ``stop()``
    sets the event ``fn`` is given and waits for the thread to end."""

    def __init__(self, fn):
        self._out = self._error = None
        self._stop = threading.Event()

        def run():
            try:
                self._out = fn(self._stop)
            except BaseException as e:  # (raised by ``result``)
                self._error = e

        self._thread = threading.Thread(target=run, name="streamtrain-checksum", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


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


def _hash_member(digest, zf: zipfile.ZipFile, info: zipfile.ZipInfo, offset: int) -> None:
    """Feed the member's data (after its header) to ``digest`` 16 MiB at a time."""
    left = info.file_size - offset
    with zf.open(info) as fh:
        fh.seek(offset)
        while left:
            piece = fh.read(min(left, 16 << 20))
            if not piece:
                raise EOFError("array data ends early")
            digest.update(piece)
            left -= len(piece)


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


def load_checkpoint(path: str | os.PathLike, schema: Schema | None = None, keep=None, name: str | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a checkpoint file, after verifying its checksum.

    Nothing is trusted: member count, metadata size and nesting, and every array's declared
    dtype and shape are checked before data is read (against ``schema``, the model the
    metadata describes, where given); any problem is a ``CheckpointError``. ``keep(name)``, where
    given, says which arrays to return: the others are read through the checksum in pieces and
    dropped (a model's optimiser state, twice its size, for a prediction). ``name``: what its
    errors call it (a local copy of an object in storage is named by its URL).
    """
    if hasattr(path, "read"):  # the bytes of a checkpoint, in memory (broadcast to other processes)
        source, path = path, str(getattr(path, "name", "<checkpoint>"))  # (a URL stays one)
    else:
        source = path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
    if name is not None:
        path = name
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
            arrays = {name: _read_member(zf, infos[name], *h) for name, h in headers.items()
                      if keep is None or keep(name)}
            digest = hashlib.sha256(meta_bytes)
            for name in sorted(headers):
                shape, dtype, offset = headers[name]
                digest.update(array_header(name, dtype, shape))
                if name in arrays:
                    digest.update(arrays[name].reshape(-1).view(np.uint8))
                else:
                    _hash_member(digest, zf, infos[name], offset)
    except CheckpointError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, zipfile.BadZipFile, EOFError,
            RecursionError, UnicodeDecodeError, NotImplementedError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a valid streamtrain checkpoint ({_one_line(e)})") from None
    if digest.hexdigest() != expected.decode("ascii", "replace"):
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
