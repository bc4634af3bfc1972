"""A run's checkpoints in object storage (``--checkpoint-dir s3://bucket/run``), for clusters
whose hosts share no file system.

The run is written as in a local directory, into a staging directory of this process's (removed
at the end), and each checkpoint is then uploaded: first the checkpoint object, then
``metrics.jsonl``, and last a small manifest naming the checkpoint and its size
(``manifest-<step>.json``). A checkpoint counts only once its manifest exists and the object it
names has that size, so a process killed during an upload leaves the previous checkpoint the
newest. Resuming reads the newest complete manifest's checkpoint (one that fails to load is set
aside, its manifest renamed ``.invalid``, as in a directory); keeping ``keep`` deletes a manifest
before its checkpoint, and checkpoints no manifest names (an upload cut short).

Credentials and the endpoint come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``...), as for remote data. One run per prefix: a new run there is refused
unless resumed or ``--overwrite`` (two runs started on one prefix at once are not prevented:
object stores have no lock that every one of them honours).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DataError
from ..readers.remote import is_url, open_filesystem, remote_error
from .background import crash_point
from .checkpoint import Schema, load_checkpoint
from .resolve import checkpoint_name, rotate
from .rundir import RunDirectory, parse_history

__all__ = ["RemoteRunDirectory", "is_url", "open_run_directory", "resolve_remote", "remote_history"]

_MANIFEST = re.compile(r"^manifest-(\d{12})\.json$")
_CHECKPOINT = re.compile(r"^ckpt-(\d{12})\.npz$")
MAX_MANIFEST_BYTES = 64 << 10  # a manifest is a few lines; anything larger is not one of ours


def open_run_directory(path):
    """The run directory for ``--checkpoint-dir``: local, or in object storage for a URL."""
    return RemoteRunDirectory(path) if is_url(str(path)) else RunDirectory(path)


class _Store:
    """A run's prefix in object storage: its manifests, checkpoints and other objects."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/")
        try:
            self.fs, self.root = open_filesystem(self.url)
        except DataError as e:
            raise CheckpointError(str(e)) from None

    def key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def listing(self) -> dict[str, int]:
        """Name -> size of the objects directly under the prefix (none: empty)."""
        self.fs.invalidate_cache(self.root)  # (fsspec caches listings; another process may have written)
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001 - the store's own errors (credentials, endpoint...)
            raise CheckpointError(f"{self.url}: cannot list the checkpoints ({remote_error(e)})") from None
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
                if e.get("type") != "directory"}

    def manifests(self, listing: dict[str, int]) -> list[str]:
        """Manifest names, newest (highest step) first."""
        return sorted((n for n in listing if _MANIFEST.match(n)), reverse=True)

    def read_manifest(self, name: str, listing: dict[str, int]) -> str:
        """The checkpoint name a manifest names, once checked against the listing."""
        if listing.get(name, 0) > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{self.where(name)}: not a manifest ({listing[name]} bytes)")
        try:
            manifest = json.loads(self.fs.cat_file(self.key(name)))
        except ValueError:
            raise CheckpointError(f"{self.where(name)}: not a manifest (not JSON)") from None
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{self.where(name)}: cannot read ({remote_error(e)})") from None
        step = int(_MANIFEST.match(name).group(1))
        target = manifest.get("checkpoint") if isinstance(manifest, dict) else None
        size = manifest.get("bytes") if isinstance(manifest, dict) else None
        if target != checkpoint_name(step) or not isinstance(size, int) or isinstance(size, bool):
            raise CheckpointError(f"{self.where(name)}: not a manifest of step {step}")
        if listing.get(target) != size:
            got = "is missing" if target not in listing else f"has {listing[target]} bytes, not {size}"
            raise CheckpointError(f"{self.where(target)}: {got} (named by {name})")
        return target

    def probe(self) -> None:
        """Raise unless objects can be written here (before a run trains for nothing)."""
        name = ".streamtrain-probe"
        try:
            self.fs.pipe_file(self.key(name), b"")
            self.fs.rm(self.key(name))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{self.url}: cannot write checkpoints there ({remote_error(e)}); check that "
                                  "the bucket exists and the credentials (AWS_* variables) may write to it") from None

    def get(self, name: str, to: Path) -> None:
        try:
            self.fs.get_file(self.key(name), str(to))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{self.where(name)}: cannot download ({remote_error(e)})") from None

    def put(self, local: Path, name: str) -> None:
        self.fs.put_file(str(local), self.key(name))

    def remove(self, names) -> None:
        names = list(names)
        if names:
            self.fs.rm([self.key(n) for n in names])


class RemoteRunDirectory(RunDirectory):
    """A run directory whose checkpoints, ``metrics.jsonl`` and ``best.npz`` live under a URL."""

    def __init__(self, url: str):
        self.store = _Store(url)
        self.url = self.store.url
        super().__init__(Path(tempfile.mkdtemp(prefix="streamtrain-run-")))
        self.where = self.url

    def __enter__(self) -> "RemoteRunDirectory":
        super().__enter__()
        try:
            self.store.probe()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)  # the last checkpoint uploaded first
            metrics = self.path / self.METRICS
            if exc[0] is None and metrics.is_file():  # the last epoch's line came after its checkpoint
                self._upload(lambda: self.store.put(metrics, self.METRICS), self.METRICS)
        finally:
            shutil.rmtree(self.path, ignore_errors=True)

    def _upload(self, put, name: str) -> None:
        try:
            put()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - the store's errors are many kinds; each is said in a line
            raise CheckpointError(f"{self.store.where(name)}: cannot upload ({remote_error(e)}); "
                                  "the previous checkpoint is kept") from None

    def holds_run(self) -> bool:
        names = self.store.listing()
        return any(_CHECKPOINT.match(n) or _MANIFEST.match(n) for n in names) or self.BEST in names

    def clear(self) -> None:
        super().clear()
        names = self.store.listing()
        try:
            self.store.remove(n for n in names if _CHECKPOINT.match(n) or _MANIFEST.match(n.removesuffix(".invalid"))
                              or n in (self.BEST, self.METRICS))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{self.url}: cannot remove the previous run ({remote_error(e)})") from None

    def checkpoint_bytes(self, path) -> bytes:
        return (self.path / str(path).rsplit("/", 1)[-1]).read_bytes()  # the copy downloaded

    def resume_point(self, schema: Schema, warn=None):
        """``(URL, arrays, meta)`` of the newest checkpoint whose manifest is complete and
        which loads; newer ones that fail are reported and their manifests set aside."""
        warn = warn or (lambda m: None)
        listing = self.store.listing()
        found = self.store.manifests(listing)
        for i, name in enumerate(found):
            try:
                target = self.store.read_manifest(name, listing)
                local = self.path / target
                self.store.get(target, local)
                arrays, meta = load_checkpoint(local, schema, name=self.store.where(target))
            except CheckpointError as e:
                if i + 1 == len(found):
                    raise CheckpointError(f"{e}; no valid checkpoint left in {self.url}") from None
                self._upload(lambda: self.store.fs.mv(self.store.key(name), self.store.key(name + ".invalid")), name)
                warn(f"{e}; its manifest moved aside to {name}.invalid, using an older checkpoint")
                continue
            if self.METRICS in listing:
                self.store.get(self.METRICS, self.path / self.METRICS)
            return self.store.where(target), arrays, meta
        return None

    def save(self, arrays: dict, meta: dict, step: int, keep: int, schema: Schema | None = None,
             fork: bool = False) -> Path:
        # Written by a thread, from a snapshot: a forked child could not safely start the store's
        # client (its threads and lazy imports).
        return super().save(arrays, meta, step, keep, schema, fork=False)

    def _written(self, path: Path, step: int, keep: int) -> None:
        def publish():
            self.store.put(path, path.name)
            crash_point("after_upload")
            metrics = self.path / self.METRICS
            if metrics.is_file():
                self.store.put(metrics, self.METRICS)
            manifest = {"checkpoint": path.name, "bytes": path.stat().st_size, "step": int(step)}
            self.store.fs.pipe_file(self.store.key(f"manifest-{int(step):012d}.json"),
                                    json.dumps(manifest).encode())
            crash_point("after_manifest")
            self._rotate_remote(keep)

        self._upload(publish, path.name)
        rotate(self.path, 1)  # the local copy: the newest alone (for best.npz)

    def _rotate_remote(self, keep: int) -> None:
        """Keep the newest ``keep`` manifests and their checkpoints; a manifest goes before its
        checkpoint, and checkpoints that no manifest names (uploads cut short) go too."""
        listing = self.store.listing()
        manifests = self.store.manifests(listing)
        old = manifests[max(1, keep):]
        self.store.remove(old)
        kept = {checkpoint_name(int(_MANIFEST.match(n).group(1))) for n in manifests[:max(1, keep)]}
        self.store.remove(n for n in listing if _CHECKPOINT.match(n) and n not in kept)
        crash_point("during_rotation")

    def keep_as_best(self, path: Path) -> None:
        super().keep_as_best(path)
        best = self.path / self.BEST
        self.writer.submit(lambda: self._upload(lambda: self.store.put(best, self.BEST), self.BEST))


def resolve_remote(url: str, schema: Schema | None = None, warn=None, keep=None):
    """``(url, arrays, meta)`` of a checkpoint object, or of the newest complete checkpoint of a
    run under ``url`` (the older ones tried in turn where it fails to load)."""
    store = _Store(url)
    name = store.url.rsplit("/", 1)[-1]
    if _CHECKPOINT.match(name) or name.endswith(".npz"):
        parent = _Store(store.url.rsplit("/", 1)[0])
        return store.url, *_load_object(parent, name, schema, keep)
    listing = store.listing()
    found = store.manifests(listing)
    if not found:
        raise CheckpointError(f"{store.url}: no checkpoint here (no manifest-*.json)")
    for i, manifest in enumerate(found):
        try:
            target = store.read_manifest(manifest, listing)
            return store.where(target), *_load_object(store, target, schema, keep)
        except CheckpointError as e:
            if i + 1 == len(found):
                raise CheckpointError(f"{e}; no valid checkpoint left in {store.url}") from None
            (warn or (lambda m: None))(f"{e}; using an older checkpoint")


def _load_object(store: _Store, name: str, schema, keep) -> tuple[dict, dict[str, Any]]:
    try:
        data = io.BytesIO(store.fs.cat_file(store.key(name)))
    except FileNotFoundError:
        raise CheckpointError(f"{store.where(name)}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{store.where(name)}: cannot download ({remote_error(e)})") from None
    data.name = store.where(name)
    return load_checkpoint(data, schema, keep)


def remote_history(url: str) -> list[dict[str, Any]]:
    """The epochs in ``metrics.jsonl`` of the run under ``url`` (or beside a checkpoint object)."""
    store = _Store(url if not url.endswith(".npz") else url.rsplit("/", 1)[0])
    try:
        text = store.fs.cat_file(store.key(RunDirectory.METRICS)).decode(errors="replace")
    except Exception:  # noqa: BLE001 - no history is an empty one, as for a directory
        return []
    return parse_history(text)
