"""Fault injection: a trainer killed at any moment, or at each step of a checkpoint save, resumes to
exactly the parameters of an uninterrupted run; temporary files are never taken for checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamtrain import CheckpointError, TrainConfig, Trainer, make_data
from streamtrain.io.checkpoint import save_checkpoint
from streamtrain.io.lock import DirectoryLock
from streamtrain.io.resolve import latest_checkpoint, list_checkpoints

BIN = Path(sys.executable).with_name("streamtrain")


@pytest.fixture(scope="module", params=["numeric", "categorical"])
def data(request, tmp_path_factory):
    """All-numeric rows, or a table of strings, categoricals, timestamps and missing values."""
    path = tmp_path_factory.mktemp("faults") / "d.parquet"
    if request.param == "numeric":
        make_data(path, rows=20000, features=8, chunk_rows=2000, seed=5)
    else:
        from .test_tabular import flights

        flights(20000, seed=5).rename(columns={"status": "label"}).to_parquet(path, row_group_size=2000)
    return path


def _train(data, ckpt, env=None, wait=True):
    args = [str(BIN), "train", str(data), "--hidden", "8", "--batch-size", "16", "--epochs", "3",
            "--shuffle", "window", "--window-mb", "0.2", "--val-fraction", "0.1", "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", "200", "--keep", "2", "--resume", "--quiet"]
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if wait:
        proc.communicate(timeout=300)
    return proc


def _digest(ckpt):
    out = subprocess.run([str(BIN), "inspect", str(ckpt), "--json"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    return info["params_sha256"], info["global_step"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ref")
    assert _train(data, ckpt).returncode == 0
    return _digest(ckpt)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_data:2", "after_data:2", "after_rename:2", "during_rotation:1"])
def test_crash_at_each_step_of_a_save(data, tmp_path, reference, point):
    crashed = _train(data, tmp_path, env={"STREAMTRAIN_CRASH_AT": point})
    assert crashed.returncode == 137
    assert list_checkpoints(tmp_path), "a checkpoint from before the crash must survive"
    assert _train(data, tmp_path).returncode == 0
    assert _digest(tmp_path) == reference
    assert not list(tmp_path.glob(".*tmp*")), "leftover temporary files are cleaned on the next run"


@pytest.mark.slow
def test_killed_at_random_moments_many_times(data, tmp_path, reference):
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = _train(data, tmp_path, wait=False)
        time.sleep(float(rng.uniform(1.2, 2.5)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        found = latest_checkpoint(tmp_path, warn=lambda m: None)
        assert found is None or found[0].name.startswith("ckpt-")
    assert _train(data, tmp_path).returncode == 0
    assert _digest(tmp_path) == reference


def _running_with(text: str) -> list[int]:
    """Processes whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("data", ["numeric"], indirect=True)  # (the writer does not care what the table holds)
def test_killed_while_a_forked_process_writes_its_checkpoints(data, tmp_path, reference):
    # Every checkpoint written by a forked copy of the trainer (as a model of gigabytes is): the
    # trainer SIGKILLed at random moments takes its writer with it, and the run resumes exactly.
    rng = np.random.default_rng(1)
    fork = {"STREAMTRAIN_FORK_SNAPSHOT_MB": "0"}
    for _ in range(3):
        proc = _train(data, tmp_path, env=fork, wait=False)
        time.sleep(float(rng.uniform(1.2, 2.5)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        deadline = time.monotonic() + 5
        while _running_with(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running_with(str(tmp_path)), "a forked writer outlived its trainer"
        found = latest_checkpoint(tmp_path, warn=lambda m: None)
        assert found is None or found[0].name.startswith("ckpt-")
    assert _train(data, tmp_path, env=fork).returncode == 0
    assert _digest(tmp_path) == reference


def test_a_second_trainer_on_the_same_directory_is_refused(tmp_path):
    with DirectoryLock(tmp_path):
        with pytest.raises(CheckpointError, match=f"another trainer \\(pid {os.getpid()}\\)"):
            Trainer(TrainConfig(hidden=2, epochs=1)).fit((np.ones((20, 2)), np.arange(20) % 2), checkpoint_dir=tmp_path,
                                                          log=None)


def test_a_lock_taken_away_while_it_was_taken_is_taken_again(tmp_path, monkeypatch):
    # A failed run takes away the directory it made (nothing but its lock there): a run that had
    # opened that lock file then locked a file no longer the directory's (its write probe failed
    # in a directory gone, or a third run's fresh lock let two runs write). It takes it again.
    import fcntl

    where, real, calls = tmp_path / "run", fcntl.flock, []

    def flock(fd, op):
        real(fd, op)
        calls.append(fd)
        if len(calls) == 1:  # the other run's removal, between this run's open and its lock
            os.unlink(where / ".lock")
            os.rmdir(where)

    monkeypatch.setattr(fcntl, "flock", flock)
    with DirectoryLock(where) as lock:
        assert len(calls) == 2 and os.path.samestat(os.stat(where / ".lock"), os.fstat(lock._fd))
        assert (where / ".lock").read_text() == str(os.getpid())
    # and a run that fails removes only the directory it made, only where its lock is all there is
    with pytest.raises(RuntimeError):
        with DirectoryLock(tmp_path / "made"):
            raise RuntimeError("failed")
    assert not (tmp_path / "made").exists()
    with pytest.raises(RuntimeError):
        with DirectoryLock(tmp_path / "made"):
            (tmp_path / "made" / "metrics.jsonl").write_text("")
            raise RuntimeError("failed")
    assert (tmp_path / "made" / "metrics.jsonl").exists()


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    X, y = np.random.default_rng(0).standard_normal((200, 3)), np.arange(200) % 2
    t = Trainer(TrainConfig(hidden=3, epochs=1))
    t.fit((X, y), checkpoint_dir=tmp_path, log=None)
    before = list_checkpoints(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("streamtrain.io.npz._pwrite_all", full)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint \\(No space left on device\\)"):
        Trainer(TrainConfig(hidden=3, epochs=2)).fit((X, y), checkpoint_dir=tmp_path, resume=True, log=None)
    assert list_checkpoints(tmp_path) == before
    assert latest_checkpoint(tmp_path) is not None
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    save_checkpoint(tmp_path / "ok.npz", {"a": np.ones(2)}, {})  # the directory still works
