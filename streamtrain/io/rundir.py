"""A run's directory: its checkpoints, ``best.npz``, ``metrics.jsonl`` and the lock that makes it one run's.

A directory holds one run. Its checkpoints are ``ckpt-<step>.npz``, newest by step, which
within one run is the order they were written (an invalid newer checkpoint passed over on
resume is moved aside, so it cannot outrank the ones written after it). ``metrics.jsonl``
holds one line per finished epoch of this run, up to the checkpoint resumed from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, os_reason
from .atomic import atomic_path
from .background import BackgroundWriter
from .checkpoint import Schema, save_checkpoint
from .history import METRICS, parse_history
from .lock import DirectoryLock
from .resolve import checkpoint_name, latest_checkpoint, list_checkpoints, rotate

__all__ = ["RunDirectory", "read_history"]


class RunDirectory:
    """``with RunDirectory(path):`` locks it for this process until the last write is done."""

    METRICS = METRICS
    BEST = "best.npz"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.where = str(self.path)  # what messages call it
        self.lock = DirectoryLock(self.path)
        self.writer = BackgroundWriter()  # checkpoints are written beside training

    def __enter__(self) -> "RunDirectory":
        self.lock.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.writer.wait()  # the last checkpoint is on disk before the lock is released
            else:
                self.writer.wait_quietly()
        finally:
            self.lock.__exit__(*exc)

    # -- whose directory -----------------------------------------------------
    def holds_run(self) -> bool:
        """Whether checkpoints of a run are here."""
        return bool(list_checkpoints(self.path)) or (self.path / self.BEST).exists()

    def clear(self) -> None:
        """Remove a previous run's checkpoints and metrics (``--overwrite``)."""
        for p in [*list_checkpoints(self.path), *self.path.glob("ckpt-*.npz.invalid"), self.path / self.BEST,
                  self.path / self.METRICS]:
            p.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise if the directory was deleted or replaced since it was locked."""
        self.lock.check()

    # -- checkpoints -------------------------------------------------------------
    def resume_point(self, schema: Schema, warn=None):
        """``(path, arrays, meta)`` of the newest valid checkpoint, or None if there is none; newer
        invalid ones are reported and moved aside (``.invalid``); none valid is an error."""
        return latest_checkpoint(self.path, warn, schema, set_aside=True)

    def checkpoint_bytes(self, path) -> bytes:
        """The bytes of the checkpoint ``resume_point`` found at ``path`` (sent to other processes)."""
        return Path(path).read_bytes()

    def save(self, arrays: dict, meta: dict, step: int, keep: int, schema: Schema | None = None,
             fork: bool = False, best: bool = False) -> Path:
        """Write a checkpoint (a snapshot: training may go on) in the background; rotate old ones;
        with ``best``, copy it to ``best.npz`` too (apart from the rotation). With ``schema``, a
        checkpoint its loader would refuse is not written (``CheckpointError``). ``fork``: written
        by a forked process (``BackgroundWriter.submit``): ``arrays`` may be the live arrays, not
        a snapshot."""
        self.check()
        path = self.path / checkpoint_name(step)

        def write():
            try:
                save_checkpoint(path, arrays, meta, schema=schema)
            except OSError as e:  # disk full, permissions...: the previous checkpoint is intact
                raise CheckpointError(f"{self.name_of(path.name)}: cannot write the checkpoint ({os_reason(e)}); "
                                      "the previous checkpoint is kept") from None
            self._written(path, keep, best)

        self.writer.submit(write, fork=fork, then=self._published(path, step, keep, best))
        return path

    def _written(self, path: Path, keep: int, best: bool) -> None:
        """After the checkpoint at ``path`` is on disk (in the writer, a forked one too): rotation
        and ``best.npz``."""
        rotate(self.path, keep)
        if best:
            with atomic_path(self.path / self.BEST) as tmp:
                shutil.copyfile(path, tmp)

    def _published(self, path: Path, step: int, keep: int, best: bool):
        """What this process does once the writer has written ``path`` (None: nothing)."""
        return None

    def name_of(self, name: str) -> str:
        """What messages call the run's local file ``name``."""
        return str(self.path / name)

    def wait(self) -> None:
        self.writer.wait()

    # -- metrics -----------------------------------------------------------------
    def start_metrics(self) -> None:
        """A new run's metrics start empty."""
        path = self.path / self.METRICS
        if path.exists():
            try:
                with open(path, "w"):
                    pass
            except OSError as e:
                raise CheckpointError(f"{self.name_of(self.METRICS)}: cannot write ({os_reason(e)})") from None

    def metrics_upto(self, epochs: int, last: dict[str, Any] | None) -> list[dict[str, Any]]:
        """This run's records of the first ``epochs`` epochs (the checkpoint resumed from), the file
        rewritten to hold just those; ``last``, the checkpoint's own record, fills a line a crash lost."""
        path = self.path / self.METRICS
        by_epoch: dict[int, dict] = {}
        text = path.read_text(errors="replace") if path.is_file() else ""
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and 1 <= record["epoch"] <= epochs:
                by_epoch[record["epoch"]] = record
        if last is not None and last.get("epoch") not in by_epoch and last.get("epoch", 0) <= epochs:
            by_epoch[last["epoch"]] = last
        history = [by_epoch[e] for e in sorted(by_epoch)]
        kept = "".join(json.dumps(r) + "\n" for r in history)
        if kept != text:
            with atomic_path(path) as tmp:
                tmp.write_text(kept)
        return history

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line per epoch, for any tool to plot."""
        path = self.path / self.METRICS
        try:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as e:
            raise CheckpointError(f"{self.name_of(self.METRICS)}: cannot write ({os_reason(e)}); the checkpoint of epoch "
                                  f"{record['epoch']} is saved, so --resume continues from it") from None


def read_history(checkpoint: str | os.PathLike) -> list[dict[str, Any]]:
    """The epochs recorded in ``metrics.jsonl`` beside a checkpoint (or in a run directory, local or a URL)."""
    if isinstance(checkpoint, str) and "://" in checkpoint:
        from .store import is_url, remote_history

        if is_url(checkpoint):
            return remote_history(checkpoint)
    p = Path(checkpoint)
    path = (p if p.is_dir() else p.parent) / RunDirectory.METRICS
    return parse_history(path.read_text(errors="replace")) if path.is_file() else []
