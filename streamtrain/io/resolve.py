"""Which checkpoint: names by step, the newest valid one in a directory, rotation, leftovers."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import Schema, checkpoint_name, load_checkpoint
from .background import crash_point

__all__ = ['remove_leftovers', 'checkpoint_name', 'list_checkpoints', 'latest_checkpoint', 'resolve_checkpoint', 'rotate']


_NAME = re.compile(r"^ckpt-(\d{12})\.npz$")


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files a crashed save left behind (never a finished checkpoint)."""
    gone = []
    for p in Path(directory).glob(".ckpt-*.npz.tmp-*"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), reverse=True)


def latest_checkpoint(directory: str | os.PathLike, warn=None, schema: Schema | None = None,
                      set_aside: bool = False, keep=None):
    """``(path, arrays, meta)`` of the newest checkpoint that loads (and fits ``schema``), or None
    when the directory holds no checkpoint at all (``keep``: which arrays, see ``load_checkpoint``).

    A newer checkpoint that fails to load is reported through ``warn`` and skipped (with
    ``set_aside``, renamed ``*.invalid`` so it cannot outrank the checkpoints written after it),
    so a crash while writing (or a damaged file) never costs more than one interval; when every
    one fails, that is a ``CheckpointError``.
    """
    warn = warn or logging.getLogger("streamtrain").warning
    found = list_checkpoints(directory)
    for i, p in enumerate(found):
        try:
            arrays, meta = load_checkpoint(p, schema, keep)
        except CheckpointError as e:
            if i + 1 == len(found):
                raise CheckpointError(f"{e}; no valid checkpoint left in {directory}") from None
            if set_aside:
                os.replace(p, p.with_name(p.name + ".invalid"))
                warn(f"{e}; moved aside to {p.name}.invalid, using an older checkpoint")
            else:
                warn(f"{e}; using an older checkpoint")
            continue
        return p, arrays, meta
    return None


def resolve_checkpoint(path: str | os.PathLike, schema: Schema | None = None, warn=None, keep=None):
    """``(path, arrays, meta)`` from a checkpoint file, or from a directory's newest valid one
    (``keep``: which arrays, see ``load_checkpoint``); a URL names one in object storage
    (``--checkpoint-dir s3://...``: its newest complete checkpoint)."""
    from .store import is_url, resolve_remote

    if is_url(str(path)):
        return resolve_remote(str(path), schema, warn, keep)
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path, warn, schema, keep=keep)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint in this directory")
        return found
    arrays, meta = load_checkpoint(path, schema, keep)
    return path, arrays, meta


def rotate(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the newest)."""
    for old in list_checkpoints(directory)[max(1, keep):]:
        old.unlink(missing_ok=True)
        crash_point("during_rotation")
