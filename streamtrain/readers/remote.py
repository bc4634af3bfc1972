"""Remote sources (s3://, gs://, http://, memory://...) through fsspec."""

from __future__ import annotations

import os
import re

from ..errors import DataError

__all__ = ["is_url", "open_filesystem", "remote_error"]

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` paths other than ``file://``."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


def open_filesystem(path: str, storage_options: dict | None = None):
    """``(filesystem, path inside it)``: pyarrow's local filesystem, or an fsspec one for URLs."""
    if not is_url(path):
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), os.path.abspath(path.removeprefix("file://"))
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the s3 extra
        raise DataError(f"{path}: remote paths need fsspec (pip install 'streamtrain[s3]')") from None
    try:
        fs, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise DataError(f"{path}: cannot open this URL ({e})") from None
    return fs, inner


def remote_error(e: BaseException) -> str:
    """A remote failure in a few words: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
