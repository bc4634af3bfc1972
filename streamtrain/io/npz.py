"""Writing an ``.npz`` (a zip of stored ``.npy`` members, as ``np.savez`` makes) whose large arrays
go to the disk around the page cache.

A checkpoint of a click log's tables is gigabytes. Written through the page cache, each of its
pages is first copied into newly allocated kernel memory, which costs more than the disk write
itself where fresh memory is expensive (a virtual machine whose host backs guest memory on first
touch, as the benchmark machine's: docs/benchmarks.md), and it evicts what the page cache held.
So each large member's data starts on a 4 KiB boundary of the file (a padding block in the local
header's extra field, under the id Android's ``zipalign`` uses) and arrays of at least ``DIRECT_BYTES`` are
written with ``O_DIRECT`` through a small aligned buffer. Where the file system refuses
``O_DIRECT`` (some network and FUSE file systems; tmpfs before Linux 6.6) they are written the
ordinary way. The file is the same zip either way: ``np.load`` and ``zipfile`` read it.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import struct
import zlib

import numpy as np
from numpy.lib import format as npf

__all__ = ['write_npz', 'ALIGN', 'DIRECT_BYTES']

ALIGN = 4096  # the file offset, buffer address and length O_DIRECT wants a multiple of
DIRECT_BYTES = 16 << 20  # arrays at least this large are written around the page cache
_CHUNK = 8 << 20  # the aligned buffer the direct writes go through

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, before the name and the extra field
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, 00:00, the date np.savez's members carry
_VERSION = 45  # zip64
_PAD_ID = 0xD935  # the extra field's id for alignment padding (the id Android's zipalign uses)
_UTF8 = 0x800  # the flag saying a name is UTF-8 (not cp437), as zipfile sets it
_REFUSED = {errno.EINVAL, getattr(errno, "EOPNOTSUPP", errno.EINVAL), getattr(errno, "ENOTSUP", errno.EINVAL)}


def _npy_header(a: np.ndarray) -> bytes:
    """The ``.npy`` header ``np.save`` writes for ``a`` (C order)."""
    head, buf = npf.header_data_from_array_1_0(a), io.BytesIO()
    try:
        npf.write_array_header_1_0(buf, head)
    except ValueError:  # (a header past 64 KiB: a shape of very many dimensions)
        buf = io.BytesIO()
        npf.write_array_header_2_0(buf, head)
    return buf.getvalue()


def _flags(name: bytes) -> int:
    return 0 if name.isascii() else _UTF8


def _local_header(name: bytes, extra: bytes) -> bytes:
    """A stored member's local header; its CRC-32 is written once the data is (``write_npz``)."""
    return _LOCAL.pack(0x04034B50, _VERSION, _flags(name), 0, 0, _DOS_DATE, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                       len(name), len(extra)) + name + extra


def _extra(offset: int, name: bytes, size: int, npy: int, align: bool) -> bytes:
    """The local header's extra field: the zip64 sizes, then (``align``) padding so that the
    array's bytes (after the header and the ``npy`` bytes of its .npy header) start on an
    ``ALIGN`` boundary."""
    zip64 = struct.pack("<HHQQ", 0x0001, 16, size, size)
    if not align:
        return zip64
    data_at = offset + _LOCAL.size + len(name) + len(zip64) + npy
    pad = -(data_at + 4) % ALIGN  # (a padding block is at least its own 4-byte header)
    return zip64 + struct.pack("<HH", _PAD_ID, pad) + bytes(pad)


class _Direct:
    """Writes of whole ``ALIGN`` blocks at aligned offsets with ``O_DIRECT``, through one aligned
    buffer (``fd`` None where the file system refuses it)."""

    def __init__(self, fd: int):
        self.fd = None
        try:  # (the same file as ``fd``, whatever has become of its name)
            self.fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except (AttributeError, OSError):  # (no O_DIRECT here, or not on this file system)
            return
        try:
            self.buf = mmap.mmap(-1, _CHUNK)  # (page-aligned)
        except BaseException:
            self.close()
            raise
        self.view = np.frombuffer(self.buf, dtype=np.uint8)

    def write(self, fd: int, data: np.ndarray, at: int, crc: int) -> int:
        """Write ``data`` (uint8) at ``at`` (aligned); returns ``crc`` continued over it. The last
        part block goes through ``fd``, and so does everything once a direct write is refused."""
        assert at % ALIGN == 0, at
        done, whole = 0, len(data) - len(data) % ALIGN
        while self.fd is not None and done < whole:
            n = min(_CHUNK, whole - done)
            self.view[:n] = data[done:done + n]
            try:
                written = os.pwrite(self.fd, memoryview(self.buf)[:n], at + done)
            except OSError as e:
                if e.errno not in _REFUSED:
                    raise
                written = 0
            written -= written % ALIGN  # (a short write: go on from the last whole block)
            if not written:  # refused, or less than a block (a disk nearly full): ordinary writes
                self.close()  # from here, which raise the real error, if there is one
                break
            crc = zlib.crc32(self.view[:written], crc)
            done += written
        crc = zlib.crc32(data[done:], crc)
        _pwrite_all(fd, data[done:], at + done)
        return crc

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _pwrite_all(fd: int, data, at: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, at)
        if n <= 0:
            raise OSError(errno.EIO, "a write wrote nothing")
        view, at = view[n:], at + n


def _central_directory(members: list, at: int) -> bytes:
    """The central directory of ``members`` ((name, crc, size, offset)), starting at ``at``, and
    the zip64 and plain end records."""
    out = []
    for name, crc, size, offset in members:
        extra = struct.pack("<HHQQQ", 0x0001, 24, size, size, offset)
        out.append(_CENTRAL.pack(0x02014B50, _VERSION | (3 << 8), _VERSION, _flags(name), 0, 0, _DOS_DATE, crc,
                                 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0o644 << 16,
                                 0xFFFFFFFF) + name + extra)
    directory = b"".join(out)
    end = at + len(directory)
    n = len(members)
    return b"".join([directory,
                     _ZIP64_EOCD.pack(0x06064B50, _ZIP64_EOCD.size - 12, _VERSION | (3 << 8), _VERSION, 0, 0,
                                      n, n, len(directory), at),
                     _ZIP64_LOCATOR.pack(0x07064B50, 0, end, 1),
                     _EOCD.pack(0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), 0xFFFFFFFF, 0xFFFFFFFF, 0)])


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], last=None) -> None:
    """Write ``arrays`` to a new file ``path`` as ``np.savez(path, **arrays)`` would (each a stored
    ``NAME.npy`` member, zip64), and fsync it. ``last``: a function returning more arrays, called
    once these are written (a checksum computed meanwhile)."""
    # (0o666 less the umask, as open() makes files)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    direct = None
    try:
        at, central, members = 0, [], list(arrays.items())
        while members:
            for key, a in members:
                a = np.asarray(a, order="C")
                if a.dtype.hasobject:
                    raise ValueError(f"{key}: object arrays are not written")
                name, head = f"{key}.npy".encode(), _npy_header(a)
                data = a.reshape(-1).view(np.uint8)
                size = len(head) + data.nbytes
                large = data.nbytes >= DIRECT_BYTES
                local = _local_header(name, _extra(at, name, size, len(head), large))
                _pwrite_all(fd, local + head, at)
                start = at + len(local) + len(head)  # (a large array's: on an ALIGN boundary)
                crc = zlib.crc32(head)
                if large:
                    direct = direct or _Direct(fd)
                    crc = direct.write(fd, data, start, crc)
                else:
                    crc = zlib.crc32(data, crc)
                    _pwrite_all(fd, data, start)
                os.pwrite(fd, struct.pack("<I", crc), at + 14)  # (the CRC, known now)
                central.append((name, crc, size, at))
                at = start + data.nbytes
            members, last = (list((last() or {}).items()) if last is not None else []), None
        _pwrite_all(fd, _central_directory(central, at), at)
        os.fsync(fd)
    finally:
        try:
            if direct is not None:
                direct.close()
        finally:
            os.close(fd)
