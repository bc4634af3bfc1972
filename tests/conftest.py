from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
FORMATS = (".h5", ".zarr", ".parquet")

# What a test leaves running must not outlive the session: a server or service still holding the
# session's output, or a thread the interpreter waits for at exit, kept a CI job running until
# its time ran out. Every process started in the session carries this mark in its environment;
# at the end those still running are named and killed, and a thread still running a minute after
# the session ends is shown with its stack and the process ends.
_MARK = "STREAMTRAIN_TEST_SESSION"
_LEFT_THREAD_GRACE_S = float(os.environ.get("STREAMTRAIN_TEST_THREAD_GRACE_S", "60"))


def _is_worker(config) -> bool:
    """True in a pytest-xdist worker: the controller marks, watches and cleans up for them all."""
    return hasattr(config, "workerinput")


def pytest_configure(config):
    if _is_worker(config):
        return  # keeps the controller's mark, which its environment inherited
    os.environ[_MARK] = f"{os.getpid()}-{time.time_ns()}"
    if Path("/proc/meminfo").exists():
        threading.Thread(target=_watch_memory, name="memory-low-water", daemon=True).start()


# The machine's lowest available memory in the session and the test running then: a process
# killed by the kernel for memory leaves no message of its own. (The MPI ranks SIGKILLed in CI
# with empty stderrs were not this: hydra ended them; see test_mpi's exit test.)
_LOW_WATER = {"available": None, "total": None, "test": None}
_CURRENT_TEST = [None]


def _meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) // 1024  # kB -> MiB
    return fields


def _watch_memory() -> None:
    while True:
        info = _meminfo()
        available = info.get("MemAvailable", info.get("MemFree", 0))
        if _LOW_WATER["available"] is None or available < _LOW_WATER["available"]:
            _LOW_WATER.update(available=available, total=info.get("MemTotal"), test=_CURRENT_TEST[0])
        time.sleep(0.5)


def pytest_runtest_logstart(nodeid, location):
    _CURRENT_TEST[0] = nodeid


def _marked_processes() -> list[tuple[int, str]]:
    token = f"{_MARK}={os.environ.get(_MARK)}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                if "from multiprocessing." not in cmd:  # pytest's own resource tracker: it ends with pytest
                    found.append((int(entry.name), cmd))
        except OSError:  # gone, or another user's
            continue
    return found


def _left_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def _worker_threads(config) -> None:
    """In a pytest-xdist worker: threads still running ``_LEFT_THREAD_GRACE_S`` after its tests
    end, with their stacks, go to the controller, which fails the run (the worker itself would be
    ended by xdist before a watchdog of its own could say anything)."""
    deadline = time.monotonic() + _LEFT_THREAD_GRACE_S
    while _left_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    frames = sys._current_frames()
    config.workeroutput["streamtrain_left_threads"] = [
        f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident])) for t in _left_threads() if t.ident in frames]


_LEFT_THREADS: list[str] = []  # the controller's: threads its workers left running


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # (pytest-xdist's: a worker has ended)
    _LEFT_THREADS.extend(getattr(node, "workeroutput", {}).get("streamtrain_left_threads", []))


@pytest.hookimpl(trylast=True)  # after pytest-xdist has ended its workers (they carry the mark too)
def pytest_sessionfinish(session, exitstatus):
    if _is_worker(session.config):
        _worker_threads(session.config)
        return  # other workers may still run theirs: the controller looks once they have all ended
    if _LEFT_THREADS and not session.exitstatus:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    left = _marked_processes() if os.environ.get(_MARK) and Path("/proc/self/environ").exists() else []
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    session.config._streamtrain_left = left
    session.config._streamtrain_status = int(exitstatus)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _LOW_WATER["available"] is not None:
        terminalreporter.line(f"lowest available memory: {_LOW_WATER['available']} MiB of {_LOW_WATER['total']} MiB, "
                              f"during {_LOW_WATER['test']}")
    if _LEFT_THREADS:
        terminalreporter.section("threads left running by tests (the run fails)", sep="=", red=True)
        for stack in _LEFT_THREADS:
            terminalreporter.line(stack)
    left = getattr(config, "_streamtrain_left", [])
    if left:
        terminalreporter.section("processes left running by tests (killed now)", sep="=", red=True)
        for pid, cmd in left:
            terminalreporter.line(f"{pid}: {cmd[:300]}")


def pytest_unconfigure(config):
    status = getattr(config, "_streamtrain_status", 1)

    def watchdog() -> None:
        time.sleep(_LEFT_THREAD_GRACE_S)
        print(f"\nthe tests ended {_LEFT_THREAD_GRACE_S:.0f} s ago but a thread is still running; "
              "its stack, and every thread's:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(status or 1)

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        threading.Thread(target=watchdog, name="left-thread-watchdog", daemon=True).start()


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    return b.data.astype(np.float32), b.target.astype(np.int32)


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    b = load_digits()
    return b.data.astype(np.float32), b.target.astype(np.int32)
