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

    def submit(self, write) -> None:
        self.wait()

        def run():
            try:
                write()
            except BaseException as e:  # handed to the training thread, which reports it
                self._error = e

        self._thread = threading.Thread(target=run, name="streamtrain-checkpoint")
        self._thread.start()

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
