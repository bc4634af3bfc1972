"""A NATS JetStream stream, read by a durable pull consumer."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

from ...errors import ConfigError
from ..rows import Columns
from .base import Entry, Rejected, StreamSource
from .broker import _one_line, _read_count, _reason, _refused, _shown
from .claim import LEASE_SECONDS

__all__ = ['NatsSource']


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
        self.ahead = None  # the next fetch, made while the last one's messages are parsed (a future)
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
        ahead, self.ahead = self.ahead, None
        try:
            msgs = (ahead or asyncio.run_coroutine_threadsafe(self._fetch(timeout), self.loop)).result(timeout + 30)
        except TimeoutError:
            return []
        if msgs:
            full = len(msgs) == self.count
            self.count = _read_count(sum(len(m.data) for m in msgs), len(msgs), self.most)
            if full:  # more is likely there: the next fetch on its way while these are parsed
                self.ahead = asyncio.run_coroutine_threadsafe(self._fetch(timeout), self.loop)
        items = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if m.metadata.sequence.consumer != self.deliveries + 1:
                # A delivery went missing between the server and here (a fetch that timed out while
                # messages were on their way): it would come back only after the ack wait, out of
                # order. Seek back to the position instead, and read on from there in order.
                self._forget_ahead()
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

    def _forget_ahead(self) -> None:
        """Cancel the fetch made ahead, if any (what it brings is not read: it comes again)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.cancel()
            try:
                ahead.result(5)
            except Exception:  # cancelled, or failed: nothing of it is used
                pass

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
        self._forget_ahead()
        if self.nc is not None:
            self.release_claim()
            try:
                self._run(self._drain(), 5)
            except Exception:  # closing: the broker may be gone already
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _drain(self):
        """Send what is still to go (acknowledgements, dead letters), then close. The consumer's
        subscription goes first, its waiting messages discarded (they come again to whoever reads
        on): after a fetch that timed out it can hold the server's late reply to that fetch, which
        nothing reads, and the connection's drain would wait for it until its timeout."""
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:  # gone already
                pass
        await self.nc.drain()
