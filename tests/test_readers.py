"""One contract suite, run against every reader; plus the bad-input messages."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
import pytest

from streamtrain import ArrayDataset, DataError, make_data, open_dataset


class ReaderTests:
    """Subclasses provide ``make(tmp_path, X, y, chunk_rows)`` returning an open Dataset."""

    N, D, CHUNK = 1000, 6, 128

    @pytest.fixture
    def arrays(self):
        rng = np.random.default_rng(0)
        return rng.standard_normal((self.N, self.D)).astype(np.float32), rng.integers(0, 3, self.N).astype(np.int32)

    @pytest.fixture
    def ds(self, tmp_path, arrays):
        d = self.make(tmp_path, *arrays, self.CHUNK)
        yield d
        d.close()

    def test_layout(self, ds):
        assert (ds.n_rows, ds.n_features) == (self.N, self.D)
        assert ds.bounds[0] == 0 and ds.bounds[-1] == self.N
        assert np.all(np.diff(ds.bounds) > 0)

    def test_read_chunks_cover_the_data(self, ds, arrays):
        X = np.concatenate([ds.read_chunk(i)[0] for i in range(ds.n_chunks)])
        np.testing.assert_array_equal(X, arrays[0])

    def test_gather_sorted_rows(self, ds, arrays):
        rows = np.sort(np.random.default_rng(1).choice(self.N, 77, replace=False))
        X, y = ds.read(rows)
        np.testing.assert_array_equal(X, arrays[0][rows])
        np.testing.assert_array_equal(y, arrays[1][rows])
        assert X.dtype == np.float32

    def test_empty_and_single_row(self, ds, arrays):
        assert ds.read(np.array([], dtype=np.int64))[0].shape == (0, self.D)
        np.testing.assert_array_equal(ds.read([self.N - 1])[0], arrays[0][-1:])

    def test_out_of_range(self, ds):
        with pytest.raises(IndexError):
            ds.read([self.N])
        with pytest.raises(IndexError):
            ds.gather([3, -1])

    def test_gather_rows_in_any_order_with_repeats(self, ds, arrays):
        rows = np.random.default_rng(2).integers(0, self.N, 300)  # unsorted, with repeats
        X, y, keep = ds.gather(rows)
        np.testing.assert_array_equal(X, arrays[0][rows])
        np.testing.assert_array_equal(y, arrays[1][rows])
        assert keep is None and X.dtype == np.float32


def _write(tmp_path, suffix, X, y, chunk_rows):
    from streamtrain.io.writers import open_writer

    path = tmp_path / f"t{suffix}"
    with open_writer(path, len(X), [f"c{j}" for j in range(X.shape[1])], "y", "int32", chunk_rows) as w:
        w.write(X, y)
    return open_dataset(path)


class TestHDF5(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return _write(tmp_path, ".h5", X, y, chunk_rows)

    def test_uncompressed_rows_are_gathered_in_place(self, ds):
        assert ds.capabilities.in_place


class TestHDF5BigEndianFloat64(ReaderTests):
    """Written by h5py as big-endian float64 in chunks: gathered from the file map, converted."""

    def make(self, tmp_path, X, y, chunk_rows):
        import h5py

        with h5py.File(tmp_path / "be.h5", "w") as f:
            f.create_dataset("X", data=X.astype(">f8"), chunks=(chunk_rows, X.shape[1]))
            f.create_dataset("y", data=y.astype(">i2"), chunks=(chunk_rows,))
        ds = open_dataset(tmp_path / "be.h5")
        assert ds.capabilities.in_place
        return ds


class TestHDF5Contiguous(ReaderTests):
    """Written by plain h5py, unchunked: virtual chunks are used."""

    def make(self, tmp_path, X, y, chunk_rows):
        import h5py

        with h5py.File(tmp_path / "c.h5", "w") as f:
            f["grp/features"] = X
            f["grp/target"] = y
        ds = open_dataset(tmp_path / "c.h5", features="grp/features", label="grp/target")
        assert ds.capabilities.in_place
        return ds


class TestZarr(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return _write(tmp_path, ".zarr", X, y, chunk_rows)


class TestZarrFormat2(ReaderTests):
    """Written by zarr-python directly as a format-2 store."""

    def make(self, tmp_path, X, y, chunk_rows):
        import zarr

        g = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
        g.create_array("X", data=X, chunks=(chunk_rows, X.shape[1]))
        g.create_array("y", data=y, chunks=(chunk_rows,))
        return open_dataset(tmp_path / "v2.zarr")


class TestParquet(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return _write(tmp_path, ".parquet", X, y, chunk_rows)


class TestParquetFromPandas(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        import pandas as pd

        df = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
        df["label"] = y
        df.to_parquet(tmp_path / "p.parquet", row_group_size=chunk_rows)
        return open_dataset(tmp_path / "p.parquet")


class TestMemory(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return ArrayDataset(X, y, chunk_rows=chunk_rows)


def test_chunk_cache_is_bounded(tmp_path):
    make_data(tmp_path / "c.h5", rows=4096, features=8, chunk_rows=256)
    ds = open_dataset(tmp_path / "c.h5", cache_bytes=3 * 256 * 8 * 4 + 3 * 256 * 4)
    for i in range(ds.n_chunks):
        ds.read_chunk(i)
    assert len(ds._cache) == 3 and ds._cache.nbytes <= ds.cache_bytes


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing.h5", "no such file"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "unknown format"),
    (lambda p: (p / "junk.h5").write_bytes(b"\x00garbage" * 10) and p / "junk.h5", "not a readable HDF5"),
    (lambda p: (p / "junk.parquet").write_bytes(b"PAR1 no footer") and p / "junk.parquet", "not a readable Parquet"),
])
def test_bad_input_names_the_file(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(DataError, match=match) as e:
        open_dataset(path)
    assert str(path) in str(e.value)


def test_missing_named_dataset_lists_what_exists(tmp_path):
    make_data(tmp_path / "d.h5", rows=10, features=2)
    with pytest.raises(DataError, match=r"no label dataset named 'target' \(found: 'X', 'y'\)"):
        open_dataset(tmp_path / "d.h5", label="target")


def test_a_string_parquet_feature_is_encoded_named_or_found(tmp_path):
    import pandas as pd

    pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"], "target": [0, 1]}).to_parquet(tmp_path / "s.parquet")
    names = ["a", "b=<missing>", "b=<other>", "b=x", "b=y"]
    assert open_dataset(tmp_path / "s.parquet", features=["a", "b"]).feature_names == names
    ds = open_dataset(tmp_path / "s.parquet")
    assert ds.feature_names == names and ds.left_out == []
    X, y = ds.read_chunk(0)
    assert X.tolist() == [[1, 0, 0, 1, 0], [2, 0, 0, 0, 1]] and y.tolist() == [0, 1]


@pytest.mark.slow
def test_scanning_2gb_with_a_64mb_cache_stays_under_400mb(tmp_path):
    """Peak RSS while reading every chunk (and random gathers) of 2 GB through a 64 MB cache."""
    import subprocess
    import sys

    from streamtrain.io.writers import open_writer

    # 2.05 GB of float32 in make-data's layout (uncompressed, chunks of 32,768 rows). The values do
    # not matter here: one chunk drawn once and written 245 times (drawing 8M rows took 3/4 of the time).
    path, rows, chunk = tmp_path / "big.h5", 8_000_000, 32768
    rng = np.random.default_rng(0)
    X = rng.standard_normal((chunk, 64), dtype=np.float32)
    y = (X[:, 0] > 0).astype(np.int32)
    with open_writer(path, rows, [f"f{j}" for j in range(64)], "y", "int32", chunk, "none") as w:
        for a in range(0, rows, chunk):
            w.write(X[:rows - a], y[:rows - a])
    assert path.stat().st_size > 2_048_000_000
    code = (
        "import re, sys, numpy as np, streamtrain as st\n"
        "ds = st.open_dataset(sys.argv[1], cache_bytes=64 << 20)\n"
        "total = 0\n"
        "for i in range(ds.n_chunks):\n"
        "    total += len(ds.read_chunk(i)[0])\n"
        "rng = np.random.default_rng(0)\n"
        "for _ in range(50):\n"
        "    total += len(ds.read(np.sort(rng.choice(ds.n_rows, 256, replace=False)))[0])\n"
        "assert ds._cache.nbytes <= 64 << 20\n"
        "print(total, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    total, peak_kb = map(int, res.stdout.split())
    assert total == 8_000_000 + 50 * 256
    assert peak_kb / 1024 < 400, f"peak RSS {peak_kb / 1024:.0f} MiB"


def _mapped_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[2]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_pages_mapped_from_an_uncompressed_file_stay_within_the_budget(tmp_path):
    """Random gathers from a 40 MB file with an 8 MB budget: the pages mapped into the process
    (counted in its resident memory) stay within the budget, not the file size."""
    from streamtrain.readers.filemap import FOLIO_BYTES

    make_data(tmp_path / "m.h5", rows=160_000, features=64, chunk_rows=4096, compression="none")
    with open_dataset(tmp_path / "m.h5", cache_bytes=8 << 20) as ds:
        X_all = np.concatenate([ds.read_chunk(i)[0] for i in range(ds.n_chunks)])
        base, grown = _mapped_bytes(), 0
        rng = np.random.default_rng(0)
        for _ in range(6):
            rows = rng.integers(0, ds.n_rows, 20_000)
            X, _, _ = ds.gather(rows)
            np.testing.assert_array_equal(X, X_all[rows])
            grown = max(grown, _mapped_bytes() - base)
        assert grown <= (8 << 20) + 2 * FOLIO_BYTES, f"{grown / 2**20:.0f} MB mapped"
        ds.set_budget(64 << 20)  # a budget the file fits in: no drops, the whole file stays mapped
        for _ in range(3):
            ds.gather(rng.integers(0, ds.n_rows, 20_000))
        assert _mapped_bytes() - base > 16 << 20


def test_nonfinite_rows_in_a_mapped_gather(tmp_path):
    import h5py

    X = np.arange(2000 * 3, dtype=np.float32).reshape(2000, 3)
    X[777, 1] = np.nan
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(100, 3))
        f["y"] = np.arange(2000) % 2
    with open_dataset(tmp_path / "n.h5") as ds:
        assert ds.capabilities.in_place
        with pytest.raises(DataError, match=r"n\.h5: NaN or Inf in row 777\b"):
            ds.gather([1500, 5, 777, 1999])
    with open_dataset(tmp_path / "n.h5", nonfinite="skip") as ds:
        got, labels, keep = ds.gather([1500, 5, 777, 1999, 777])
        np.testing.assert_array_equal(keep, [True, True, False, True, False])
        np.testing.assert_array_equal(got[keep], X[[1500, 5, 1999]])
        np.testing.assert_array_equal(ds.read([5, 777, 1500])[0], X[[5, 1500]])


@pytest.mark.parametrize("bounds", [[0, 4, 8, 10], [0, 3, 10, 12], [0, 5]])
def test_chunk_of_rows(bounds):
    ds = ArrayDataset(np.zeros((bounds[-1], 2)), chunk_rows=bounds[1])
    ds.bounds = np.asarray(bounds, dtype=np.int64)  # uniform, uneven or a single chunk
    rows = np.array([bounds[-1] - 1, 0, min(bounds[1], bounds[-1] - 1), bounds[1] - 1])
    chunk_of, touched = ds.chunk_of(rows)
    np.testing.assert_array_equal(chunk_of, np.searchsorted(ds.bounds, rows, side="right") - 1)
    np.testing.assert_array_equal(touched, np.unique(chunk_of))


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.97])
@pytest.mark.parametrize("part", ["train", "val"])
def test_a_split_of_in_place_data_gathers_in_place_exactly(tmp_path, monkeypatch, fraction, part):
    # A hold-out split of uncompressed HDF5 (or arrays) maps its rows to the file's and gathers them
    # in place, in any order: the same rows as reading its chunks, and never a chunk decoded.
    from streamtrain.data.loader import Loader
    from streamtrain.data.sampling import Sampler
    from streamtrain.readers.hdf5 import HDF5Dataset
    from streamtrain.readers.subset import HoldoutSplit

    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((5000, 4)).astype(np.float32), np.arange(5000) % 3
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(300, 4))
        f["y"] = y
    for parent in (open_dataset(tmp_path / "u.h5"), ArrayDataset(X, y)):
        split = HoldoutSplit(parent, fraction, seed=11, part=part)
        inner = HoldoutSplit(split, 0.5, seed=1, part="train")  # a split of a split
        for ds in (split, inner):
            assert ds.capabilities.in_place
            expected_X = np.concatenate([c[0] for c in ds.iter_chunks()])
            expected_y = np.concatenate([c[1] for c in ds.iter_chunks()])
            rows = np.concatenate([rng.permutation(ds.n_rows), rng.integers(0, ds.n_rows, 50)])
            got_X, got_y, keep = ds.gather(rows)
            assert keep is None
            np.testing.assert_array_equal(got_X, expected_X[rows])
            np.testing.assert_array_equal(got_y, expected_y[rows])
    # Training's loader, global shuffle: no HDF5 chunk is decoded for the split's rows.
    split = HoldoutSplit(open_dataset(tmp_path / "u.h5"), fraction, seed=11, part=part)
    monkeypatch.setattr(HDF5Dataset, "_load_chunk", lambda self, i: pytest.fail("a chunk was decoded"))
    seen = np.concatenate([rows for rows, _, _ in Loader(split, Sampler(split.bounds, 64, "global")).iter_epoch()])
    assert np.array_equal(np.sort(seen), np.arange(split.n_rows))


def test_each_reader_declares_how_it_is_read(tmp_path):
    from streamtrain.readers.base import Capabilities

    make_data(tmp_path / "u.h5", rows=100, features=3, compression=None)
    make_data(tmp_path / "g.h5", rows=100, features=3, compression="gzip")
    make_data(tmp_path / "z.zarr", rows=100, features=3)
    make_data(tmp_path / "p.parquet", rows=100, features=3)
    caps = {name: open_dataset(tmp_path / name).capabilities for name in ("u.h5", "g.h5", "z.zarr", "p.parquet")}
    assert caps["u.h5"] == Capabilities(in_place=True, decodes_chunks=False)
    assert caps["g.h5"] == caps["z.zarr"] == caps["p.parquet"] == Capabilities(decodes_chunks=True)
    assert ArrayDataset(np.zeros((4, 2))).capabilities == Capabilities(True, True, False, False)


@pytest.mark.parametrize("name", ["g.h5", "z.zarr", "p.parquet", "t.csv", "f.parquet"])
def test_a_whole_pass_over_the_chunks_makes_the_fingerprint_without_reading_them_again(name, tmp_path, monkeypatch):
    # (a run's scaling pass reads every chunk; the stamp read three of them again: 0.7 s of a click log's start)
    monkeypatch.setenv("STREAMTRAIN_TABLE_CACHE", str(tmp_path / "copies"))
    monkeypatch.setattr("streamtrain.readers.text.BLOCK_BYTES", 4096)  # (the CSV's copy: row groups of a block)
    if name == "f.parquet":  # a table that is encoded (its missing values imputed)
        df = pd.DataFrame({"x": np.r_[np.nan, np.arange(2999.0)], "c": ["a", "b", None] * 1000,
                           "y": np.arange(3000) % 2})
        df.to_parquet(tmp_path / name, row_group_size=400)
    elif name == "t.csv":
        make_data(tmp_path / "p0.parquet", rows=3000, features=4, chunk_rows=500, seed=0)
        pd.read_parquet(tmp_path / "p0.parquet").to_csv(tmp_path / name, index=False)
    else:
        make_data(tmp_path / name, rows=3000, features=4, chunk_rows=500, seed=0,
                  **({"compression": "gzip"} if name.endswith(".h5") else {}))
    expected = open_dataset(tmp_path / name).fingerprint()
    ds = open_dataset(tmp_path / name)
    assert ds.n_chunks >= 3
    ds._load_locked = lambda i: pytest.fail("a chunk was read again")
    rows = sum(len(X) for X, _ in ds.iter_chunks())
    assert ds.fingerprint() == expected and rows == 3000
    # a pass that stops early, of one process's share, or without the codes of a table's categorical
    # columns (the statistics pass's), leaves the stamp to be read
    for how in ("stops", "share") + (("no codes",) if name == "f.parquet" else ()):
        ds = open_dataset(tmp_path / name, **({"encode": {"one_hot_max": 0}} if how == "no codes" else {}))
        if how == "no codes":
            expected = ds.fingerprint()
            ds = open_dataset(tmp_path / name, encode={"one_hot_max": 0})
            ds.read_codes = False
        chunks = ds.iter_chunks() if how != "share" else ds.iter_chunks((1, 2))
        next(chunks) if how == "stops" else list(chunks)
        ds.read_codes = True
        reads = []
        load = type(ds)._load_locked
        ds._load_locked = lambda i: reads.append(i) or load(ds, i)
        assert ds.fingerprint() == expected and len(reads) == 3


def test_stamps_made_on_a_thread_are_the_stamps_and_their_error_is_the_fingerprint_s(tmp_path):
    # (a run's start reads the sampled chunks on the other core while it draws its first layer)
    import threading

    from streamtrain.readers.subset import HoldoutSplit

    make_data(tmp_path / "g.h5", rows=3000, features=4, chunk_rows=500, seed=0, compression="gzip")
    expected = open_dataset(tmp_path / "g.h5").fingerprint()
    ds = open_dataset(tmp_path / "g.h5")
    where = []
    load = type(ds)._load_locked
    ds._load_locked = lambda i: where.append(threading.current_thread().name) or load(ds, i)
    ds.stamp_soon()
    assert ds.fingerprint() == expected and where == ["streamtrain-stamp"] * 3
    ds.stamp_soon()  # (made: nothing more to read)
    assert ds.fingerprint() == expected and len(where) == 3
    split = HoldoutSplit(open_dataset(tmp_path / "g.h5"), 0.2, seed=1, part="train")
    split.stamp_soon()  # a split's fingerprint is its parent's: the parent's are made
    assert "_stamping" in split.parent.__dict__ and split.fingerprint()["content"] == expected["content"]
    broken = open_dataset(tmp_path / "g.h5")
    broken._load_locked = lambda i: (_ for _ in ()).throw(DataError("g.h5: chunk 0 is damaged"))
    broken.stamp_soon()
    with pytest.raises(DataError, match="chunk 0 is damaged"):
        broken.fingerprint()


def test_the_fingerprint_is_kept_while_the_files_are_unchanged(tmp_path):
    # (a run's start asks for it up to three times; remote chunks are slow to read)
    path = tmp_path / "d.h5"
    make_data(path, rows=3000, features=4, chunk_rows=500, seed=0)
    ds = open_dataset(path)
    reads = []
    load = type(ds)._load_locked
    ds._load_locked = lambda i: reads.append(i) or load(ds, i)
    first = ds.fingerprint()
    assert len(reads) == 3 and ds.fingerprint() == first and len(reads) == 3
    st = os.stat(path)  # touched (as a rewrite in place would): read again, and the content differs
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ds.fingerprint()["content"] != first["content"] and len(reads) == 6
    ds.close()
    # data in memory may change unseen: hashed at each call
    X = np.zeros((100, 3), np.float32)
    mem = ArrayDataset(X, np.zeros(100))
    before = mem.fingerprint()
    X[0, 0] = 1.0
    assert mem.fingerprint()["content"] != before["content"]
