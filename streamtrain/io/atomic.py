"""Atomic file output: write beside the target, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = ["atomic_path", "fsync_dir", "temp_name"]


def temp_name(final: Path) -> Path:
    """A hidden temporary name in the same directory (so the rename is atomic)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so a rename in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(Path(root))
    else:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = True, before_rename=None):
    """Yield a temporary path to write; on success it replaces ``final`` atomically.

    Works for files and directories (a Zarr store). On error the temporary
    output is removed and ``final`` is left as it was.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists (pass overwrite to replace it)")
    tmp = temp_name(final)
    _remove(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        if before_rename is not None:
            before_rename()
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent.resolve())
    except BaseException:
        _remove(tmp)
        raise
