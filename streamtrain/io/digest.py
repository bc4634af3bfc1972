"""Digests: the checksum a checkpoint carries (metadata and every array) and the parameters' digest."""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ['params_digest', 'array_header']


def array_header(name: str, dtype: np.dtype, shape: tuple) -> bytes:
    """What the checksum takes of an array before its bytes (in C order)."""
    return f"{name}|{np.dtype(dtype).str}|{tuple(shape)}".encode()


_PIECE = 64 << 20


def _digest(meta_bytes: bytes, arrays: dict[str, np.ndarray], stop=None) -> str | None:
    """The checksum; ``stop``: an event that, once set, ends it early (None returned)."""
    h = hashlib.sha256(meta_bytes)
    for name in sorted(arrays):
        a = np.asarray(arrays[name], order="C")
        h.update(array_header(name, a.dtype, a.shape))
        data = a.reshape(-1).view(np.uint8)  # the bytes in place: a copy would double a 1 GiB table
        for at in range(0, len(data), _PIECE):
            if stop is not None and stop.is_set():
                return None
            h.update(data[at:at + _PIECE])
    return h.hexdigest()


def params_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the named arrays (dtype, shape and bytes): equal digests mean equal parameters."""
    return _digest(b"", arrays)
