"""Every bad input ends in one line on stderr, exit code 2, no traceback, and no hang; outputs and
checkpoint directories that cannot be used are named; data never written or changed in place is
refused."""

from __future__ import annotations

import os
import signal
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from streamtrain import DataError, TrainConfig, Trainer, make_data, open_dataset
from streamtrain.io.resolve import list_checkpoints

from .conftest import DATA

BIN = Path(sys.executable).with_name("streamtrain")
H5 = DATA / "breast_cancer.h5"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for part, cols in (("a", {"x1": np.arange(10.0)}), ("b", {"x2": np.arange(10.0), "z": np.arange(10.0)})):
        (d / "hive" / f"part={part}").mkdir(parents=True)
        pd.DataFrame({**cols, "y": np.arange(10) % 2}).to_parquet(d / "hive" / f"part={part}" / "f.parquet")
    (d / "wrong_type.toml").write_text('hidden = "many"\n')
    (d / "latin1.toml").write_bytes(b"# caf\xe9\nhidden = 3\n")
    (d / "typo.toml").write_text("hiden = 3\n")
    (d / "list.toml").write_text("train = 3\n")
    (d / "int_path.toml").write_text("checkpoint-dir = 7\n")
    (d / "table_value.toml").write_text("[train]\nlr = {a = 1}\n")
    import zarr

    for fmt in (2, 3):
        g = zarr.open_group(d / f"zero{fmt}.zarr", mode="w", zarr_format=fmt)
        g.create_array("X", shape=(100, 3), chunks=(10, 3), dtype="f4")[:] = 1.0
        g.create_array("y", shape=(100,), chunks=(10,), dtype="i4")[:] = 0
        meta = d / f"zero{fmt}.zarr" / "X" / (".zarray" if fmt == 2 else "zarr.json")
        m = json.loads(meta.read_text())
        if fmt == 2:
            m["chunks"] = [0, 3]
        else:
            m["chunk_grid"]["configuration"]["chunk_shape"] = [0, 3]
        meta.write_text(json.dumps(m))
    with h5py.File(d / "unwritten.h5", "w") as f:  # 10^12 rows declared, nothing written
        f.create_dataset("X", shape=(10**12, 8), chunks=(65536, 8), dtype="f4")
        f.create_dataset("y", shape=(10**12,), chunks=(65536,), dtype="i4")
    (d / "ck").mkdir()
    subprocess.run([str(BIN), "train", str(H5), "--epochs", "1", "--hidden", "3", "--checkpoint-dir", str(d / "ck"),
                    "--quiet"], check=True)
    return d


# (arguments, a part of the one line expected); "{d}" is the fixture's directory
CASES = [
    (["train", "{d}/hive"], "the files' columns disagree"),
    (["train", "s3://streamtrain-test-bucket/prefix"], "s3://streamtrain-test-bucket/prefix: cannot list it"),
    (["train", "s3://streamtrain-test-bucket/x.zarr"], "s3://streamtrain-test-bucket/x.zarr"),
    (["inspect", "s3://streamtrain-test-bucket/x.zarr"], "s3://streamtrain-test-bucket/x.zarr"),
    (["train", H5, "--config", "{d}/wrong_type.toml"], "wrong_type.toml: hidden: 'many' is not a valid integer"),
    (["train", H5, "--config", "{d}/latin1.toml"], "latin1.toml: not UTF-8"),
    (["train", H5, "--config", "{d}/typo.toml"], "did you mean 'hidden'"),
    (["train", H5, "--config", "{d}/list.toml"], "[train] must be a table"),
    (["train", H5, "--config", "{d}/int_path.toml"], "int_path.toml: checkpoint-dir: expected a path in quotes, not int 7"),
    (["train", H5, "--config", "{d}/table_value.toml"], "table_value.toml: lr:"),
    (["train", "{d}/zero2.zarr"], "zero2.zarr: array 'X' declares chunks of shape [0, 3]"),
    (["train", "{d}/zero3.zarr"], "zero3.zarr: array 'X' declares chunks of shape [0, 3]"),
    (["train", H5, "--lr", "nan"], "'--lr': nan is not a finite number"),
    (["train", H5, "--lr", "inf"], "'--lr'"),
    (["train", H5, "--l1", "nan"], "'--l1'"),
    (["train", H5, "--l2", "-inf"], "'--l2'"),
    (["train", H5, "--momentum", "nan"], "'--momentum'"),
    (["train", H5, "--window-mb", "nan"], "'--window-mb'"),
    (["train", H5, "--window-mb", "1e12"], "'--window-mb'"),
    (["train", H5, "--window-mb", "1000000"], "more than the memory available"),
    (["train", H5, "--seed", "-5"], "'--seed'"),
    (["train", H5, "--hidden", "1e9"], "'--hidden'"),
    (["train", H5, "--hidden", "1000000000"], "'--hidden'"),
    (["train", H5, "--batch-size", "0"], "'--batch-size'"),
    (["train", H5, "--decoder-workers", "1000"], "'--decoder-workers'"),
    (["train", H5, "--activation", "gelu"], "'--activation'"),
    (["train", H5, "--checkpoint-dir", "/proc/streamtrain-no/ck"], "/proc/streamtrain-no/ck: cannot use it as"),
    (["train", H5, "--checkpoint-dir", "{d}/wrong_type.toml"], "wrong_type.toml"),
    (["train", "{d}/unwritten.h5"], "never written"),
    (["predict", "{d}/ck", H5, "--out", "{d}/no/such/dir/p.csv"], "the directory"),
    (["plot", "{d}/ck", "--out", "{d}/no/such/dir/p.png"], "the directory"),
    (["make-data", "{d}/no/such/dir/x.h5", "--rows", "10", "--features", "3"], "the directory"),
    (["make-data", "{d}/x.h5", "--rows", "10", "--features", "3", "--compression", "bogus"], "compression 'bogus'"),
    (["make-data", "{d}/x.zarr", "--rows", "10", "--features", "3", "--compression", "lzf"], "compression 'lzf'"),
    (["make-data", "{d}/x.h5", "--rows", "10", "--features", "1e9"], "'--features'"),
    (["make-data", "{d}/x.h5", "--rows", "10", "--features", "1000000000"], "'--features'"),
    (["make-data", "{d}/x.h5", "--rows", "1000000", "--features", "1000000"], "refused"),
    (["evaluate", "{d}/ck", "{d}/hive"], "hive"),
    (["inspect", "{d}/nothing-here.h5"], "no such file"),
    (["train", H5, "--resume"], "--resume needs --checkpoint-dir"),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[" ".join(map(str, a))[:60] for a, _ in CASES])
def test_bad_input_exits_2_with_one_line_and_no_traceback(files, args, expected):
    argv = [str(a).replace("{d}", str(files)) for a in args]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # a closed port: refused at once, no network
    started = time.monotonic()
    res = subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=60, env=env)
    assert time.monotonic() - started < 30, "took too long to refuse"
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert expected.replace("{d}", str(files)) in lines[0], lines[0]
    if args[0] == "predict":
        assert not list(Path(files).rglob("p.csv"))


def test_debug_shows_the_traceback(files):
    res = subprocess.run([str(BIN), "--debug", "train", str(files / "hive")], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" in res.stderr and "the files' columns disagree" in res.stderr


# -- data never written, or changed in place ---------------------------------------------------------
def test_unwritten_hdf5_chunks_are_refused_unless_allowed(tmp_path):
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("X", shape=(1000, 4), chunks=(100, 4), dtype="f4")[:600] = 1.0
        f.create_dataset("y", shape=(1000,), chunks=(100,), dtype="i4")[:] = np.arange(1000) % 2
    with pytest.raises(DataError, match=r"'/X' has 1000 rows, but 4 of its 10 chunks were never written"):
        open_dataset(tmp_path / "p.h5")
    ds = open_dataset(tmp_path / "p.h5", allow_missing_chunks=True)
    assert ds.read(np.arange(1000))[0][600:].sum() == 0  # the fill values, as asked


def test_a_zarr_chunk_deleted_is_refused_unless_allowed(tmp_path):
    make_data(tmp_path / "z.zarr", rows=1000, features=4, chunk_rows=100)
    (tmp_path / "z.zarr" / "X" / "c" / "3" / "0").unlink()
    res = subprocess.run([str(BIN), "train", str(tmp_path / "z.zarr"), "--epochs", "1"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "rows 300-400 were never written" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    ok = subprocess.run([str(BIN), "train", str(tmp_path / "z.zarr"), "--epochs", "1", "--allow-missing-chunks"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_a_zarr_label_chunk_equal_to_its_fill_value_is_genuine_data(tmp_path):
    # zarr does not store a chunk equal to the fill value: such a chunk is data, not a hole
    import zarr

    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("X", shape=(400, 3), chunks=(100, 3), dtype="f4")[:] = np.arange(1200.0).reshape(400, 3)
    y = g.create_array("y", shape=(400,), chunks=(100,), dtype="i4", fill_value=0)
    y[:] = (np.arange(400) >= 100).astype(np.int32)  # the first chunk all zeros: not written
    assert not (tmp_path / "g.zarr" / "y" / "c" / "0").exists()
    got = open_dataset(tmp_path / "g.zarr").read(np.arange(400))
    assert got[1][:100].sum() == 0 and got[1][100:].sum() == 300


@pytest.mark.parametrize("fmt", [".h5", ".parquet", ".zarr"])
def test_resume_refuses_data_changed_in_place(tmp_path, fmt):
    path = tmp_path / f"d{fmt}"
    make_data(path, rows=600, features=4, chunk_rows=100, seed=1)
    Trainer(TrainConfig(hidden=3, epochs=1)).fit(path, checkpoint_dir=tmp_path / "ck", log=None)
    make_data(path, rows=600, features=4, chunk_rows=100, seed=2, overwrite=True)  # same layout, new values
    with pytest.raises(Exception, match="data changed in place"):
        Trainer(TrainConfig(hidden=3, epochs=2)).fit(path, checkpoint_dir=tmp_path / "ck", resume=True, log=None)
    t = Trainer(TrainConfig(hidden=3, epochs=2))
    t.fit(path, checkpoint_dir=tmp_path / "ck", resume=True, force=True, log=None)
    assert t.global_step == 2 * 19


# -- outputs ---------------------------------------------------------------------------------------------
def test_a_full_disk_refusing_the_metrics_line_keeps_the_epochs_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "metrics.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    res = subprocess.run([str(BIN), "train", str(H5), "--epochs", "2", "--hidden", "3", "--checkpoint-dir", str(ck)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {ck}/metrics.jsonl: cannot write (No space left")
    assert [p.name for p in list_checkpoints(ck)] == ["ckpt-000000000018.npz"]  # epoch 1's, written first


@pytest.mark.slow
def test_deleting_the_checkpoint_directory_mid_run_stops_that_run(tmp_path):
    make_data(tmp_path / "d.h5", rows=100_000, features=16)
    ck = tmp_path / "ck"
    args = [str(BIN), "train", str(tmp_path / "d.h5"), "--batch-size", "1", "--epochs", "50", "--checkpoint-dir",
            str(ck), "--checkpoint-every", "1000000"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (ck / ".lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    import shutil

    shutil.rmtree(ck)
    # A second trainer now takes a fresh lock there; the first must notice and stop, writing nothing.
    second = subprocess.Popen(args[:-2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = first.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        dump = subprocess.run([str(Path(sys.executable).with_name("py-spy")), "dump", "--pid", str(first.pid)],
                              capture_output=True, text=True).stdout
        first.kill()
        pytest.fail("FIRST HUNG\n" + dump)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            dump = subprocess.run([str(Path(sys.executable).with_name("py-spy")), "dump", "--pid", str(second.pid)],
                                  capture_output=True, text=True).stdout
            second.kill()
            pytest.fail("SECOND HUNG\n" + dump)
    assert first.returncode == 2, err
    assert "was deleted or replaced while this run was using it" in err.strip().splitlines()[-1]


# -- resources bounded by the data and the machine --------------------------------------------------------
def test_decoding_workers_and_their_buffers_are_bounded_by_the_data_and_the_cores(tmp_path):
    from streamtrain.data.decoder import SLOTS, usable_cores
    from streamtrain.data.loader import start_decoder, window_rows_for
    from streamtrain.data.sampling import Sampler

    make_data(tmp_path / "small.zarr", rows=1000, features=5, chunk_rows=100)
    ds = open_dataset(tmp_path / "small.zarr")
    # 40 workers and a 2000 MB budget asked for 20 KB of data
    process = start_decoder(ds, Sampler(ds.bounds, 10, window_rows=window_rows_for(2000 * 2**20, ds)),
                            decoder="process", workers=40)
    if process is None:
        pytest.skip("no worker processes on this platform")
    try:
        assert len(process.workers) <= usable_cores()
        assert process.slot_rows == ds.n_rows  # not the 2000 MB the budget allows
        assert process.slot_bytes * SLOTS <= SLOTS * ds.n_rows * ds.n_features * 4
    finally:
        process.close()
    # windows of one chunk: one worker, whatever was asked (each decodes whole chunks)
    process = start_decoder(ds, Sampler(ds.bounds, 10, window_rows=100), decoder="process", workers=8)
    try:
        assert len(process.workers) == 1
    finally:
        process.close()
