"""Where a service's rows come from, each with a position the checkpoint keeps.

A source is started after a position (``start``; None: from the beginning), hands over pieces
of the stream in order (``poll``: ``Entry`` objects with their rows, or ``Rejected`` ones whose
rows cannot be used), and is told when a checkpoint covering a position is durable (``ack``):
brokers acknowledge their messages only then, so a crash before it redelivers them and the
position skips what the checkpoint already holds. ``reject`` records bad input (a broker's
dead-letter stream or subject; always the service's ``rejected.jsonl``).

- ``DirectorySource``: files landing in a directory by atomic rename, in arrival order;
- ``LogSource``: rows posted to ``/learn``, appended to a write-ahead log before they are answered;
- ``RedisSource``: a Redis stream, read through a consumer group;
- ``NatsSource``: a NATS JetStream stream, read by a durable pull consumer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import ConfigError, DataError, StreamtrainError, TrainingError
from ..readers.formats import suffixes
from .rows import Columns

__all__ = ["Entry", "Rejected", "StreamSource", "DirectorySource", "LogSource", "RedisSource", "NatsSource",
           "open_source"]



@dataclass
class Entry:
    """A piece of the stream: its rows (``t``: the learner's targets, where the source made them)
    and the position after it."""

    position: Any
    X: np.ndarray
    y: np.ndarray | None
    where: str
    t: np.ndarray | None = None
    raw: Any = None  # what a broker delivered, for a dead letter


@dataclass
class Rejected:
    """A piece of the stream that cannot be used, and why; the position moves past it."""

    position: Any
    where: str
    error: str
    raw: Any = None


# How long a consumer group (Redis) or durable consumer (NATS) stays claimed by a service that
# stopped renewing its claim (killed, or cut off from the broker).
LEASE_SECONDS = 30.0


class StreamSource:
    """The interface; see the module's docstring."""

    name = "source"
    owner: str | None = None  # a broker source's claim holder: the service's id (None: no claim)
    _renewed = 0.0

    def start(self, position: Any, state: dict) -> None:
        """Continue after ``position`` (None: from the beginning); ``state`` as ``state()`` gave it."""

    def poll(self, timeout: float) -> list:
        """The next entries (``Entry`` or ``Rejected``), waiting up to ``timeout`` seconds for one."""
        raise NotImplementedError

    def ack(self, position: Any) -> None:
        """A durable checkpoint covers everything up to ``position``."""

    def reject(self, item: Rejected) -> None:
        """Record input that was refused (beyond the service's own log of it)."""

    def state(self) -> dict:
        """What the checkpoint keeps besides the position."""
        return {}

    def lag(self) -> float | None:
        """Entries (or rows) the source holds beyond the position, where it can tell."""
        return None

    def close(self) -> None:
        pass

    # -- one service per consumer group: a claim with a time to live at the broker ---------------
    def _claim_text(self) -> str:
        """What is claimed, in words (for messages)."""
        return self.name

    def _claim(self) -> bool:
        """Take the claim for ``owner`` (or keep it: a restart of the same service); False if another holds it."""
        return True

    def _renew(self) -> bool:
        """Extend the claim; False if another service holds it now."""
        return True

    def _release(self) -> None:
        """Give the claim up (a clean stop), so that another service may start at once."""

    def claim(self) -> None:
        """Refuse to start where another service reads the same group (``ConfigError``)."""
        if self.owner is None:
            return
        if not self._claim():
            raise self._refused()
        self._renewed = time.monotonic()

    def _refused(self) -> ConfigError:
        return ConfigError(f"{self._claim_text()}: another streamtrain serve reads it (its claim lapses "
                           f"{LEASE_SECONDS:.0f} s after it stops); stop it, or give this service its own")

    def release_claim(self) -> None:
        """On a clean stop: let another service start at once (if the broker is gone, the claim lapses)."""
        if self.owner is None:
            return
        try:
            self._release()
        except Exception:  # the broker gone
            pass

    def keep_claim(self) -> None:
        """Renew the claim every third of its time to live; stop learning if it was lost."""
        if self.owner is None or time.monotonic() - self._renewed < LEASE_SECONDS / 3:
            return
        if not self._renew():
            raise TrainingError(f"{self._claim_text()}: another streamtrain serve took it over (this one could not "
                                f"renew its claim for {LEASE_SECONDS:.0f} s); this service stops learning")
        self._renewed = time.monotonic()


# -- a directory of landing files ------------------------------------------------------------
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
        from ..readers import open_dataset

        cols = self.columns
        ds = open_dataset(self.path / name, cols.features, cols.label)
        if cols.features is None:
            cols.features = list(ds.feature_names)
        elif list(ds.feature_names) != cols.features:
            ds.close()
            raise DataError(f"{self.path / name}: features {list(ds.feature_names)}, the stream's are {cols.features}")
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


# -- rows posted over HTTP, in a write-ahead log ----------------------------------------------
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

    def __init__(self, directory: str | os.PathLike, limit_bytes: int = 64 << 20, fsync: bool = True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit, self.fsync = int(limit_bytes), fsync
        self.queue: deque = deque()
        self.queued_bytes = 0
        self.seq = 0  # the last sequence number written
        self.keys: OrderedDict[str, int] = OrderedDict()  # key digest -> sequence number
        self.cond = threading.Condition()
        self.fh = None
        self.segment_start = 0
        self.acked = 0

    # the log's records: magic, length, crc32, then a JSON header and the raw arrays
    @staticmethod
    def _encode(seq: int, digest: str | None, X: np.ndarray, t: np.ndarray) -> bytes:
        head = json.dumps({"seq": seq, "key_digest": digest, "rows": len(X), "x": [X.dtype.str, list(X.shape)],
                           "t": [t.dtype.str, list(t.shape)]}).encode()
        payload = struct.pack("<I", len(head)) + head + np.ascontiguousarray(X).tobytes() + \
            np.ascontiguousarray(t).tobytes()
        return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload

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
        # a key whose record the log no longer holds (cut off above) was never answered
        self.keys = OrderedDict((k, s) for k, s in self.keys.items() if s <= self.seq)
        self._new_segment()

    def _remember(self, digest: str, seq: int) -> None:
        self.keys[digest] = seq
        self.keys.move_to_end(digest)
        while len(self.keys) > KEYS_KEPT:
            self.keys.popitem(last=False)

    def _new_segment(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.segment_start = self.seq + 1
        self.fh = open(self.dir / f"{self.segment_start:020d}.wal", "ab")

    def append(self, X: np.ndarray, t: np.ndarray, key: str | None = None) -> tuple[int, bool]:
        """Write a request's rows durably; ``(sequence number, whether it was a repeat)``."""
        digest = key_digest(key) if key else None
        with self.cond:
            if digest and digest in self.keys:
                return self.keys[digest], True
            size = X.nbytes + t.nbytes
            if self.queued_bytes + size > self.limit and self.queue:
                raise QueueFull()
            self.seq += 1
            record = self._encode(self.seq, digest, X, t)
            self.fh.write(record)
            self.fh.flush()
            if self.fsync:
                os.fsync(self.fh.fileno())
            if digest:
                self._remember(digest, self.seq)
            self.queue.append((self.seq, X, t))
            self.queued_bytes += size
            if self.fh.tell() > SEGMENT_BYTES:
                self._new_segment()
            self.cond.notify()
            return self.seq, False

    def poll(self, timeout):
        with self.cond:
            if not self.queue:
                self.cond.wait(timeout)
            items = []
            while self.queue:
                seq, X, t = self.queue.popleft()
                self.queued_bytes -= X.nbytes + t.nbytes
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
        with self.cond:
            return {"key_digests": [[d, s] for d, s in self.keys.items()]}

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


# -- brokers ---------------------------------------------------------------------------------
READ_BYTES = 8 << 20  # what one read from a broker should bring, about: bounds memory with big entries


def _read_count(nbytes: int, entries: int, most: int) -> int:
    """Entries to ask for next, so that a read brings about ``READ_BYTES`` at the sizes just seen."""
    return max(1, min(most, READ_BYTES * entries // max(nbytes, 1)))


def _reason(e: BaseException, most: int = 300) -> str:
    """An exception in one line: its message (with its type, unless it is one of ours)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, StreamtrainError) and not text.startswith(type(e).__name__):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= most else text[:most] + "..."


def _one_line(text: str, most: int = 1000) -> str:
    """Text fit for a header or a log line: one line of UTF-8."""
    text = " ".join(text.split()).encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= most else text[:most] + "..."


def _refused(where: str, e: Exception) -> str:
    """Why a piece of the stream is refused: a ``DataError`` says it; anything else raised while
    parsing it (it must never stop the service) is named as it is."""
    return str(e) if isinstance(e, DataError) else f"{where}: cannot read it ({_reason(e)})"


def _shown(url: str) -> str:
    """A broker's URL for messages: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


# -- Redis Streams ---------------------------------------------------------------------------
def _stream_id(value) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


# Compare-and-set scripts on a claim key: renew (or take again once lapsed) if it holds the owner; release.
_REDIS_RENEW = """local v = redis.call('get', KEYS[1])
if v == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not v then redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 1 end
return 0"""
_REDIS_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0"""


class RedisSource(StreamSource):
    """A Redis stream read through a consumer group (``XREADGROUP``). An entry's rows are in its
    field ``rows`` (JSON) or ``arrow`` (an Arrow IPC stream). Entries are acknowledged (``XACK``)
    once a durable checkpoint covers them; after a restart the entries at or below the checkpoint's
    ID are acknowledged and skipped, the pending ones above it re-read in order, then new ones.
    Bad entries are copied to the stream ``<stream>:dead`` (with the error) and acknowledged."""

    name = "redis"

    def __init__(self, url: str, columns: Columns, stream: str, group: str = "streamtrain",
                 consumer: str = "streamtrain", count: int = 256):
        import redis

        self.shown = f"Redis stream {stream!r} at {_shown(url)}"
        try:
            self.client = redis.Redis.from_url(url)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--source {_shown(url)}: {_reason(e)}") from None
        self.stream, self.group, self.consumer, self.count = stream, group, consumer, int(count)
        self.most, self.count = self.count, min(self.count, 16)  # grows once entry sizes are known
        self.dead = f"{stream}:dead"
        self.claim_key = f"{stream}:streamtrain-claim:{group}"
        self.columns = columns
        self.position: tuple[int, int] | None = None
        self.unacked: list[bytes] = []
        self.backlog = True  # first the entries delivered before a restart, then new ones
        self._backlog_from = "0"

    def _claim_text(self) -> str:
        return f"consumer group {self.group!r} of Redis stream {self.stream!r}"

    def _claim(self) -> bool:
        return bool(self.client.eval(_REDIS_RENEW, 1, self.claim_key, self.owner, int(LEASE_SECONDS * 1000)))

    _renew = _claim

    def _release(self) -> None:
        self.client.eval(_REDIS_RELEASE, 1, self.claim_key, self.owner)

    def start(self, position, state):
        import redis

        try:
            self.claim()
            self.position = None if position is None else _stream_id(position)
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        except redis.ConnectionError as e:  # (timeouts included)
            raise ConfigError(f"{self.shown}: cannot reach Redis ({_reason(e)})") from None
        except redis.RedisError as e:
            raise ConfigError(f"{self.shown}: Redis refused ({_reason(e)})") from None

    def poll(self, timeout):
        self.keep_claim()
        ident = self._backlog_from if self.backlog else ">"
        got = self.client.xreadgroup(self.group, self.consumer, {self.stream: ident}, count=self.count,
                                     block=None if self.backlog else max(1, int(timeout * 1000)))
        entries = got[0][1] if got else []
        if entries:
            size = sum(len(k) + len(v) for _, fields in entries if fields for k, v in fields.items())
            self.count = _read_count(size, len(entries), self.most)
        if self.backlog and not entries:
            self.backlog = False
            return []
        items, stale = [], []
        for ident, fields in entries:
            sid = _stream_id(ident)
            if self.position is not None and sid <= self.position:
                stale.append(ident)  # the checkpoint holds it: acknowledge, skip
                continue
            if fields is None:  # deleted from the stream while pending
                stale.append(ident)
                continue
            where = f"{self.stream} entry {ident.decode()}"
            pos = ident.decode()
            try:
                X, y = self._parse(fields, where)
                items.append(Entry(pos, X, y, where, raw=(ident, fields)))
            except Exception as e:  # whatever the entry holds: dead-lettered, the others go on
                items.append(Rejected(pos, where, _refused(where, e), raw=(ident, fields)))
            self.position = sid
            self.unacked.append(ident)
        if self.backlog and entries:
            # the next backlog read continues after the last delivered id
            self._backlog_from = entries[-1][0]
        if stale:
            self.client.xack(self.stream, self.group, *stale)
        return items

    def _parse(self, fields: dict, where: str):
        if b"arrow" in fields:
            return self.columns.from_arrow(fields[b"arrow"], where)
        if b"rows" in fields:
            return self.columns.from_json(fields[b"rows"], where)
        raise DataError(f"{where}: no field 'rows' (JSON) or 'arrow' (Arrow IPC stream)")

    def reject(self, item):
        ident, fields = item.raw
        # the entry's fields, then its ID and the error (which an entry's own "id" or "error" cannot hide)
        self.client.xadd(self.dead, {**dict(fields), b"id": ident, b"error": _one_line(item.error).encode()})

    def ack(self, position):
        if position is None:
            return
        upto = _stream_id(position)
        done = [i for i in self.unacked if _stream_id(i) <= upto]
        if done:
            self.client.xack(self.stream, self.group, *done)
            self.unacked = [i for i in self.unacked if _stream_id(i) > upto]

    def lag(self):
        for group in self.client.xinfo_groups(self.stream):  # Redis 7 counts it for the group
            if group.get("name") in (self.group, self.group.encode()) and group.get("lag") is not None:
                return float(group["lag"])
        # Redis 6: count what follows the position, up to 100 entries (a scrape must stay cheap)
        after = "-" if self.position is None else "(" + "-".join(map(str, self.position))
        return float(len(self.client.xrange(self.stream, after, "+", count=100)))

    def close(self):
        self.release_claim()
        self.client.close()


# -- NATS JetStream ----------------------------------------------------------------------------
NATS_CLAIMS = "streamtrain-claims"  # the key-value bucket of the services' claims on durable consumers


class NatsSource(StreamSource):
    """A JetStream stream read by a durable pull consumer. A message's data is JSON rows or an
    Arrow IPC stream. The consumer acknowledges "all" up to a message once a durable checkpoint
    covers it; on a restart the consumer is made again to start at the checkpoint's stream
    sequence + 1 (seeking, rather than waiting for redeliveries that would reorder the stream).
    Bad messages are published to ``dead`` (default ``streamtrain.dead.<stream>``) with the error."""

    name = "nats"

    def __init__(self, url: str, columns: Columns, stream: str, durable: str = "streamtrain",
                 dead: str | None = None, count: int = 256):
        self.url, self.stream, self.durable, self.count = url, stream, durable, int(count)
        self.shown = f"NATS stream {stream!r} at {_shown(url)}"
        self.most, self.count = self.count, min(self.count, 16)  # grows once entry sizes are known
        self.dead = dead or f"streamtrain.dead.{stream}"
        self.columns = columns
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self.thread.start()
        self.nc = self.js = self.sub = None
        self.position: int | None = None
        self.last_msg = None  # the newest message delivered, whose "ack all" covers the rest
        self.delivered: deque = deque()
        self.kv = None  # the claims' bucket
        self.claim_key, self.revision = f"{stream}.{durable}", 0  # the claim's key and its last write

    def _run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, position, state):
        self.position = None if position is None else int(position)
        try:
            self._run(self._connect())
        except Exception as e:
            raise ConfigError(f"{self.shown}: cannot reach NATS ({_reason(e)})") from None
        try:
            self.claim()  # before the consumer, which another service may be using
            self._run(self._start())
        except ConfigError:
            raise
        except Exception as e:  # no such stream, no JetStream, a timeout
            raise ConfigError(f"{self.shown}: NATS refused ({_reason(e)})") from None

    # The claim: a key in a JetStream key-value bucket whose values live LEASE_SECONDS unless rewritten.
    def _claim_text(self) -> str:
        return f"durable consumer {self.durable!r} of NATS stream {self.stream!r}"

    async def _claims(self):
        from nats.js.errors import BucketNotFoundError

        if self.kv is None:
            try:
                self.kv = await self.js.key_value(NATS_CLAIMS)
            except BucketNotFoundError:
                self.kv = await self.js.create_key_value(bucket=NATS_CLAIMS, ttl=LEASE_SECONDS)
        return self.kv

    async def _claim_async(self) -> bool:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv, key = await self._claims(), self.claim_key
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # never claimed, released, or lapsed
            entry = None
        try:
            if entry is None:
                self.revision = await kv.create(key, self.owner.encode())
            elif entry.value == self.owner.encode():  # this service, restarted
                self.revision = await kv.update(key, self.owner.encode(), last=entry.revision)
            else:
                return False
        except KeyWrongLastSequenceError:  # another service claimed it in between
            return False
        return True

    def _claim(self) -> bool:
        return self._run(self._claim_async())

    _renew = _claim  # (rewriting the key restarts its time to live)

    def _release(self) -> None:
        async def release():
            from nats.js.errors import KeyWrongLastSequenceError

            try:
                await (await self._claims()).delete(self.claim_key, last=self.revision)
            except KeyWrongLastSequenceError:  # not ours any more
                pass

        self._run(release(), 5)

    async def _connect(self):
        import nats

        first: list[BaseException] = []  # why the first connection failed

        async def said(e):  # one line, not the client's traceback, each time the connection fails
            if self.nc is None:
                first.append(e)
            else:
                logging.getLogger("streamtrain").warning(f"{self.shown}: {_reason(e)}")

        # A first connection that fails is an error at once (nats-py would retry it forever); once
        # connected, the client reconnects for as long as it takes.
        try:
            nc = await nats.connect(self.url, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=said)
        except Exception as e:
            raise (first[-1] if first else e) from None
        nc.options.update(max_reconnect_attempts=-1, reconnect_time_wait=2)
        self.nc = nc
        self.js = self.nc.jetstream()

    async def _start(self):
        """The durable consumer, made again to start after the position (at start-up, and on a
        seek back to it, on the same connection)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            await self.js.delete_consumer(self.stream, self.durable)
        except NotFoundError:
            pass
        start = (self.position or 0) + 1
        cfg = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.ALL, max_ack_pending=-1,
                             ack_wait=3600, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        await self.js.add_consumer(self.stream, cfg)
        if self.sub is not None:  # the old consumer's subscription
            try:
                await self.sub.unsubscribe()
            except Exception:  # gone with its consumer already
                pass
        self.sub = await self.js.pull_subscribe_bind(self.durable, self.stream)
        self.deliveries = 0  # the consumer's delivery sequence: a gap in it is a message lost on the way
        self.delivered.clear()  # the old consumer's messages: the new one starts after them

    def poll(self, timeout):
        self.keep_claim()
        try:
            msgs = self._run(self._fetch(timeout), timeout + 30)
        except TimeoutError:
            return []
        if msgs:
            self.count = _read_count(sum(len(m.data) for m in msgs), len(msgs), self.most)
        items = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if m.metadata.sequence.consumer != self.deliveries + 1:
                # A delivery went missing between the server and here (a fetch that timed out while
                # messages were on their way): it would come back only after the ack wait, out of
                # order. Seek back to the position instead, and read on from there in order.
                self._run(self._start())
                return items
            self.deliveries += 1
            if self.position is not None and seq <= self.position:
                continue  # a redelivery of what is already here
            where = f"{self.stream} message {seq}"
            data = m.data
            # The message is kept until a checkpoint acknowledges it, without its payload: the rows are
            # in X (or views of them), and the entry holds the payload for a dead letter meanwhile
            # (its labels may yet be refused).
            m.data = b""
            try:
                if data[:4] == b"\xff\xff\xff\xff":
                    X, y = self.columns.from_arrow(data, where)
                else:
                    X, y = self.columns.from_json(data, where)
                items.append(Entry(seq, X, y, where, raw=data))
            except Exception as e:  # whatever the message holds: dead-lettered, the others go on
                items.append(Rejected(seq, where, _refused(where, e), raw=data))
            self.position = seq
            self.delivered.append((seq, m))
        return items

    async def _fetch(self, timeout):
        import nats.errors

        try:
            return await self.sub.fetch(self.count, timeout=max(timeout, 0.05))
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []

    def reject(self, item):
        self._run(self.nc.publish(self.dead, item.raw or b"", headers={"error": _one_line(item.error),
                                                                       "stream-seq": str(item.position)}))

    def ack(self, position):
        if position is None:
            return
        last = None
        while self.delivered and self.delivered[0][0] <= int(position):
            last = self.delivered.popleft()[1]
        if last is not None:
            self._run(last.ack())  # ack policy "all": every message up to it

    def lag(self):
        try:
            info = self._run(self.sub.consumer_info(), 5)
            return float(info.num_pending)
        except Exception:  # the lag is a metric: never a reason to fail
            return None

    def close(self):
        if self.nc is not None:
            self.release_claim()
            try:
                self._run(self.nc.drain(), 5)
            except Exception:  # closing: the broker may be gone already
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)


def open_source(spec: str, columns: Columns, log_dir: str | os.PathLike, queue_bytes: int) -> StreamSource:
    """The source ``--source`` names: ``http``, ``dir:PATH``, ``redis://HOST:PORT/DB?stream=NAME``,
    ``nats://HOST:PORT?stream=NAME``."""
    if spec == "http":
        return LogSource(log_dir, queue_bytes)
    if spec.startswith("dir:"):
        return DirectorySource(spec[4:], columns)
    parts = urlsplit(spec)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("redis", "rediss", "nats"):
        stream = query.pop("stream", None)
        if not stream:
            raise ConfigError(f"--source {spec}: name the stream (?stream=NAME)")
        base = parts._replace(query="").geturl()
        known = ("durable", "dead") if parts.scheme == "nats" else ("group", "consumer")
        unknown = sorted(set(query) - set(known))
        if unknown:
            raise ConfigError(f"--source {spec}: unknown parameter {unknown[0]!r} (known: stream, "
                              f"{', '.join(known)})")
        if parts.scheme == "nats":
            return NatsSource(base, columns, stream, query.get("durable", "streamtrain"), query.get("dead"))
        return RedisSource(base, columns, stream, query.get("group", "streamtrain"),
                           query.get("consumer", "streamtrain"))
    raise ConfigError(f"--source {spec!r}: use http, dir:PATH, redis://HOST:PORT/DB?stream=NAME or "
                      "nats://HOST:PORT?stream=NAME")
