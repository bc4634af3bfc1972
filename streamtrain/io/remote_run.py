"""A run's checkpoints in object storage (``--checkpoint-dir s3://bucket/run``), for clusters
whose hosts share no file system.

The run is written as in a local directory, into a staging directory of this process's (removed
at the end), and each checkpoint is then uploaded: first the checkpoint object, then
``metrics.jsonl``, and last a small manifest naming the checkpoint and its size
(``manifest-<step>.json``). A checkpoint counts only once its manifest exists and the object it
names too, so a process killed during an upload leaves the previous checkpoint the newest. Resuming reads the newest complete manifest's checkpoint (one that fails to load is set
aside, its manifest renamed ``.invalid``, as in a directory); keeping ``keep`` deletes a manifest
before its checkpoint, and checkpoints no manifest names (an upload cut short).

Credentials and the endpoint come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``...), as for remote data. One run per prefix: a new run there is refused
unless resumed or ``--overwrite`` (two runs started on one prefix at once are not prevented:
object stores have no lock that every one of them honours).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..readers.remote import is_url, remote_error
from .background import crash_point
from .checkpoint import Schema, checkpoint_name, load_checkpoint
from .rundir import RunDirectory
from .store import CHECKPOINT as _CHECKPOINT
from .store import MANIFEST as _MANIFEST
from .store import Store as _Store

__all__ = ["RemoteRunDirectory", "is_url", "open_run_directory", "STAGING_PREFIX", "STAGING_MARK"]


def open_run_directory(path):
    """The run directory for ``--checkpoint-dir``: local, or in object storage for a URL."""
    return RemoteRunDirectory(path) if is_url(str(path)) else RunDirectory(path)


class RemoteRunDirectory(RunDirectory):
    """A run directory whose checkpoints, ``metrics.jsonl`` and ``best.npz`` live under a URL."""

    def __init__(self, url: str):
        self.store = _Store(url)
        self.url = self.store.url
        protocols = self.store.fs.protocol if isinstance(self.store.fs.protocol, tuple) else (self.store.fs.protocol,)
        if "memory" in protocols:
            raise CheckpointError(f"{self.url}: memory:// keeps nothing once this process ends; give a "
                                  "directory or a bucket (s3://bucket/run)")
        if not self.store.root.strip("/") or "/" not in self.store.root.strip("/"):
            raise CheckpointError(f"{self.url}: give a bucket and a prefix for the run, e.g. s3://bucket/runs/a")
        _remove_stale_staging()
        super().__init__(Path(tempfile.mkdtemp(prefix=STAGING_PREFIX)))
        self.where = self.url

    def __enter__(self) -> "RemoteRunDirectory":
        try:
            super().__enter__()
            # (marked as staging once locked: the clean-up below removes marked, unlocked directories alone)
            (self.path / STAGING_MARK).write_text(f"{os.getpid()}\n")
            self.store.probe()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)  # the last checkpoint uploaded first
            if exc[0] is None:  # the last epoch's line came after its checkpoint
                self._upload_metrics()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)

    def name_of(self, name: str) -> str:
        return f"{self.path / name} (the local staging copy of {self.url}; TMPDIR says where)"

    def _upload(self, put, name: str, what: str = "upload") -> None:
        try:
            put()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - the store's errors are many kinds; each is said in a line
            raise CheckpointError(f"{self.store.where(name)}: cannot {what} ({remote_error(e)})") from None

    def _upload_metrics(self) -> None:
        metrics = self.path / self.METRICS
        if metrics.is_file():
            self._upload(lambda: self.store.put(metrics, self.METRICS), self.METRICS)

    def holds_run(self) -> bool:
        names = self.store.listing()
        return any(_CHECKPOINT.match(n) or _MANIFEST.match(n) for n in names) or self.BEST in names

    def clear(self) -> None:
        super().clear()
        names = self.store.listing()
        try:  # manifests first: a crash on the way leaves no manifest naming a deleted checkpoint
            self.store.remove(n for n in names if _MANIFEST.match(n.removesuffix(".invalid")))
            self.store.remove(n for n in names if _CHECKPOINT.match(n) or n in (self.BEST, self.METRICS))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{self.url}: cannot remove the previous run ({remote_error(e)})") from None

    def checkpoint_bytes(self, path) -> bytes:
        return (self.path / str(path).rsplit("/", 1)[-1]).read_bytes()  # the copy downloaded

    def resume_point(self, schema: Schema, warn=None):
        """``(URL, arrays, meta)`` of the newest checkpoint whose manifest is complete and
        which loads; newer ones that do not are reported and their manifests set aside. The
        store's own failures (a timeout, no room to download) are errors: nothing is set aside."""
        warn = warn or (lambda m: None)
        listing = self.store.listing()

        def load(target):
            local = self.path / target
            try:
                self.store.get(target, local)
                return load_checkpoint(local, schema, name=self.store.where(target))
            except CheckpointError:  # (a failed copy never stays staged: the staged newest is the one published)
                local.unlink(missing_ok=True)
                raise

        def set_aside(manifest, e):
            self._upload(lambda: self.store.fs.mv(self.store.key(manifest), self.store.key(manifest + ".invalid")),
                         manifest, "set it aside")
            warn(f"{e}; its manifest moved aside to {manifest}.invalid, using an older checkpoint")

        found = self.store.newest(listing, load, set_aside)
        if found is not None and self.METRICS in listing:
            self.store.get(self.METRICS, self.path / self.METRICS)
        return found

    def metrics_upto(self, epochs: int, last: dict[str, Any] | None) -> list[dict[str, Any]]:
        history = super().metrics_upto(epochs, last)
        self._upload_metrics()  # (a resume from an older checkpoint drops the later epochs there too)
        return history

    def _written(self, path: Path, keep: int, best: bool) -> None:
        pass  # everything else once it is uploaded (below)

    def _published(self, path: Path, step: int, keep: int, best: bool):
        def publish():
            self._upload(lambda: self.store.put(path, path.name), path.name)
            crash_point("after_upload")
            self._upload_metrics()
            manifest = f"manifest-{int(step):012d}.json"
            self._upload(lambda: self.store.fs.pipe_file(self.store.key(manifest), json.dumps(
                {"checkpoint": path.name, "bytes": path.stat().st_size, "step": int(step)}).encode()), manifest)
            crash_point("after_manifest")
            self._upload(lambda: self._rotate_remote(keep, path.name), path.name, "delete the checkpoints before it")
            if best:
                self._upload(lambda: self.store.put(path, self.BEST), self.BEST)
            for old in self.path.glob("ckpt-*.npz"):  # staged: this checkpoint alone, until the next
                if old != path:
                    old.unlink(missing_ok=True)

        return publish

    def _rotate_remote(self, keep: int, published: str) -> None:
        """Keep the newest ``keep`` manifests and their checkpoints; a manifest goes before its
        checkpoint, and checkpoints that no manifest names (uploads cut short) go too; never
        ``published``, the one just published (a listing may lag behind its manifest)."""
        listing = self.store.listing()
        manifests = self.store.manifests(listing)
        self.store.remove(manifests[max(1, keep):])
        kept = {published, *(checkpoint_name(int(_MANIFEST.match(n).group(1))) for n in manifests[:max(1, keep)])}
        self.store.remove(n for n in listing if _CHECKPOINT.match(n) and n not in kept)
        crash_point("during_rotation")


STAGING_PREFIX = "streamtrain-run-"
STAGING_MARK = ".streamtrain-staging"  # written once the directory is locked


def _remove_stale_staging() -> None:
    """Remove staging directories that runs killed (kill -9, an MPI abort) left behind: this
    user's directories marked as staging (the mark is written once the lock is held, so a run
    starting is never taken for one) whose lock no process holds (the kernel drops a dead
    process's lock). Nothing else there is touched: a run's directory with that name has no mark."""
    import fcntl

    for d in Path(tempfile.gettempdir()).glob(STAGING_PREFIX + "*"):
        try:
            if d.is_symlink() or d.stat().st_uid != os.getuid() or not (d / STAGING_MARK).is_file():
                continue
            fd = os.open(d / ".lock", os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # not ours, or gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live run's
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


