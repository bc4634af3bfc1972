"""The checkpoints' NPZ writer: the zip ``np.savez`` makes, its large arrays aligned and written
around the page cache."""

from __future__ import annotations

import errno
import fcntl
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from streamtrain.io import npz
from streamtrain.io.npz import ALIGN, write_npz


def _arrays():
    rng = np.random.default_rng(0)
    return {"big": rng.standard_normal((70_001, 64)).astype(np.float32),  # (not a whole number of blocks)
            "f64": rng.standard_normal(300_000), "fortran": np.asfortranarray(rng.random((300, 200))),
            "i8": np.arange(-5, 5, dtype=np.int8), "u16": np.arange(9, dtype=np.uint16), "scalar": np.array(7),
            "empty": np.zeros((0, 3), np.float32), "bytes": np.frombuffer(b'{"a": 1}', np.uint8)}


def _members(path):
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # (every member's CRC)
        return {info.filename: (info, zf.read(info)) for info in zf.infolist()}


@pytest.mark.parametrize("where", ["disk", "shm"])
def test_the_file_is_the_one_np_savez_writes_with_large_arrays_aligned(tmp_path, monkeypatch, where):
    monkeypatch.setattr(npz, "DIRECT_BYTES", 1 << 20)  # (the large arrays: "big" and "f64")
    if where == "shm":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm here")
        tmp_path = Path("/dev/shm")  # (tmpfs: O_DIRECT taken since Linux 6.6, refused before)
    arrays, ours, theirs = _arrays(), tmp_path / f"ours-{os.getpid()}.npz", tmp_path / f"theirs-{os.getpid()}.npz"
    try:
        write_npz(ours, arrays, last=lambda: {"__sum__": np.frombuffer(b"abc", np.uint8)})
        # (in C order: a checkpoint's loader refuses Fortran order)
        np.savez(theirs, **{k: np.asarray(a, order="C") for k, a in arrays.items()},
                 __sum__=np.frombuffer(b"abc", np.uint8))
        got, want = _members(ours), _members(theirs)
        assert list(got) == list(want)  # same names, same order
        for name, (info, data) in got.items():
            assert data == want[name][1], name  # the same .npy bytes
            if info.file_size >= npz.DIRECT_BYTES:  # the array's bytes start on a block boundary
                with open(ours, "rb") as fh:
                    fh.seek(info.header_offset + 26)
                    names, extra = (int(n) for n in np.frombuffer(fh.read(4), "<u2"))
                header = len(data) - arrays[name[:-4]].nbytes
                assert (info.header_offset + 30 + names + extra + header) % ALIGN == 0, name
        loaded = np.load(ours)
        for name, a in arrays.items():
            assert loaded[name].dtype == a.dtype and loaded[name].shape == a.shape
            np.testing.assert_array_equal(loaded[name], a)
    finally:
        for p in (ours, theirs):
            p.unlink(missing_ok=True)


@pytest.mark.parametrize("direct", ["refused", "short"])
def test_a_direct_write_refused_or_short_goes_on_with_ordinary_ones(tmp_path, monkeypatch, direct):
    # (mocked: every file system this machine has accepts O_DIRECT. Some network and FUSE ones refuse
    # it when written, with EINVAL; near a full disk with small blocks a write may complete less than
    # a block: no spinning on it)
    monkeypatch.setattr(npz, "DIRECT_BYTES", 1 << 20)
    pwrite, tried = os.pwrite, []

    def direct_write(fd, data, at):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            tried.append(at)
            if direct == "refused":
                raise OSError(errno.EINVAL, "Invalid argument")
            return pwrite(fd, memoryview(data)[:100], at)
        return pwrite(fd, data, at)

    monkeypatch.setattr(os, "pwrite", direct_write)
    arrays = _arrays()
    write_npz(tmp_path / "c.npz", arrays)
    monkeypatch.undo()
    assert len(tried) == 1  # (one direct write tried; ordinary ones from then on)
    loaded = np.load(tmp_path / "c.npz")
    for name, a in arrays.items():
        np.testing.assert_array_equal(loaded[name], a)
    assert _members(tmp_path / "c.npz")


@pytest.mark.parametrize("failing", ["write", "buffer"])
def test_a_failed_write_raises_and_leaves_no_descriptor_open(tmp_path, monkeypatch, failing):
    monkeypatch.setattr(npz, "DIRECT_BYTES", 1 << 20)
    before = len(os.listdir("/proc/self/fd"))
    pwrite = os.pwrite

    def full(fd, data, at):
        if at > 1 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return pwrite(fd, data, at)

    def no_memory(*args):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    if failing == "write":
        monkeypatch.setattr(os, "pwrite", full)
    else:  # (the direct writes' buffer)
        monkeypatch.setattr(npz.mmap, "mmap", no_memory)
    with pytest.raises(OSError, match="No space" if failing == "write" else "Cannot allocate"):
        write_npz(tmp_path / "c.npz", _arrays())
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before


def test_names_beyond_ascii_and_large_members_round_trip_through_a_checkpoint(tmp_path, monkeypatch):
    from streamtrain.io.checkpoint import load_checkpoint, save_checkpoint

    monkeypatch.setattr(npz, "DIRECT_BYTES", 1 << 20)
    arrays = {"poids_é": np.arange(4.0), "table": np.random.default_rng(0).random((5_000, 64)).astype(np.float32)}
    write_npz(tmp_path / "a.npz", arrays)
    assert sorted(np.load(tmp_path / "a.npz").files) == sorted(arrays)  # (UTF-8 names, flagged so)
    save_checkpoint(tmp_path / "c.npz", arrays, {"x": 1})
    got, meta = load_checkpoint(tmp_path / "c.npz")
    assert meta["x"] == 1
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a)


def test_the_file_mode_is_the_one_open_gives(tmp_path):
    old = os.umask(0o002)
    try:
        write_npz(tmp_path / "a.npz", {"a": np.ones(3)})
        with open(tmp_path / "b", "wb"):
            pass
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.npz").st_mode & 0o777 == os.stat(tmp_path / "b").st_mode & 0o777 == 0o664


def test_a_failed_checkpoint_write_stops_its_checksum(tmp_path, monkeypatch):
    import threading

    from streamtrain.io import checkpoint

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def slow_digest(meta_bytes, arrays, stop=None):  # (a checksum of gigabytes: running when the write fails)
        (stop or threading.Event()).wait(5)
        return None

    monkeypatch.setattr(npz, "_pwrite_all", full)
    monkeypatch.setattr(checkpoint, "_digest", slow_digest)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save_checkpoint(tmp_path / "c.npz", {"w": np.ones(10, np.float32)}, {})
    assert not [t for t in threading.enumerate() if t.name == "streamtrain-checksum"]
    assert not list(tmp_path.iterdir())  # (nor a temporary file left)
