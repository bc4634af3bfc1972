"""The suite's own guard (conftest.py): what a test leaves running cannot keep a CI job alive."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def _inner_session(tmp_path: Path, body: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(body)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_inner.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "STREAMTRAIN_TEST_THREAD_GRACE_S": "2"})
    return done, time.monotonic() - t0


def test_a_process_a_test_left_running_is_named_and_killed(tmp_path):
    done, _ = _inner_session(tmp_path, (
        "import subprocess, time\n"
        "def test_leaves_a_server():\n"
        "    pid = subprocess.Popen(['sleep', '417']).pid\n"
        "    open('pid', 'w').write(str(pid))\n"
        # (until the child has exec'd: before, its command line is still pytest's, under load)
        "    while b'sleep' not in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
        "        time.sleep(0.01)\n"), 60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "processes left running by tests (killed now)" in done.stdout and "sleep 417" in done.stdout
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.parametrize("outcome,code", [("pass", 1), ("fail", 1)])
def test_a_thread_a_test_left_blocked_ends_the_process_with_its_stack(tmp_path, outcome, code):
    done, took = _inner_session(tmp_path, (
        "import threading\n"
        "def wait_forever():\n"
        "    threading.Event().wait()\n"
        "def test_leaves_a_thread():\n"
        "    threading.Thread(target=wait_forever).start()\n"
        f"    assert {outcome == 'pass'}\n"), 60)
    assert done.returncode == code, done.stdout + done.stderr
    assert "a thread is still running" in done.stderr and "wait_forever" in done.stderr
    assert took < 30


def test_a_clean_session_ends_at_once(tmp_path):
    done, took = _inner_session(tmp_path, "def test_nothing():\n    pass\n", 60)
    assert done.returncode == 0 and "left running" not in done.stdout + done.stderr and took < 30
