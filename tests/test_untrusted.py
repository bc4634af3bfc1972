"""Data files are untrusted input: no code runs, nothing outside the file is read, malformed
metadata is a clean error (never a crash), NaN/Inf rows are named or skipped."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamtrain import DataError, TrainConfig, Trainer, open_dataset


def _open_in_subprocess(path, **kw):
    """Open and read a file in a child process; a crash shows as a negative return code."""
    code = textwrap.dedent(f"""
        import sys, numpy as np, streamtrain as st
        try:
            ds = st.open_dataset({str(path)!r}, **{kw!r})
            ds.read(np.arange(min(ds.n_rows, 10)))
        except st.DataError as e:
            print("DataError:", e)
            sys.exit(3)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _random_h5(p):
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _truncated_h5(p):
    with h5py.File(p, "w") as f:
        f.create_dataset("X", data=np.ones((5000, 8)), chunks=(500, 8))
        f["y"] = np.zeros(5000)
    p.write_bytes(p.read_bytes()[:20000])
    return p


def _no_footer_parquet(p):
    import pandas as pd

    pd.DataFrame({"a": np.arange(100.0), "target": np.arange(100) % 2}).to_parquet(p)
    p.write_bytes(p.read_bytes()[:-12])
    return p


def _absurd_zarr(p, chunks):
    p.mkdir()
    (p / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (p / "X").mkdir()
    (p / "X" / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [10**18, 64], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "attributes": {}}))
    return p


@pytest.mark.parametrize("make,message", [
    (lambda p: _random_h5(p / "r.h5"), "not a readable HDF5 file"),
    (lambda p: _truncated_h5(p / "t.h5"), "t.h5"),
    (lambda p: _no_footer_parquet(p / "n.parquet"), "not a readable Parquet"),
    (lambda p: _absurd_zarr(p / "a.zarr", [10**18, 64]), "refused"),
    (lambda p: _absurd_zarr(p / "b.zarr", [1000, 64]), "refused as malformed"),
    (lambda p: (p / "e.parquet").write_bytes(b"") or p / "e.parquet", "not a readable Parquet"),
], ids=["random-bytes-h5", "truncated-h5", "parquet-without-footer", "absurd-zarr-chunk", "absurd-zarr-rows", "empty"])
def test_malformed_files_fail_cleanly_in_a_subprocess(tmp_path, make, message):
    path = make(tmp_path)
    res = _open_in_subprocess(path)
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])  # a clean DataError, not a signal
    assert message in res.stdout and str(path) in res.stdout


def test_zarr_pickle_codecs_never_run(tmp_path):
    canary = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    for i, meta in enumerate([
        {"dtype": "|O", "compressor": None, "filters": [{"id": "pickle"}]},
        {"dtype": "<f4", "compressor": {"id": "pickle"}, "filters": None},
        {"dtype": "<f4", "compressor": None, "filters": [{"id": "pickle"}]},
    ]):
        store = tmp_path / f"evil{i}.zarr"
        (store / "X").mkdir(parents=True)
        (store / ".zgroup").write_text('{"zarr_format": 2}')
        (store / "X" / ".zarray").write_text(json.dumps(
            {"zarr_format": 2, "shape": [4, 2], "chunks": [4, 2], "fill_value": 0, "order": "C", **meta}))
        (store / "X" / "0.0").write_bytes(pickle.dumps(Evil()))
        with pytest.raises(DataError, match=str(store)):
            open_dataset(store).read([0])
    assert not canary.exists()


def test_hdf5_references_outside_the_file_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["X"] = np.ones((10, 2))
        f["y"] = np.zeros(10)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.ones((10, 2), np.float64).tobytes())
    with h5py.File(tmp_path / "extlink.h5", "w") as f:
        f["X"] = h5py.ExternalLink(str(other), "X")
        f["y"] = np.zeros(10)
    with h5py.File(tmp_path / "external.h5", "w") as f:
        f.create_dataset("X", (10, 2), "f8", external=[(str(raw), 0, 160)])
        f["y"] = np.zeros(10)
    layout = h5py.VirtualLayout((10, 2), "f8")
    layout[:] = h5py.VirtualSource(str(other), "X", shape=(10, 2))
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("X", layout)
        f["y"] = np.zeros(10)
    for name, word in [("extlink.h5", "external link"), ("external.h5", "external storage"),
                       ("vds.h5", "virtual dataset")]:
        with pytest.raises(DataError, match=word):
            open_dataset(tmp_path / name)
        trusted = open_dataset(tmp_path / name, allow_external=True)
        np.testing.assert_array_equal(trusted.read([0, 9])[0], np.ones((2, 2)))


def test_nan_is_an_error_naming_the_row_unless_skipped(tmp_path):
    X = np.random.default_rng(0).standard_normal((300, 3)).astype(np.float32)
    y = (np.arange(300) % 2).astype(np.float32)
    X[123, 1], y[250] = np.nan, np.inf
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, 3))
        f.create_dataset("y", data=y, chunks=(64,))
    with pytest.raises(DataError, match=r"n.h5: NaN or Inf in row 123"):
        open_dataset(tmp_path / "n.h5").read(np.arange(300))
    ds = open_dataset(tmp_path / "n.h5", nonfinite="skip")
    got, labels = ds.read(np.arange(300))
    assert len(got) == 298 and np.isfinite(got).all() and np.isfinite(labels).all()
    assert sum(len(c[0]) for c in ds.iter_chunks()) == 298
    with pytest.raises(DataError, match="row 123"):
        Trainer(TrainConfig(hidden=3, epochs=1)).fit(tmp_path / "n.h5", log=None)
    t = Trainer(TrainConfig(hidden=3, epochs=1, skip_nonfinite=True, val_fraction=0.2))
    history = t.fit(tmp_path / "n.h5", log=None)
    assert history[0]["samples"] + t.evaluate(tmp_path / "n.h5")["n"] - 298 < 300


@pytest.mark.parametrize("labels,message", [
    (np.array([0.5, 1.0] * 50), "non-integral"),
])
def test_bad_labels_for_classification(labels, message):
    X = np.ones((100, 2))
    with pytest.raises(DataError, match=message):
        Trainer(TrainConfig(hidden=2, epochs=1, task="binary")).fit((X, labels), log=None)


def test_labels_outside_the_classes_seen_are_an_error(tmp_path):
    t = Trainer(TrainConfig(hidden=2, epochs=1))
    t.fit((np.ones((50, 2)), np.arange(50) % 2), log=None)
    with pytest.raises(DataError, match=r"label value 7 is not one of the classes"):
        t.evaluate((np.ones((3, 2)), np.array([0, 1, 7])))


def test_features_and_labels_of_different_lengths(tmp_path):
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["X"], f["y"] = np.ones((10, 2)), np.ones(9)
    with pytest.raises(DataError, match="10 rows but label 'y' has 9"):
        open_dataset(tmp_path / "l.h5")


def test_zero_rows_and_one_dimensional_features(tmp_path):
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f["X"], f["y"] = np.ones((0, 2)), np.ones(0)
    with pytest.raises(DataError, match="zero rows"):
        open_dataset(tmp_path / "z.h5")
    with h5py.File(tmp_path / "o.h5", "w") as f:
        f["X"], f["y"] = np.ones(10), np.ones(10)
    with pytest.raises(DataError, match=r"shape \(10,\); need 2-D"):
        open_dataset(tmp_path / "o.h5")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_a_parquet_footer_that_lies_about_its_rows_is_refused_before_allocating(tmp_path):
    """A footer may claim any number of rows; the reader must not believe it with memory. The
    claim (10^12 rows, as the adversarial trial's 38 kB file made) is patched into a real file's
    Thrift footer: row counts are zigzag varints there, and the footer's length is fixed after."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, claimed = 1 << 20, 10**12
    path = tmp_path / "liar.parquet"
    pq.write_table(pa.table({"f0": np.zeros(rows, np.float32), "y": np.zeros(rows, np.int64)}), path,
                   row_group_size=rows, compression="snappy")
    data = path.read_bytes()
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    old, new = _varint(2 * rows), _varint(2 * claimed)
    footer = data[start:-8]
    assert old in footer
    footer = footer.replace(old, new)
    path.write_bytes(data[:start] + footer + len(footer).to_bytes(4, "little") + b"PAR1")
    assert pq.ParquetFile(path).metadata.num_rows == claimed  # the lie is what a reader sees
    with pytest.raises(DataError, match=r"liar.parquet: row group 0 declares 1,000,000,000,000 rows, 11,175.9 GiB"):
        open_dataset(path)
    res = subprocess.run([str(Path(sys.executable).with_name("streamtrain")), "train", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "row_group_size" in res.stderr


def test_a_sound_wide_parquet_file_in_pyarrows_default_row_groups_is_read(tmp_path):
    """Its row groups decode past 1 GiB: the bound on what a footer may claim must not refuse it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, width = 1 << 20, 130  # 1.03 GiB decoded as float64 (with the label), a few MB on disk
    table = pa.table({f"f{j}": pa.repeat(pa.scalar(float(j), pa.float32()), rows) for j in range(width)}
                     | {"y": pa.repeat(pa.scalar(1, pa.int64()), rows)})
    pq.write_table(table, tmp_path / "wide.parquet")
    del table
    ds = open_dataset(tmp_path / "wide.parquet", dtype="float64")
    assert (ds.n_rows, ds.n_features, ds.n_chunks) == (rows, width, 1)
    assert rows * (width * 8 + 8) > 1 << 30


@pytest.mark.parametrize("suffix", [".parquet", ".h5", ".zarr"])
def test_a_value_beyond_float32_is_one_line_without_a_warning(tmp_path, suffix):
    """It reads as Inf, which the NaN/Inf screen names; numpy's overflow warning once came first."""
    import pandas as pd
    import zarr

    X = np.random.default_rng(0).standard_normal((100, 3))
    X[5, 1] = 1e300
    y = np.arange(100) % 2
    path = tmp_path / f"big{suffix}"
    if suffix == ".parquet":
        pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y}).to_parquet(path)
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["X"], f["y"] = X, y
    else:
        g = zarr.open_group(path, mode="w")
        g["X"], g["y"] = X, y
    res = subprocess.run([str(Path(sys.executable).with_name("streamtrain")), "train", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    column = "b" if suffix == ".parquet" else "f1"
    assert res.stderr.strip().splitlines() == [
        f"error: {path}: NaN or Inf in row 5, column {column!r} (or a value beyond float32's range, which reads as "
        "Inf); clean the data or skip such rows (--skip-nonfinite, nonfinite='skip')"]
    res = subprocess.run([str(Path(sys.executable).with_name("streamtrain")), "train", str(path), "--skip-nonfinite",
                          "--epochs", "1", "--checkpoint-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr  # the advice works
    assert "Warning" not in res.stderr


def test_an_uncompressed_hdf5_file_cut_while_it_is_read_is_named_not_a_crash(tmp_path):
    """Rows of uncompressed HDF5 are read through a memory map; a file truncated in between two
    gathers would have killed the process with SIGBUS at the next one."""
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=np.ones((200_000, 16), np.float32), chunks=(10_000, 16))
        f["y"] = np.zeros(200_000, np.int64)
    code = textwrap.dedent(f"""
        import os, sys, numpy as np, streamtrain as st
        ds = st.open_dataset({str(path)!r})
        rows = np.sort(np.random.default_rng(0).choice(ds.n_rows, 5000, replace=False))
        X, y = ds.read(rows)
        assert ds._row_maps() is not None  # read in place, through the map
        os.truncate({str(path)!r}, os.path.getsize({str(path)!r}) // 3)
        try:
            ds.read(rows)
        except st.DataError as e:
            print("DataError:", e)
            sys.exit(3)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])  # not -7 (SIGBUS)
    assert f"{path}: shrank from" in res.stdout and "while training read it" in res.stdout
