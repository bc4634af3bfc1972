"""What the broker sources share: how much one read brings, and reasons in one line."""

from __future__ import annotations

from urllib.parse import urlsplit

from ...errors import DataError, StreamtrainError

__all__ = ['READ_BYTES']


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
