"""A Redis stream, read through a consumer group."""

from __future__ import annotations


from ...errors import ConfigError, DataError
from ..rows import Columns
from .base import Entry, Rejected, StreamSource
from .broker import _one_line, _read_count, _reason, _refused, _shown
from .claim import LEASE_SECONDS

__all__ = ['RedisSource']


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
                 consumer: str = "streamtrain", count: int = 256, timeout: float = 30.0):
        import redis

        self.shown = f"Redis stream {stream!r} at {_shown(url)}"
        try:
            # A broker that stops answering (a frozen host, a network partition) fails the service
            # after ``timeout`` seconds, said in /healthz, instead of hanging its threads for good.
            self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 10.0))
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
