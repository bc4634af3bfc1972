"""SIGINT and SIGTERM at any moment of a run, start-up included, and decoding workers whose parent
dies: one line, exit 130 / 143, no traceback, no process left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamtrain import make_data

BIN = Path(sys.executable).with_name("streamtrain")


def _workers_of(marker: str) -> list[int]:
    """Decoding processes whose command line names ``marker`` (the test's data path)."""
    out = subprocess.run(["pgrep", "-f", f"streamtrain.data._worker.*{marker}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if _running(int(p))]


def _running(pid: int) -> bool:
    """True while ``pid`` runs (an exited process waiting to be reaped, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _catches(pid: int, *signals: int) -> bool:
    """True once ``pid`` has handlers of its own for ``signals`` (its ``SigCgt`` mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return all(caught >> (sig - 1) & 1 for sig in signals)


def _wait_catching(proc: subprocess.Popen, seconds: float = 30.0) -> None:
    """Wait until the command's first Python lines have installed its handlers. Before them no
    program can answer a signal its own way: on a loaded machine (the suite's parallel workers)
    the interpreter alone took more than 0.1 s to get there, and SIGTERM then ended it by the
    default action; a SIGINT ignored by the parent (pytest-xdist's workers) was ignored too."""
    deadline = time.monotonic() + seconds
    while not _catches(proc.pid, signal.SIGINT, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, "the command never installed its handlers"
        time.sleep(0.002)


def _wait_gone(marker: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _workers_of(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture(scope="module")
def zarr_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("signals") / "z.zarr"
    make_data(path, rows=200_000, features=32, chunk_rows=8192, seed=1)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("delay", [0.02, 0.3, 0.6, 1.0, 1.6])
def test_a_signal_at_any_moment_of_start_up_or_training_ends_in_one_line(zarr_data, tmp_path, sig, code, delay):
    # From the imports through opening the data, starting the workers, the statistics pass and
    # into training: the same contract, whatever the moment (counted from the handlers' installation).
    proc = subprocess.Popen([str(BIN), "train", str(zarr_data), "--decoder", "process", "--epochs", "3",
                             "--checkpoint-dir", str(tmp_path / "ck")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_catching(proc)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Error" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signal.Signals(sig).name}"), err
    # the one line is the only line other than the per-epoch log (which starts with "epoch" or "task")
    assert all(line.startswith(("task:", "epoch ", "interrupted by")) for line in err.strip().splitlines()), err
    assert not _wait_gone(str(zarr_data), 2.0), "decoding workers outlived the command"


@pytest.mark.slow
def test_workers_exit_quietly_and_promptly_when_their_parent_is_killed_mid_window(zarr_data, tmp_path):
    # The parent asks for a large window and is killed before the workers answer: they must not
    # finish it and then print a BrokenPipeError, nor linger.
    code = textwrap.dedent(f"""
        import json, sys, threading, numpy as np
        from streamtrain import open_dataset
        from streamtrain.data.decoder import DecoderProcess
        ds = open_dataset({str(zarr_data)!r})
        d = DecoderProcess(ds, ds.n_rows, workers=2)
        d.wait_ready()
        print(json.dumps([w.proc.pid for w in d.workers]), flush=True)
        d.decode(0, np.arange(ds.n_chunks), ds.n_rows)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    pids = json.loads(parent.stdout.readline())
    time.sleep(0.05)  # the window is being decoded now
    parent.kill()
    parent.wait()
    started = time.monotonic()
    for pid in pids:
        while time.monotonic() - started < 3:
            if not _running(pid):
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"worker {pid} outlived its parent by 3 s")
    err = parent.stderr.read()  # the workers shared this stderr: EOF once they are all gone
    assert err == "", err
