"""The communicator's own guarantees that need no MPI launcher."""

from __future__ import annotations

import os
import sys
import threading
import time

from streamtrain.train.distributed import _wait_forwarded


def _pipe_as_stderr(monkeypatch):
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stderr", os.fdopen(w, "w"))
    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))
    return r


def test_an_abort_waits_until_the_launcher_has_read_the_error_line(monkeypatch):
    # MPICH's launcher drops output an abort overtakes: the job's one error line must be read first.
    r = _pipe_as_stderr(monkeypatch)
    got = []

    def launcher():
        time.sleep(0.3)
        got.append(os.read(r, 1000))

    threading.Thread(target=launcher).start()
    sys.stderr.write("error: rank 0: a setting\n")  # still buffered: _wait_forwarded flushes it
    start = time.monotonic()
    _wait_forwarded(timeout=10)
    assert time.monotonic() - start >= 0.25
    assert got == [b"error: rank 0: a setting\n"]


def test_a_launcher_that_never_reads_delays_the_abort_only_until_the_timeout(monkeypatch, tmp_path):
    _pipe_as_stderr(monkeypatch)
    sys.stderr.write("error: x\n")
    start = time.monotonic()
    _wait_forwarded(timeout=0.3)
    assert 0.25 <= time.monotonic() - start < 3
    # a file (or a terminal) cannot be overtaken: no wait
    monkeypatch.setattr(sys, "stderr", open(tmp_path / "err.txt", "w"))
    sys.stderr.write("error: x\n")
    start = time.monotonic()
    _wait_forwarded(timeout=10)
    assert time.monotonic() - start < 1
    assert (tmp_path / "err.txt").read_text() == "error: x\n"
