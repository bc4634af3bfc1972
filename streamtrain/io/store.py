"""A run's prefix in object storage (``s3://bucket/run``): its objects, manifests and checkpoints,
read and written through fsspec; the newest complete checkpoint under a URL, for any command.

A manifest (``manifest-<step>.json``) names a checkpoint object (``ckpt-<step>.npz``) and its
size; ``io.remote_run`` writes a run there, manifests last.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DataError
from ..readers.remote import is_url, open_filesystem, remote_error
from .checkpoint import Schema, checkpoint_name, load_checkpoint
from .history import METRICS, parse_history

__all__ = ["Store", "StoreFailure", "is_url", "is_remote_checkpoint", "resolve_remote", "remote_history", "MANIFEST", "CHECKPOINT"]

MANIFEST = re.compile(r"^manifest-(\d{12})\.json$")
CHECKPOINT = re.compile(r"^ckpt-(\d{12})\.npz$")
MAXMANIFEST_BYTES = 64 << 10  # a manifest is a few lines; anything larger is not one of ours


class StoreFailure(CheckpointError):
    """The store failed (a timeout, credentials, no room for a download): not the checkpoint's fault."""


class Store:
    """A run's prefix in object storage: its manifests, checkpoints and other objects."""

    def __init__(self, url: str):
        url = str(url)
        self.url = url if url.rstrip("/").endswith(":") else url.rstrip("/")  # (s3:// stays a URL)
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
            raise StoreFailure(f"{self.url}: cannot list the checkpoints ({remote_error(e)})") from None
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
                if e.get("type") != "directory"}

    def manifests(self, listing: dict[str, int]) -> list[str]:
        """Manifest names, newest (highest step) first."""
        return sorted((n for n in listing if MANIFEST.match(n)), reverse=True)

    def read_manifest(self, name: str, listing: dict[str, int]) -> str:
        """The checkpoint name a manifest names, once checked against the listing."""
        if listing.get(name, 0) > MAXMANIFEST_BYTES:
            raise CheckpointError(f"{self.where(name)}: not a manifest ({listing[name]} bytes)")
        try:
            manifest = json.loads(self.read(name))
        except ValueError:
            raise CheckpointError(f"{self.where(name)}: not a manifest (not JSON)") from None
        step = int(MANIFEST.match(name).group(1))
        target = manifest.get("checkpoint") if isinstance(manifest, dict) else None
        size = manifest.get("bytes") if isinstance(manifest, dict) else None
        if target != checkpoint_name(step) or not isinstance(size, int) or isinstance(size, bool):
            raise CheckpointError(f"{self.where(name)}: not a manifest of step {step}")
        if target not in listing:
            raise CheckpointError(f"{self.where(target)}: is missing (named by {name})")
        # Another size is no reason to pass it over: an object is replaced whole (a PUT is atomic),
        # and a checkpoint saved again at the same step, cut short before its new manifest, is the
        # only one left with --keep 1 (its checksums decide, as they do for any other).
        return target

    def newest(self, listing: dict[str, int], load, passed_over):
        """``(URL, *load(name))`` for the newest checkpoint whose manifest is complete and which
        ``load(name)`` loads, or None where there is no manifest. A newer one that fails is handed
        to ``passed_over(manifest, error)`` and the one before tried; none valid is an error. The
        store's own failures (``StoreFailure``: a timeout, no room to download) end the search."""
        found = self.manifests(listing)
        for i, manifest in enumerate(found):
            try:
                target = self.read_manifest(manifest, listing)
                return (self.where(target), *load(target))
            except StoreFailure:
                raise
            except CheckpointError as e:
                if i + 1 == len(found):
                    raise CheckpointError(f"{e}; no valid checkpoint left in {self.url}") from None
                passed_over(manifest, e)
        return None

    def read(self, name: str) -> bytes:
        """The bytes of object ``name`` (one that is not there: a ``CheckpointError``)."""
        try:
            return self.fs.cat_file(self.key(name))
        except FileNotFoundError:
            raise CheckpointError(f"{self.where(name)}: no such object") from None
        except Exception as e:  # noqa: BLE001 - the store's own errors (credentials, endpoint...)
            raise StoreFailure(f"{self.where(name)}: cannot read ({remote_error(e)})") from None

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
        """Download ``name`` to ``to`` (through a temporary name: a download cut short is never taken for it)."""
        part = to.with_name(to.name + ".part")
        try:
            self.fs.get_file(self.key(name), str(part))
            part.replace(to)
        except Exception as e:  # noqa: BLE001
            part.unlink(missing_ok=True)
            raise StoreFailure(f"{self.where(name)}: cannot download ({remote_error(e)})") from None

    def put(self, local: Path, name: str) -> None:
        self.fs.put_file(str(local), self.key(name))

    def remove(self, names) -> None:
        names = list(names)
        if names:
            self.fs.rm([self.key(n) for n in names])


def resolve_remote(url: str, schema: Schema | None = None, warn=None, keep=None):
    """``(url, arrays, meta)`` of a checkpoint object, or of the newest complete checkpoint of a
    run under ``url`` (the older ones tried in turn where it fails to load)."""
    store = Store(url)
    name = store.url.rsplit("/", 1)[-1]
    if CHECKPOINT.match(name) or name.endswith(".npz"):
        parent = Store(store.url.rsplit("/", 1)[0])
        return store.url, *_load_object(parent, name, schema, keep)
    found = store.newest(store.listing(), lambda target: _load_object(store, target, schema, keep),
                         lambda manifest, e: (warn or (lambda m: None))(f"{e}; using an older checkpoint"))
    if found is None:
        raise CheckpointError(f"{store.url}: no checkpoint here (no manifest-*.json)")
    return found


def is_remote_checkpoint(url: str) -> bool:
    """Whether ``url`` names a checkpoint object, or a run's prefix (it holds manifests)."""
    if url.rstrip("/").endswith(".npz"):
        return True
    try:
        store = Store(url)
        return bool(store.manifests(store.listing()))
    except CheckpointError:  # (not reachable as a run: read as data, whose reader says why)
        return False


def _load_object(store: Store, name: str, schema, keep) -> tuple[dict, dict[str, Any]]:
    data = io.BytesIO(store.read(name))
    data.name = store.where(name)
    return load_checkpoint(data, schema, keep)


def remote_history(url: str) -> list[dict[str, Any]]:
    """The epochs in ``metrics.jsonl`` of the run under ``url`` (or beside a checkpoint object)."""
    store = Store(url if not url.endswith(".npz") else url.rsplit("/", 1)[0])
    try:
        text = store.fs.cat_file(store.key(METRICS)).decode(errors="replace")
    except Exception:  # noqa: BLE001 - no history is an empty one, as for a directory
        return []
    return parse_history(text)
