"""How many bytes an Arrow IPC body's record batches decode to, read from its metadata alone.

A compressed body (zstd, lz4) can decode to thousands of times its size: a few kilobytes to
gigabytes. Arrow decodes a whole batch at once, so the size must be known before any decoding:
each message's flatbuffer metadata lists its buffers, and a compressed buffer starts with its
decoded length (the IPC format's ``BodyCompression``). The file format is read through its
footer's blocks (which, not the stream inside the file, are what a reader decodes).
"""

from __future__ import annotations

import struct

__all__ = ["decoded_size", "is_file_format"]

_MAGIC = b"ARROW1"
_CONTINUATION = 0xFFFFFFFF
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3  # the MessageHeader union's types
# The most buffers the metadata may list in all: the walk over them is bounded, whatever a body says.
MAX_BUFFERS = 1 << 20


def is_file_format(body: bytes | memoryview) -> bool:
    """Whether a body is Arrow's file format (its magic first): read it with the file reader,
    the stream reader otherwise (the reader ``decoded_size`` sized for)."""
    return bytes(memoryview(body)[:6]) == _MAGIC


def decoded_size(body: bytes | memoryview) -> int:
    """Bytes that the record and dictionary batches of an Arrow IPC stream or file decode to.

    Raises ``ValueError`` where the metadata cannot be read (a body Arrow would refuse too)."""
    data = memoryview(body).cast("B")
    budget = [MAX_BUFFERS]
    try:
        if is_file_format(data):
            return sum(_message_size(data, offset, budget) for offset in _file_blocks(data))
        return _stream_size(data, budget)
    except (struct.error, IndexError):
        raise ValueError("its metadata cannot be read") from None


def _stream_size(data: memoryview, budget: list[int]) -> int:
    total, offset = 0, 0
    while offset + 4 <= len(data):
        length, skip = _metadata_length(data, offset)
        if length == 0:  # end of stream
            break
        meta = _piece(data, offset + skip, length)
        body_length = _body_length(meta)
        total += _batch_size(meta, _piece(data, offset + skip + length, body_length), budget)
        offset += skip + length + body_length
    return total


def _metadata_length(data: memoryview, offset: int) -> tuple[int, int]:
    """``(flatbuffer length, bytes before it)`` of the message at ``offset``."""
    first = struct.unpack_from("<I", data, offset)[0]
    if first == _CONTINUATION:
        return struct.unpack_from("<i", data, offset + 4)[0], 8
    return struct.unpack_from("<i", data, offset)[0], 4  # (before format 0.15: no continuation marker)


def _file_blocks(data: memoryview) -> list[int]:
    """Offsets of the messages a file's footer lists (dictionaries and record batches)."""
    footer_length = struct.unpack_from("<i", data, len(data) - 10)[0]
    if not 0 < footer_length <= len(data) - 18:
        raise struct.error(f"footer length {footer_length}")
    footer = data[len(data) - 10 - footer_length:len(data) - 10]
    field = _table(footer, struct.unpack_from("<I", footer, 0)[0])
    offsets = []
    for i in (2, 3):  # Footer.dictionaries, Footer.recordBatches: vectors of Block (24 bytes)
        vector = _vector(footer, field(i))
        if vector is not None:
            at, n = vector
            offsets += [struct.unpack_from("<q", footer, at + 24 * k)[0] for k in range(n)]
    if len(set(offsets)) != len(offsets):  # a block listed twice is decoded twice: refused, as written by no writer
        raise ValueError("its footer lists a block more than once")
    return offsets


def _message_size(data: memoryview, offset: int, budget: list[int]) -> int:
    if not 0 <= offset < len(data):
        raise struct.error(f"block offset {offset}")
    length, skip = _metadata_length(data, offset)
    meta = _piece(data, offset + skip, length)
    return _batch_size(meta, _piece(data, offset + skip + length, _body_length(meta)), budget)


def _piece(data: memoryview, start: int, length: int) -> memoryview:
    """``length`` bytes from ``start``; a body cut short is refused, as Arrow refuses it."""
    if length < 0 or start + length > len(data):
        raise struct.error(f"{length} bytes at {start}: beyond the body's end")
    return data[start:start + length]


def _table(buf: memoryview, pos: int):
    """A flatbuffer table at ``pos``: ``field(i)`` gives field i's position, or None where absent."""
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]

    def field(i: int):
        at = 4 + 2 * i
        if at + 2 > size:
            return None
        off = struct.unpack_from("<H", buf, vtable + at)[0]
        return pos + off if off else None

    return field


def _target(buf: memoryview, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def _vector(buf: memoryview, pos):
    """``(first element's position, length)`` of the vector a field points to, or None."""
    if pos is None:
        return None
    at = _target(buf, pos)
    return at + 4, struct.unpack_from("<I", buf, at)[0]


def _body_length(meta: memoryview) -> int:
    field = _table(meta, struct.unpack_from("<I", meta, 0)[0])
    pos = field(3)  # Message.bodyLength
    length = struct.unpack_from("<q", meta, pos)[0] if pos is not None else 0
    if length < 0:
        raise struct.error(f"body length {length}")
    return length


def _batch_size(meta: memoryview, body: memoryview, budget: list[int]) -> int:
    message = _table(meta, struct.unpack_from("<I", meta, 0)[0])
    kind, header = message(1), message(2)  # Message.header_type, Message.header
    kind = meta[kind] if kind is not None else 0
    if kind not in (_DICTIONARY_BATCH, _RECORD_BATCH) or header is None:
        return 0  # a schema (or a tensor, which no reader here decodes)
    batch = _table(meta, _target(meta, header))
    if kind == _DICTIONARY_BATCH:
        delta = batch(2)  # DictionaryBatch.isDelta: Arrow appends a delta to the dictionary before it, and
        if delta is not None and meta[delta]:  # each batch keeps its own: memory beyond the buffers' sum
            raise ValueError("it has a delta dictionary, which is not read here: write the batches "
                             "without dictionary deltas")
        data = batch(1)  # DictionaryBatch.data: a RecordBatch
        if data is None:
            return 0
        batch = _table(meta, _target(meta, data))
    buffers = _vector(meta, batch(2))  # RecordBatch.buffers: vector of Buffer {offset, length}
    if buffers is None:
        return 0
    compressed = batch(3) is not None  # RecordBatch.compression
    at, n = buffers
    budget[0] -= n
    if budget[0] < 0:
        raise ValueError(f"its metadata lists more than {MAX_BUFFERS} buffers")
    total = 0
    for k in range(n):
        offset, length = struct.unpack_from("<qq", meta, at + 16 * k)
        if compressed and length >= 8:  # a compressed buffer starts with its decoded length (-1: stored as is)
            decoded = struct.unpack_from("<q", body, offset)[0]
            total += length - 8 if decoded == -1 else max(decoded, 0)
        else:
            total += max(length, 0)
    return total
