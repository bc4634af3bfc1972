"""The lock that makes a checkpoint directory one run's (or one service's)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, os_reason
from .resolve import remove_leftovers

__all__ = ['DirectoryLock']


class DirectoryLock:
    """An exclusive lock on a checkpoint directory (flock on DIR/.lock), so two trainers never
    write into the same directory. The kernel drops it when the process dies, however it dies.

    The directory itself stays open while the lock is held: if it is deleted or replaced
    meanwhile (which would let a second trainer take a fresh lock there), ``check`` says so.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._fd: int | None = None
        self._dir_fd: int | None = None
        self._made = False  # whether this lock made the directory (a run that fails takes it away again)

    def __enter__(self) -> "DirectoryLock":
        for _ in range(3):
            fd = self._take()
            if fd is not None:
                break
        else:
            raise CheckpointError(f"{self.directory}: its lock kept being taken away while this run took it; "
                                  "use another --checkpoint-dir")
        try:
            # The lock file may be writable where the directory is not (its mode, the mount): find
            # out now, not when the first checkpoint is due after an epoch of training.
            probe = self.directory / f".write-probe-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:
            os.close(fd)
            self._close_dir()
            raise CheckpointError(f"{self.directory}: cannot write in the checkpoint directory "
                                  f"({os_reason(e)})") from None
        self._fd = fd
        remove_leftovers(self.directory)
        return self

    def _take(self) -> int | None:
        """The lock file's descriptor, locked; None where the file locked was then no longer the
        directory's (a failed run that made the directory took it away meanwhile: take it again)."""
        import fcntl

        there = False  # (the directory made or found)
        try:
            self._made = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            there = True
            self._dir_fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._close_dir()
            if there and isinstance(e, FileNotFoundError):  # (taken away between the mkdir and the open: again)
                return None
            raise CheckpointError(f"{self.directory}: cannot use it as the checkpoint directory "
                                  f"({os_reason(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            self._close_dir()
            raise CheckpointError(f"{self.directory}: another trainer (pid {holder}) is writing checkpoints here; "
                                  "stop it or use another --checkpoint-dir") from None
        try:
            same = (os.path.samestat(os.stat(self.directory / ".lock"), os.fstat(fd))
                    and os.path.samestat(os.stat(self.directory), os.fstat(self._dir_fd)))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            self._close_dir()
            return None
        return fd

    def check(self) -> None:
        """Raise ``CheckpointError`` if the directory or its lock file is no longer the one locked."""
        if self._fd is None:
            return
        try:
            same_dir = os.path.samestat(os.stat(self.directory), os.fstat(self._dir_fd))
            same_lock = os.path.samestat(os.stat(self.directory / ".lock"), os.fstat(self._fd))
        except OSError:
            same_dir = same_lock = False
        if not (same_dir and same_lock):
            raise CheckpointError(f"{self.directory}: the checkpoint directory was deleted or replaced while "
                                  "this run was using it; stopping without writing there")

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if exc and exc[0] is not None and self._made:
                self._remove_if_bare()
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        self._close_dir()

    def _remove_if_bare(self) -> None:
        """The directory this lock made, taken away where a failed run left nothing but its lock."""
        try:
            if os.listdir(self.directory) == [".lock"] and os.path.samestat(os.stat(self.directory),
                                                                            os.fstat(self._dir_fd)):
                os.unlink(self.directory / ".lock")
                os.rmdir(self.directory)
        except OSError:
            pass  # (something else appeared there, or it is not ours to remove: it stays)
