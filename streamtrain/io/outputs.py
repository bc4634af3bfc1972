"""Where a command may write: one rule for every file a command writes (predictions, data, plots,
reports) and for a run's checkpoint directory.

An output never replaces an existing file without ``overwrite``, and never, even with it, a file
of a run directory (its checkpoints, ``best.npz``, ``metrics.jsonl``, its lock) or an input of the
same command (the file itself, a directory holding it, or a file inside an input directory).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Iterable

from ..errors import DataError

__all__ = ["check_output", "check_output_dir", "check_apart", "is_run_directory", "RUN_FILES"]

RUN_FILES = ("best.npz", "metrics.jsonl", ".lock")


def _is_run_file(name: str) -> bool:
    from .resolve import _NAME

    return name in RUN_FILES or bool(_NAME.match(name))


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a run (its lock, checkpoints or metrics)."""
    p = Path(path)
    try:
        return p.is_dir() and any(_is_run_file(e.name) for e in os.scandir(p))
    except OSError:
        return False


def _local(paths: Iterable) -> list[Path]:
    """The inputs that are local files or directories, resolved (URLs, arrays and tables have no place)."""
    out = []
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and "://" not in os.fspath(p) and os.path.exists(p):
            out.append(Path(p).resolve())
    return out


def _relation(a: Path, b: Path) -> str | None:
    """How path ``a`` stands to ``b``: "is", "is inside", "holds", or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "holds"
    return None


def check_apart(path: str | os.PathLike, inputs: Iterable, what: str, advice: str) -> None:
    """Refuse ``path`` (a ``what``) if it is, is inside, or holds one of ``inputs`` (URLs compared
    with URLs, by their paths)."""
    if isinstance(path, str) and "://" in path:
        for src in inputs:
            if isinstance(src, str) and "://" in src:
                how = _relation(PurePosixPath(path.rstrip("/")), PurePosixPath(src.rstrip("/")))
                if how is not None:
                    raise DataError(f"{path}: the {what} {how} the input {src} of this command; {advice}")
        return
    real = Path(path).resolve()
    for src in _local(inputs):
        how = _relation(real, src)
        if how is not None:
            raise DataError(f"{path}: the {what} {how} the input {src} of this command; {advice}")


def check_output(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable = ()) -> None:
    """Refuse to write ``path`` where the rule of this module forbids it (before any work is done)."""
    p = Path(path)
    real = p.resolve()
    check_apart(p, inputs, "output", "write it elsewhere")
    if _is_run_file(real.name) and is_run_directory(real.parent):
        raise DataError(f"{path}: is a file of the run in {real.parent}; write the output elsewhere")
    if p.is_dir() and is_run_directory(p):
        raise DataError(f"{path}: is a run's checkpoint directory; write the output elsewhere")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise DataError(f"{path}: already exists; remove it or pass --overwrite")
    check_output_dir(p)


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse an output whose directory does not exist (before any work is done for it)."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise DataError(f"{path}: the directory {parent} does not exist")
