"""A stable 64-bit hash of category values, the same on every machine, platform and version.

The definition (what the known-answer tests pin down):

* a string (or binary) value: FNV-1a 64 over its UTF-8 bytes, starting from the offset basis
  ``0xcbf29ce484222325 XOR fmix64(salt)``; with ``salt=0`` that is the published FNV-1a 64;
* an integer of any width (and a bool, as 0/1): the same over the 8 little-endian bytes of its
  value as a two's-complement int64, so ``int8(5)`` and ``int64(5)`` hash alike;
* a null: 0 from :func:`hash64`, -1 from :func:`bucket`;
* ``bucket(v, n, salt) = fmix64(hash64(v, salt)) mod n``. FNV-1a's low bits mix poorly, so
  MurmurHash3's 64-bit finaliser ``fmix64`` spreads every bit before the modulo.

Python's ``hash()`` is salted per process and so cannot serve. Strings are hashed by a numba
kernel over the Arrow offsets and data buffers (no Python work per row), with a numpy loop over
byte positions as the fallback and the reference.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError

__all__ = ["hash64", "bucket", "fmix64", "null_mask", "FNV_OFFSET", "FNV_PRIME"]

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_U = np.uint64  # numba types a plain int constant as int64, and uint64 * int64 as float64
_PRIME, _MASK = _U(FNV_PRIME), _U(0xFF)
_kernel = None


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, on a uint64 array of shape (n,) (a new array)."""
    h = np.asarray(h, dtype=np.uint64).copy()
    h ^= h >> _U(33)
    h *= _U(0xFF51AFD7ED558CCD)
    h ^= h >> _U(33)
    h *= _U(0xC4CEB9FE1A85EC53)
    h ^= h >> _U(33)
    return h


def _start(salt: int) -> np.uint64:
    if isinstance(salt, bool) or not isinstance(salt, (int, np.integer)) or not 0 <= int(salt) < 2**64:
        raise ConfigError(f"a hash salt is an integer in [0, 2**64), not {salt!r}")
    return _U(FNV_OFFSET) ^ fmix64(np.array([int(salt)], dtype=np.uint64))[0]


def _fnv_bytes(offsets, data, start, out):
    """FNV-1a 64 of each value: the bytes ``data[offsets[i]:offsets[i + 1]]``."""
    for i in range(out.shape[0]):
        h = start
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ data[j]) * _PRIME
        out[i] = h


def _compiled():
    """The numba kernel (compiled once, cached on disk), or None without numba."""
    global _kernel
    if _kernel is None:
        if importlib.util.find_spec("numba") is None:
            _kernel = False
        else:
            from .._jit import numba

            _kernel = numba.njit(cache=True, nogil=True)(_fnv_bytes)
    return _kernel or None


def _fnv_bytes_numpy(offsets, data, start, out):
    """The reference: one vectorised pass per byte position (as many passes as the longest value)."""
    begin, length = offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)
    h = np.full(len(out), start, dtype=np.uint64)
    for j in range(int(length.max(initial=0))):
        live = np.flatnonzero(length > j)
        h[live] = (h[live] ^ data[begin[live] + j].astype(np.uint64)) * _PRIME
    out[:] = h


def _hash_binary(arr: pa.Array, start: np.uint64, compiled: bool) -> np.ndarray:
    """Hashes of a string/binary array's values through its buffers (slices respected)."""
    out = np.empty(len(arr), dtype=np.uint64)
    if len(arr) == 0:
        return out
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, obuf, dbuf = arr.buffers()[:3]
    offsets = np.frombuffer(obuf, dtype=np.int64 if large else np.int32)[arr.offset:arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64, copy=False)  # one kernel signature to compile and cache, not two
    data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None and dbuf.size else np.zeros(1, np.uint8)
    kernel = _compiled() if compiled else None
    (kernel or _fnv_bytes_numpy)(offsets, data, start, out)
    return out


def _hash_ints(v: np.ndarray, start: np.uint64) -> np.ndarray:
    """FNV-1a 64 over the 8 little-endian bytes of each int64 (as uint64 bits)."""
    bits = v.astype(np.int64, copy=False).view(np.uint64)
    h = np.full(len(bits), start, dtype=np.uint64)
    for k in range(8):
        h = (h ^ ((bits >> _U(8 * k)) & _MASK)) * _PRIME
    return h


def _arrow(values) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        return pa.array(values)
    try:
        return pa.array(values, type=pa.large_string()) if isinstance(values, np.ndarray) else pa.array(values)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise DataError(f"cannot hash these values: {str(e).splitlines()[0]}") from None


def hash64(values, salt: int = 0, compiled: bool = True) -> np.ndarray:
    """The stable 64-bit hash of each value (the module's docstring defines it).

    Parameters
    ----------
    values : pyarrow Array or ChunkedArray (string, large_string, string_view, binary, dictionary,
        integer or bool), or numpy / list of str, int or bool, shape (n,)
    salt : int in [0, 2**64)
        Gives an independent hash function per salt (0: the published FNV-1a 64).
    compiled : bool
        False runs the numpy reference instead of the numba kernel.

    Returns
    -------
    numpy.ndarray of uint64, shape (n,); 0 for a null.

    Examples
    --------
    >>> import pyarrow as pa
    >>> hex(int(hash64(pa.array(["a"]))[0]))
    '0xaf63dc4c8601ec8c'
    """
    arr, start = _arrow(values), _start(salt)
    if isinstance(arr, pa.ChunkedArray):
        parts = [hash64(c, salt, compiled) for c in arr.chunks]
        return np.concatenate(parts) if parts else np.empty(0, np.uint64)
    t = arr.type
    if pa.types.is_dictionary(t):
        # Hash the dictionary once, then gather: a categorical column costs one hash per category.
        codes = hash64(arr.dictionary, salt, compiled)
        idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False)
        out = codes[idx] if len(codes) else np.zeros(len(arr), np.uint64)
    elif pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return hash64(arr.cast(pa.large_binary()), salt, compiled)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t):
        out = _hash_binary(arr, start, compiled)
    elif pa.types.is_boolean(t):
        return hash64(arr.cast(pa.int8()), salt, compiled)
    elif pa.types.is_null(t):
        out = np.zeros(len(arr), np.uint64)
    elif pa.types.is_integer(t):
        filled = pc.fill_null(arr, 0) if arr.null_count else arr
        v = filled.to_numpy(zero_copy_only=False) if len(arr) else np.empty(0, np.int64)
        out = _hash_ints(v.view(np.int64) if v.dtype == np.uint64 else v.astype(np.int64), start)
    else:
        raise DataError(f"cannot hash values of type {t} (strings, integers and bools can be hashed)")
    out[null_mask(arr)] = 0
    return out


def bucket(values, n_buckets: int, salt: int = 0) -> np.ndarray:
    """Each value's bucket in ``[0, n_buckets)``: ``fmix64(hash64(value, salt)) mod n_buckets``.

    Parameters
    ----------
    values : as for :func:`hash64`, shape (n,)
    n_buckets : int >= 1
    salt : int in [0, 2**64)

    Returns
    -------
    numpy.ndarray of int64, shape (n,); -1 for a null.

    Examples
    --------
    >>> import pyarrow as pa
    >>> codes = bucket(pa.array(["red", None, "red"]), 10)
    >>> int(codes[1]), bool(codes[0] == codes[2]), 0 <= int(codes[0]) < 10
    (-1, True, True)
    """
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, (int, np.integer)) or not 1 <= n_buckets < 2**62:
        raise ConfigError(f"n_buckets is a positive integer, not {n_buckets!r}")
    arr = _arrow(values)
    codes = (fmix64(hash64(arr, salt)) % _U(n_buckets)).astype(np.int64)
    codes[null_mask(arr)] = -1
    return codes


def null_mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which values are null, shape (n,) bool; for a dictionary also a code pointing at a null entry."""
    if not arr.null_count and not pa.types.is_dictionary(arr.type):
        return np.zeros(len(arr), dtype=bool)
    return arr.is_null().to_numpy(zero_copy_only=False).astype(bool, copy=False)
