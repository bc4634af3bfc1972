"""Where a service's rows come from, each with a position the checkpoint keeps.

A source is started after a position (``start``; None: from the beginning), hands over pieces
of the stream in order (``poll``: ``Entry`` objects with their rows, or ``Rejected`` ones whose
rows cannot be used), and is told when a checkpoint covering a position is durable (``ack``):
brokers acknowledge their messages only then, so a crash before it redelivers them and the
position skips what the checkpoint already holds. ``reject`` records bad input (a broker's
dead-letter stream or subject; always the service's ``rejected.jsonl``).

One module per source, each registered in ``SOURCES`` by the ``--source`` it answers to:

- ``landing.DirectorySource`` (``dir:PATH``): files landing in a directory by atomic rename;
- ``http_log.LogSource`` (``http``): rows posted to ``/learn``, appended to a write-ahead log
  before they are answered;
- ``redis_streams.RedisSource`` (``redis://``, ``rediss://``): a Redis stream, read through a
  consumer group;
- ``nats_jetstream.NatsSource`` (``nats://``): a NATS JetStream stream, read by a durable pull consumer.

``base`` holds the interface, ``claim`` the claim a broker source holds on its consumer group,
``broker`` what the broker sources share. A source is added in a module of its own and one entry
of ``SOURCES``: ``(scheme, make(spec, columns, log_dir, queue_bytes), usage)``.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple
from urllib.parse import parse_qs, urlsplit

from ...errors import ConfigError
from ..rows import Columns
from .base import Entry, Rejected, StreamSource
from .claim import LEASE_SECONDS
from .http_log import KEYS_KEPT, MAX_KEY_CHARS, LogSource, QueueFull, key_digest
from .landing import DirectorySource

__all__ = ["Entry", "Rejected", "StreamSource", "DirectorySource", "LogSource", "RedisSource", "NatsSource",
           "open_source", "SOURCES", "Registered", "QueueFull", "MAX_KEY_CHARS", "KEYS_KEPT", "LEASE_SECONDS", "key_digest"]


def __getattr__(name: str):
    # The broker sources import their clients' modules on use; so are they, here.
    if name == "RedisSource":
        from .redis_streams import RedisSource
        return RedisSource
    if name == "NatsSource":
        from .nats_jetstream import NatsSource
        return NatsSource
    raise AttributeError(name)


class Registered(NamedTuple):
    """A source as ``--source`` names it: ``make(spec, columns, log_dir, queue_bytes)``, and the
    form of its ``--source`` (for help and errors)."""

    make: Callable[..., StreamSource]
    usage: str


def _broker_query(spec: str, known: tuple[str, ...]) -> tuple[str, str, dict]:
    """``(base URL, stream, other parameters)`` of a broker's ``--source`` URL."""
    parts = urlsplit(spec)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    stream = query.pop("stream", None)
    if not stream:
        raise ConfigError(f"--source {spec}: name the stream (?stream=NAME)")
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise ConfigError(f"--source {spec}: unknown parameter {unknown[0]!r} (known: stream, {', '.join(known)})")
    return parts._replace(query="").geturl(), stream, query


def _redis(spec, columns, log_dir, queue_bytes):
    from .redis_streams import RedisSource

    base, stream, q = _broker_query(spec, ("group", "consumer", "timeout"))
    try:
        timeout = float(q.get("timeout", 30))
    except ValueError:
        timeout = -1.0
    if not 1 <= timeout < 3600:
        raise ConfigError(f"--source {spec}: timeout must be a number of seconds from 1 to 3600 (as "
                          "?timeout=30, how long a broker that stopped answering is waited for)")
    return RedisSource(base, columns, stream, q.get("group", "streamtrain"), q.get("consumer", "streamtrain"),
                       timeout=timeout)


def _nats(spec, columns, log_dir, queue_bytes):
    from .nats_jetstream import NatsSource

    base, stream, q = _broker_query(spec, ("durable", "dead"))
    return NatsSource(base, columns, stream, q.get("durable", "streamtrain"), q.get("dead"))


# The sources by what a --source starts with: "http", "dir:" or a URL scheme.
SOURCES: dict[str, Registered] = {
    "http": Registered(lambda spec, columns, log_dir, queue_bytes: LogSource(log_dir, queue_bytes), "http"),
    "dir": Registered(lambda spec, columns, log_dir, queue_bytes: DirectorySource(spec[4:], columns), "dir:PATH"),
    "redis": Registered(_redis, "redis://HOST:PORT/DB?stream=NAME"),  # (&group=, &consumer=, &timeout=SECONDS)
    "rediss": Registered(_redis, "rediss://HOST:PORT/DB?stream=NAME"),
    "nats": Registered(_nats, "nats://HOST:PORT?stream=NAME"),
}


def open_source(spec: str, columns: Columns, log_dir: str | os.PathLike, queue_bytes: int) -> StreamSource:
    """The source ``--source`` names (see ``SOURCES``)."""
    scheme = spec if spec == "http" else spec.partition(":")[0].lower() if ":" in spec else ""  # as urlsplit
    registered = SOURCES.get(scheme)
    if registered is None or (scheme == "http" and spec != "http"):
        usages = [r.usage for k, r in SOURCES.items() if k != "rediss"]
        raise ConfigError(f"--source {spec!r}: use {', '.join(usages[:-1])} or {usages[-1]}")
    return registered.make(spec, columns, log_dir, queue_bytes)
