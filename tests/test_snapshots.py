"""Checkpoints of big models are written by a forked copy of the trainer, which sees the arrays as
they were at the fork (a page is copied only when training changes it), instead of from a snapshot
that would double the run's memory: the same files as the copying writer, bitwise."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from streamtrain import CheckpointError, TrainConfig, Trainer
from streamtrain.io.checkpoint import load_checkpoint
from streamtrain.io.resolve import list_checkpoints
from streamtrain.io import rundir
from streamtrain.train import hooks

from .test_checkpoint import _untimed


def _fit(tmp_path, name, threshold, monkeypatch, epochs_extra=False, **config):
    monkeypatch.setattr(hooks, "FORK_SNAPSHOT_BYTES", threshold)
    forks = []
    real = os.fork

    def counted():
        forks.append(1)
        return real()

    monkeypatch.setattr(os, "fork", counted)
    real_save = rundir.save_checkpoint

    def slow_save(*args, **kw):  # a slow disk: training goes on, changing the arrays, while it writes
        time.sleep(0.02)
        return real_save(*args, **kw)

    monkeypatch.setattr(rundir, "save_checkpoint", slow_save)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 6))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    t = Trainer(TrainConfig(hidden=16, epochs=4 if epochs_extra else 3, batch_size=8, optimizer="adam", dtype="float64", checkpoint_every=40,
                            keep=1000, seed=1, **config))
    t.fit((X, y), checkpoint_dir=tmp_path / name, resume=epochs_extra, log=None)
    return len(forks), list_checkpoints(tmp_path / name)


def test_a_forked_writer_writes_the_checkpoints_a_copying_one_writes(tmp_path, monkeypatch):
    forked, a = _fit(tmp_path, "forked", 0, monkeypatch)
    copied, b = _fit(tmp_path, "copied", 1 << 62, monkeypatch)
    assert copied == 0 and forked == len(a) > 10  # (training went on while each was written)
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        (xa, ma), (xb, mb) = load_checkpoint(pa), load_checkpoint(pb)
        assert _untimed(ma) == _untimed(mb)
        for k in xb:
            np.testing.assert_array_equal(xa[k], xb[k], err_msg=f"{pa.name}: {k}")


def test_a_forked_writer_that_fails_is_reported_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    _, before = _fit(tmp_path, "r", 1 << 62, monkeypatch)
    monkeypatch.setenv("STREAMTRAIN_CRASH_AT", "after_data")  # the writer dies, as kill -9 would end it
    with pytest.raises(CheckpointError, match=r"checkpoint writer \(process \d+\) ended with status 137; the "
                                              "previous checkpoint is kept"):
        _fit(tmp_path, "r", 0, monkeypatch, epochs_extra=True)
    assert list_checkpoints(tmp_path / "r") == before
    load_checkpoint(before[0])


def test_a_snapshot_for_a_forked_writer_is_the_live_arrays(tmp_path):
    t = Trainer(TrainConfig(hidden=4, epochs=1))
    t.fit((np.ones((20, 2)), np.arange(20) % 2), log=None)
    live, _ = t.checkpoint_contents(copy=False)
    copied, _ = t.checkpoint_contents()
    for name, p in t.net.params.items():
        assert np.shares_memory(live[f"param.{name}"], p) and not np.shares_memory(copied[f"param.{name}"], p)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_a_forked_writer_ends_with_its_trainer(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import os, sys, time
from pathlib import Path
from streamtrain.io.background import BackgroundWriter
def write():
    print(os.getpid(), flush=True)
    time.sleep(20)
    Path({str(tmp_path / "late")!r}).write_text("written after the trainer died")
BackgroundWriter().submit(write, fork=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    writer = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(writer) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(writer), "the writer outlived its trainer"
    assert not (tmp_path / "late").exists()


# -- a model loaded to predict: its optimiser's state checked, not kept ------------------------------

def _flip_last_byte(path, member: str) -> None:
    """Change the last data byte of an (uncompressed) NPZ member in place."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size - 1
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_model_loaded_to_predict_reads_its_optimizer_state_through_the_checksum_only(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((400, 5))
    y = (X[:, 0] > 0).astype(int)
    Trainer(TrainConfig(hidden=6, epochs=2, optimizer="adam")).fit((X, y), checkpoint_dir=tmp_path / "r", log=None)
    path = list_checkpoints(tmp_path / "r")[0]
    full, slim = Trainer.load(path), Trainer.load(path, optimizer_state=False)
    np.testing.assert_array_equal(full.predict_proba(X), slim.predict_proba(X))
    assert full.optimizer.state_dict() and not slim.optimizer.state_dict()
    arrays, _ = load_checkpoint(path, keep=lambda name: not name.startswith("optim."))
    assert arrays and not any(k.startswith("optim.") for k in arrays)
    _flip_last_byte(path, "optim.m.W1.npy")  # an array it does not keep is still checked
    with pytest.raises(CheckpointError, match="checksum mismatch|Bad CRC-32 for file 'optim.m.W1.npy'"):
        Trainer.load(path, optimizer_state=False)


def test_where_fork_fails_the_checkpoint_is_written_before_training_goes_on(tmp_path, monkeypatch):
    import errno

    def no_fork():
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(hooks, "FORK_SNAPSHOT_BYTES", 0)
    monkeypatch.setattr(os, "fork", no_fork)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 4))
    t = Trainer(TrainConfig(hidden=4, epochs=2, checkpoint_every=5, keep=100, seed=1))
    t.fit((X, (X[:, 0] > 0).astype(int)), checkpoint_dir=tmp_path / "r", log=None)
    saved = list_checkpoints(tmp_path / "r")
    assert len(saved) > 5
    for p in saved:
        load_checkpoint(p)
