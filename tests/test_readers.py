"""One contract suite, run against every reader; plus the bad-input messages."""

from __future__ import annotations

import numpy as np
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


def _write(tmp_path, suffix, X, y, chunk_rows):
    from streamtrain.writers import open_writer

    path = tmp_path / f"t{suffix}"
    with open_writer(path, len(X), [f"c{j}" for j in range(X.shape[1])], "y", "int32", chunk_rows) as w:
        w.write(X, y)
    return open_dataset(path)


class TestHDF5(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return _write(tmp_path, ".h5", X, y, chunk_rows)


class TestHDF5Contiguous(ReaderTests):
    """Written by plain h5py, unchunked: virtual chunks are used."""

    def make(self, tmp_path, X, y, chunk_rows):
        import h5py

        with h5py.File(tmp_path / "c.h5", "w") as f:
            f["grp/features"] = X
            f["grp/target"] = y
        return open_dataset(tmp_path / "c.h5", features="grp/features", label="grp/target")


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
    assert len(ds._cache) == 3 and ds._cached_bytes <= ds.cache_bytes


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
    with pytest.raises(DataError, match=r"no label dataset named 'target' \(found: X, y\)"):
        open_dataset(tmp_path / "d.h5", label="target")


def test_string_parquet_feature_is_refused(tmp_path):
    import pandas as pd

    pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"], "target": [0, 1]}).to_parquet(tmp_path / "s.parquet")
    with pytest.raises(DataError, match="'b' is not numeric"):
        open_dataset(tmp_path / "s.parquet", features=["a", "b"])
    assert open_dataset(tmp_path / "s.parquet").feature_names == ["a"]  # auto-detection skips it


def test_scanning_2gb_with_a_64mb_cache_stays_under_400mb(tmp_path):
    """Peak RSS while reading every chunk (and random gathers) of 2 GB through a 64 MB cache."""
    import subprocess
    import sys

    path = tmp_path / "big.h5"
    make_data(path, rows=8_000_000, features=64, chunk_rows=32768)  # 2.05 GB of float32
    code = (
        "import re, sys, numpy as np, streamtrain as st\n"
        "ds = st.open_dataset(sys.argv[1], cache_bytes=64 << 20)\n"
        "total = 0\n"
        "for i in range(ds.n_chunks):\n"
        "    total += len(ds.read_chunk(i)[0])\n"
        "rng = np.random.default_rng(0)\n"
        "for _ in range(50):\n"
        "    total += len(ds.read(np.sort(rng.choice(ds.n_rows, 256, replace=False)))[0])\n"
        "assert ds._cached_bytes <= 64 << 20\n"
        "print(total, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    total, peak_kb = map(int, res.stdout.split())
    assert total == 8_000_000 + 50 * 256
    assert peak_kb / 1024 < 400, f"peak RSS {peak_kb / 1024:.0f} MiB"
