"""The write-ahead log of the rows posted to ``/learn``: appended before they are answered."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import zlib
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

from .base import HANDOVER_BYTES, Entry, StreamSource

__all__ = ['LogSource', 'QueueFull', 'key_digest', 'MAX_KEY_CHARS', 'KEYS_KEPT', 'SEGMENT_BYTES']


_MAGIC = b"STWL"
_HEAD = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload
SEGMENT_BYTES = 64 << 20
KEYS_KEPT = 10000
MAX_KEY_CHARS = 255  # an Idempotency-Key's length (``POST /learn`` answers 400 beyond)


def key_digest(key: str) -> str:
    """What the log and the checkpoint keep of an ``Idempotency-Key``: its SHA-256, 64 hex digits
    whatever its length (the 10,000 kept stay well under what a checkpoint's metadata may hold)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class QueueFull(Exception):
    """The log holds as many rows not yet trained as it may: the client should retry later."""


class LogSource(StreamSource):
    """Rows accepted by ``POST /learn``: each request's checked rows and targets are appended to a
    write-ahead log (fsync'd) before the request is answered, so an answered request is never
    lost; the position is the request's sequence number. At most ``limit_bytes`` of rows wait
    for training (beyond, ``append`` raises ``QueueFull``: the service answers 429). A request's
    ``Idempotency-Key`` makes a retry of a request whose answer was lost a no-op: the last
    ``KEYS_KEPT`` keys are remembered, as their digests (``key_digest``), in the log and the
    checkpoint."""

    name = "http"
    accepts_posts = True

    def __init__(self, directory: str | os.PathLike, limit_bytes: int = 64 << 20, fsync: bool = True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit, self.fsync = int(limit_bytes), fsync
        self.queue: deque = deque()
        self.queued_bytes = 0
        self.seq = 0  # the last sequence number written
        self.keys: OrderedDict[str, int] = OrderedDict()  # key digest -> sequence number
        self.cond = threading.Condition()
        # Group commit: a request waits until an fsync covers its record (``synced``, the last
        # sequence number on disk); one fsync covers every record written before it began.
        self.synced = 0
        self.sync_lock = threading.Lock()
        self.broken: OSError | None = None  # an fsync that failed (see ``_sync``)
        self.retired: list[int] = []  # descriptors of segments rotated out, for the next fsync
        self.fh = None
        self.segment_start = 0
        self.acked = 0

    # the log's records: magic, length, crc32, then a JSON header and the raw arrays
    @staticmethod
    def _encode(seq: int, digest: str | None, X: np.ndarray, t: np.ndarray) -> list:
        """A record's bytes as the pieces written one after another: its header, then the rows'
        and targets' own buffers (a request's rows are not copied into one string first)."""
        head = json.dumps({"seq": seq, "key_digest": digest, "rows": len(X), "x": [X.dtype.str, list(X.shape)],
                           "t": [t.dtype.str, list(t.shape)]}).encode()
        start = struct.pack("<I", len(head)) + head
        rows = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in (X, t)]
        crc = zlib.crc32(rows[1], zlib.crc32(rows[0], zlib.crc32(start)))
        return [_HEAD.pack(_MAGIC, len(start) + rows[0].nbytes + rows[1].nbytes, crc) + start, *rows]

    @staticmethod
    def _decode(payload: bytes):
        (n,) = struct.unpack_from("<I", payload)
        head = json.loads(payload[4:4 + n])
        at = 4 + n
        arrays = []
        for key in ("x", "t"):
            dtype, shape = np.dtype(head[key][0]), tuple(head[key][1])
            if dtype.kind not in "fi" or dtype.hasobject:
                raise ValueError(f"log record of dtype {dtype}")
            size = int(np.prod(shape)) * dtype.itemsize
            arrays.append(np.frombuffer(payload[at:at + size], dtype=dtype).reshape(shape))
            at += size
        return head, arrays[0], arrays[1]

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.wal"))

    def start(self, position, state):
        """Replay the log after ``position``; a torn record at the end (a crash mid-write) is cut off."""
        self.acked = int(position or 0)
        if "key_digests" in state:
            self.keys = OrderedDict((d, int(s)) for d, s in state["key_digests"])
        else:  # a checkpoint from before the digests: its keys as they were sent
            self.keys = OrderedDict((key_digest(k), int(s)) for k, s in state.get("keys", []))
        for seg in self._segments():
            data = seg.read_bytes()
            at, good = 0, 0
            while at + _HEAD.size <= len(data):
                magic, length, crc = _HEAD.unpack_from(data, at)
                payload = data[at + _HEAD.size:at + _HEAD.size + length]
                if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                    break
                head, X, t = self._decode(payload)
                self.seq = head["seq"]
                if head.get("key_digest"):
                    self._remember(head["key_digest"], head["seq"])
                elif head.get("key"):  # a record from before the digests
                    self._remember(key_digest(head["key"]), head["seq"])
                if head["seq"] > self.acked:
                    self.queue.append((head["seq"], X, t))
                    self.queued_bytes += X.nbytes + t.nbytes
                at += _HEAD.size + length
                good = at
            if good < len(data):
                with open(seg, "r+b") as fh:
                    fh.truncate(good)
        self.seq = max(self.seq, self.acked)
        self.synced = self.seq  # (read back from the disk)
        # a key whose record the log no longer holds (cut off above) was never answered
        self.keys = OrderedDict((k, s) for k, s in self.keys.items() if s <= self.seq)
        with self.cond:
            self._new_segment()

    def _remember(self, digest: str, seq: int) -> None:
        self.keys[digest] = seq
        self.keys.move_to_end(digest)
        while len(self.keys) > KEYS_KEPT:
            self.keys.popitem(last=False)

    def _new_segment(self) -> None:
        """A new segment file (under ``cond``); the old one's records are made durable by the next
        group fsync (``_durable``), which takes a duplicate of its descriptor."""
        if self.fh is not None:
            if self.fsync:
                self.retired.append(os.dup(self.fh.fileno()))
            self.fh.close()
        self.segment_start = self.seq + 1
        self.fh = open(self.dir / f"{self.segment_start:020d}.wal", "ab")

    def append(self, X: np.ndarray, t: np.ndarray, key: str | None = None) -> tuple[int, bool]:
        """Write a request's rows durably; ``(sequence number, whether it was a repeat)``. Returns
        once the record (a repeat's too) is on disk."""
        digest = key_digest(key) if key else None
        with self.cond:
            if self.broken is not None:
                raise self.broken
            if digest and digest in self.keys:
                seq, repeat = self.keys[digest], True
            else:
                size = X.nbytes + t.nbytes
                if self.queued_bytes + size > self.limit and self.queue:
                    raise QueueFull()
                self.seq += 1
                seq, repeat = self.seq, False
                for piece in self._encode(seq, digest, X, t):
                    self.fh.write(piece)
                self.fh.flush()
                if digest:
                    self._remember(digest, seq)
                self.queue.append((seq, X, t))  # (in the log's order; training takes it once on disk)
                self.queued_bytes += size
                if self.fh.tell() > SEGMENT_BYTES:
                    self._new_segment()
        self._durable(seq)
        return seq, repeat

    def _durable(self, seq: int) -> None:
        """Wait until the records through ``seq`` are on disk: one fsync for all the requests
        written while another was running (group commit)."""
        # Every fsync runs here, one at a time (sync_lock): two at once on one file could split
        # the kernel's single report of a failed writeback between them.
        with self.sync_lock:
            with self.cond:
                if self.synced >= seq:
                    return
                if self.broken is not None:
                    raise self.broken
                through = self.seq
                # the files rotated out since the last fsync, and the current one (duplicates:
                # it may be rotated and closed meanwhile)
                fds, self.retired = self.retired, []
                if self.fsync:
                    fds.append(os.dup(self.fh.fileno()))
            try:
                for fd in fds:
                    self._sync(fd)
            finally:
                for fd in fds:
                    os.close(fd)
            with self.cond:
                self.synced = max(self.synced, through)
                self.cond.notify_all()

    def _sync(self, fd: int) -> None:
        """fsync ``fd``; a failure breaks the log for good: a later fsync's success would not say
        that the records it failed on reached the disk (Linux may have dropped them), so nothing
        after ``synced`` is ever answered or trained, and every post after is refused."""
        try:
            os.fsync(fd)
        except OSError as e:
            with self.cond:
                self.broken = OSError(e.errno, f"the write-ahead log {self.dir} could not be written to disk "
                                               f"({e.strerror}); restart the service once the disk is fixed")
            raise self.broken from None

    def poll(self, timeout):
        with self.cond:
            if not self.queue or self.queue[0][0] > self.synced:
                self.cond.wait(timeout)
            items, taken = [], 0
            # (as ReadAhead hands over: at most HANDOVER_BYTES, unless the first record alone is more)
            while self.queue and self.queue[0][0] <= self.synced and (
                    not items or taken + self.queue[0][1].nbytes + self.queue[0][2].nbytes <= HANDOVER_BYTES):
                seq, X, t = self.queue.popleft()
                self.queued_bytes -= X.nbytes + t.nbytes
                taken += X.nbytes + t.nbytes
                items.append(Entry(seq, X, None, f"request {seq}", t=t))
            return items

    def ack(self, position):
        """Delete the log's segments that hold only records the checkpoint covers."""
        self.acked = int(position or 0)
        with self.cond:
            segs = self._segments()
            for seg, nxt in zip(segs, segs[1:]):
                if int(nxt.stem) - 1 <= self.acked:
                    seg.unlink(missing_ok=True)

    def state(self):
        with self.cond:  # (the keys of records on disk: one not yet there was not answered)
            return {"key_digests": [[d, s] for d, s in self.keys.items() if s <= self.synced]}

    def lag(self):
        with self.cond:
            return float(len(self.queue))  # requests accepted, not yet taken by training

    def saturated(self) -> bool:
        return self.queued_bytes >= self.limit

    def queued_rows(self) -> int:
        """Rows accepted and not yet taken by training."""
        with self.cond:
            return sum(len(X) for _, X, _ in self.queue)

    def close(self):
        if self.fh is not None:
            self.fh.close()
        for fd in self.retired:  # (their records' requests were not answered: nothing is owed)
            os.close(fd)
        self.retired = []
