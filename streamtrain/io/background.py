"""Checkpoints written beside training, in a background thread; crash points for the fault tests."""

from __future__ import annotations

import os
import threading

__all__ = ['BackgroundWriter', 'crash_point']


class BackgroundWriter:
    """Runs one write at a time in a thread, so training goes on while a checkpoint reaches the disk
    (serialising, hashing and three fsyncs: milliseconds, a few percent of an interval of training).

    ``submit`` first waits for the write before it, so writes land in order and at most one
    snapshot waits in memory; a write's error is raised by the next ``submit`` or ``wait``.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write, fork: bool = False, then=None) -> None:
        """Run ``write()`` beside training, then ``then()`` (where given) in this process once it
        succeeded. ``fork``: ``write`` in a forked copy of this process instead (its memory shared
        with this one, a page copied only when training changes it), so ``write`` may read the
        live arrays rather than a snapshot of them: a model of gigabytes is not copied; ``then``
        still runs here (an upload, say, whose client a forked child could not safely start).
        Unix only; not in an MPI process (``fork_snapshots`` says where it is safe)."""
        self.wait()
        then = then or (lambda: None)
        if fork:
            try:
                self._thread = _forked(write, self._fail, then)
            except OSError:  # no fork (memory for its page tables, a process limit): written here, now,
                write()      # before training changes the live arrays
                then()
            return

        def run():
            try:
                write()
                then()
            except BaseException as e:  # handed to the training thread, which reports it
                self._error = e

        self._thread = threading.Thread(target=run, name="streamtrain-checkpoint")
        self._thread.start()

    def _fail(self, error: BaseException) -> None:
        self._error = error

    def wait_quietly(self) -> None:
        """Block until the last write is done, dropping its error (another one is on its way up)."""
        try:
            self.wait()
        except Exception:
            pass

    def wait(self) -> None:
        """Block until the last write is on disk; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def fork_snapshots(processes: int) -> bool:
    """Whether checkpoints may be written by a forked process here: Unix, and this process alone
    (``processes``: of its job; MPI libraries do not support fork while their network is open)."""
    return hasattr(os, "fork") and hasattr(os, "waitpid") and processes == 1


def _forked(write, fail, then) -> threading.Thread:
    """Fork; the child runs ``write()`` and exits (0, or 1 with the error's text on a pipe); a
    thread of this process waits for it and hands ``fail`` a ``CheckpointError`` if it failed,
    or runs ``then()`` (its error to ``fail``) if it succeeded. Returns that thread."""
    import ctypes
    import warnings

    from ..errors import CheckpointError

    try:  # resolved before the fork: the child must not load libraries (another thread may hold the loader's lock)
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None
    read_end, write_end = os.pipe()
    parent = os.getpid()
    try:
        with warnings.catch_warnings():
            # (Python 3.12 warns of fork in a process with threads: the child here takes no lock that
            # another thread may hold; it writes files with modules already imported, then _exits.)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # the child: this process's memory as it was at the fork
        code = 0
        try:
            os.close(read_end)
            if prctl is not None:  # end with the trainer (a killed trainer's writer must not outlive it)
                prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
            if os.getppid() != parent:  # (it died before that was set)
                os._exit(1)
            write()
        except BaseException as e:  # noqa: BLE001 - whatever it is, the parent reports it
            os.write(write_end, (str(e) or type(e).__name__).encode(errors="replace")[:4000])
            code = 1
        os._exit(code)
    os.close(write_end)

    def wait() -> None:
        with os.fdopen(read_end, "rb") as fh:
            said = fh.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if status:
            code = os.waitstatus_to_exitcode(status)
            fail(CheckpointError(said or f"the checkpoint writer (process {pid}) ended with status {code}; "
                                 "the previous checkpoint is kept"))
            return
        try:
            then()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which reports it
            fail(e)

    thread = threading.Thread(target=wait, name="streamtrain-checkpoint-fork")
    thread.start()
    return thread


_CRASH_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here, as kill -9 would, when STREAMTRAIN_CRASH_AT is "NAME" or "NAME:K" (the K-th time).

    For the fault-injection tests; costs one environment lookup per checkpoint otherwise.
    """
    want = os.environ.get("STREAMTRAIN_CRASH_AT")
    if not want or want.split(":")[0] != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if _CRASH_COUNTS[name] >= int(want.split(":")[1] if ":" in want else 1):
        os._exit(137)
