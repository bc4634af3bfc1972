"""Files written by the tools users use (h5py, PyTables, pandas, zarr 2 and 3, xarray, pyarrow,
pyarrow.dataset, polars, DuckDB), read through the one ReaderTests contract."""

from __future__ import annotations

import warnings

import h5py
import hdf5plugin
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from streamtrain import Trainer, open_dataset

from .test_readers import ReaderTests

NAMES = [f"c{j}" for j in range(ReaderTests.D)]


def _frame(X, y):
    df = pd.DataFrame(X, columns=[f"c{j}" for j in range(X.shape[1])])
    df["target"] = y
    return df


# -- HDF5 --------------------------------------------------------------------------
@pytest.mark.parametrize("filters", [
    {"compression": "gzip", "compression_opts": 4},
    {"compression": "lzf", "shuffle": True},
    {"compression": "gzip", "shuffle": True, "fletcher32": True},
    dict(hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    dict(hdf5plugin.Zstd(clevel=5)),
    dict(hdf5plugin.LZ4()),
], ids=["gzip", "lzf-shuffle", "gzip-shuffle-fletcher", "blosc-zstd", "zstd", "lz4"])
class TestHDF5Filters(ReaderTests):
    @pytest.fixture
    def ds(self, tmp_path, arrays, filters):
        X, y = arrays
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("deep/inside/X", data=X, chunks=(self.CHUNK, self.D), **filters)
            f.create_dataset("deep/inside/y", data=y, chunks=(self.CHUNK,), **filters)
        d = open_dataset(tmp_path / "f.h5")  # found by name, however deep
        assert d.n_chunks == -(-self.N // self.CHUNK)
        yield d
        d.close()


class TestPandasTable(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _frame(X, y).to_hdf(tmp_path / "t.h5", key="frame", format="table", complevel=5, complib="blosc:zstd")
        d = open_dataset(tmp_path / "t.h5")
        assert d.feature_names == NAMES and d.label_name == "target"  # names read without unpickling
        return d


class TestPandasTableDataColumns(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _frame(X, y).to_hdf(tmp_path / "t.h5", key="frame", format="table", data_columns=True)
        return open_dataset(tmp_path / "t.h5", features="c*", label="target")


class TestPyTables(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        import tables

        desc = {n: tables.Float32Col(pos=j) for j, n in enumerate(NAMES)} | {"label": tables.Int32Col(pos=99)}
        with tables.open_file(tmp_path / "pt.h5", "w") as f:
            t = f.create_table("/", "rows", desc, chunkshape=(chunk_rows,), filters=tables.Filters(5, "zlib"))
            t.append(list(zip(*X.T, y)))
        return open_dataset(tmp_path / "pt.h5")


def test_hdf5_every_numeric_dtype_and_bool(tmp_path):
    rng = np.random.default_rng(0)
    for dt in ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "?"]:
        X = (rng.random((50, 3)) * 100).astype(dt)
        with h5py.File(tmp_path / "d.h5", "w") as f:
            f["X"], f["y"] = X, (np.arange(50) % 2).astype(dt if dt != "f2" else "i1")
        with open_dataset(tmp_path / "d.h5") as ds:
            got, y = ds.read(np.arange(50))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, X.astype(np.float32))


def test_hdf5_two_dimensional_label_for_multi_output_regression(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["X"] = np.ones((20, 3))
        f["y"] = np.arange(40.0).reshape(20, 2)
    with open_dataset(tmp_path / "m.h5") as ds:
        assert ds.read([0, 19])[1].tolist() == [[0.0, 1.0], [38.0, 39.0]]


# -- Zarr --------------------------------------------------------------------------
class TestZarrSharded(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
        g.create_array("X", shape=X.shape, dtype=X.dtype, chunks=(32, self.D), shards=(chunk_rows, self.D))[:] = X
        g.create_array("y", data=y, chunks=(chunk_rows,))
        d = open_dataset(tmp_path / "s.zarr")
        assert d.chunk_sizes.max() == chunk_rows  # a shard, not an inner chunk, is the read unit
        return d


class TestZarrZipStore(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        store = zarr.storage.ZipStore(tmp_path / "z.zip", mode="w")
        g = zarr.open_group(store, mode="w")
        g.create_array("X", data=X, chunks=(chunk_rows, self.D))
        g.create_array("y", data=y, chunks=(chunk_rows,))
        store.close()
        return open_dataset(tmp_path / "z.zip")


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("zarr_format", [2, 3])
class TestXarray(ReaderTests):
    @pytest.fixture
    def ds(self, tmp_path, arrays, zarr_format):
        import xarray as xr

        X, y = arrays
        data = {n: ("sample", X[:, j]) for j, n in enumerate(NAMES)} | {"target": ("sample", y)}
        xd = xr.Dataset(data, coords={"sample": np.arange(self.N)})
        xd.to_zarr(tmp_path / "x.zarr", mode="w", zarr_format=zarr_format,
                   encoding={name: {"chunks": (self.CHUNK,)} for name in data})
        d = open_dataset(tmp_path / "x.zarr")
        assert d.feature_names == NAMES and d.label_name == "target"  # the "sample" coordinate is not a feature
        yield d
        d.close()


# -- Parquet -----------------------------------------------------------------------
class TestParquetFixedSizeList(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        t = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), self.D), "label": y})
        pq.write_table(t, tmp_path / "l.parquet", row_group_size=chunk_rows)
        d = open_dataset(tmp_path / "l.parquet")
        assert d.feature_names[:2] == ["x[0]", "x[1]"]
        return d


class TestPyarrowDatasetDirectory(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        import pyarrow.dataset as pds

        table = pa.Table.from_pandas(_frame(X, y), preserve_index=False)
        pds.write_dataset(table, tmp_path / "dir", format="parquet", max_rows_per_file=400,
                          max_rows_per_group=chunk_rows, min_rows_per_group=chunk_rows)
        d = open_dataset(tmp_path / "dir")
        assert d.describe()["files"] == 3
        return d


class TestSparkLayout(ReaderTests):
    """Spark's output directory: part files, a _SUCCESS marker and hidden .crc checksums."""

    def make(self, tmp_path, X, y, chunk_rows):
        out = tmp_path / "spark_out"
        out.mkdir()
        df = _frame(X, y)
        for i, part in enumerate(np.array_split(np.arange(self.N), 2)):
            name = f"part-{i:05d}-7e1c2f4e-0000-c000.snappy.parquet"
            df.iloc[part].to_parquet(out / name, row_group_size=chunk_rows, index=False)
            (out / f".{name}.crc").write_bytes(b"crc")
        (out / "_SUCCESS").write_bytes(b"")
        return open_dataset(out)


def _partitioned(X, y):
    # Partitioning reorders rows, so carry the row number and sort it back in the checks below.
    df = _frame(X, y)
    df["row"] = np.arange(len(df))
    df["part"] = np.arange(len(df)) % 3
    return df


@pytest.mark.parametrize("writer", ["pandas", "polars", "duckdb"])
def test_hive_partitioned_directories(tmp_path, writer):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((900, 4)).astype(np.float32), rng.integers(0, 2, 900)
    df = _partitioned(X, y)
    out = tmp_path / "hive"
    if writer == "pandas":
        df.to_parquet(out, partition_cols=["part"], row_group_size=100)
    elif writer == "polars":
        import polars as pl

        pl.from_pandas(df).write_parquet(out, partition_by="part", row_group_size=100)
    else:
        import duckdb

        con = duckdb.connect()
        con.register("df", df)
        con.execute(f"COPY df TO '{out}' (FORMAT parquet, PARTITION_BY (part))")
    with open_dataset(out, features=["c*", "row"], label="target") as ds:
        assert ds.n_rows == 900
        got, labels = ds.read(np.arange(900))
    order = np.argsort(got[:, -1])
    np.testing.assert_array_equal(got[order, :4], X)
    np.testing.assert_array_equal(labels[order], y)


def test_only_the_selected_parquet_columns_are_read(tmp_path, monkeypatch):
    df = pd.DataFrame({f"f{j}": np.arange(100.0) for j in range(20)} | {"target": np.arange(100) % 2})
    df.to_parquet(tmp_path / "w.parquet", row_group_size=25)
    ds = open_dataset(tmp_path / "w.parquet", features=["f3", "f7"])
    requested = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kw):
        requested.append(list(columns))
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    ds.read(np.array([3, 60]))
    assert requested == [["f3", "f7", "target"], ["f3", "f7", "target"]]  # two row groups, three columns


# -- in memory ---------------------------------------------------------------------
class TestDataFrame(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return open_dataset(_frame(X, y))


class TestArrowTable(ReaderTests):
    def make(self, tmp_path, X, y, chunk_rows):
        return open_dataset(pa.Table.from_pandas(_frame(X, y)))


# -- a format added in one place ---------------------------------------------------------------------
class _NpzDataset:
    """A toy reader: an .npz file (no pickle) of X and y, read as arrays."""

    def __new__(cls, path, features=None, label=None, cache_bytes=None, dtype=np.float32, **options):
        from streamtrain.readers.memory import ArrayDataset

        with np.load(path, allow_pickle=False) as f:
            ds = ArrayDataset(f["X"], f["y"] if "y" in f else None, dtype=dtype, chunk_rows=100)
        ds.path, ds.format = str(path), "npz"
        return ds


def _npz_writer():
    from streamtrain.io.writers import Writer

    class NpzWriter(Writer):
        def open(self, tmp):
            self._tmp = tmp
            self._X = np.empty((self.n_rows, len(self.feature_names)), self.dtype)
            self._y = None if not self.label_name else np.empty(self.n_rows, self.label_dtype)

        def _write(self, at, X, y):
            self._X[at:at + len(X)] = X
            if self._y is not None:
                self._y[at:at + len(X)] = y

        def close(self):
            super().close()
            with open(self._tmp, "wb") as fh:
                np.savez(fh, X=self._X, **({} if self._y is None else {"y": self._y}))

        def abort(self):
            pass

    return NpzWriter


def test_a_format_registered_in_the_table_alone_is_read_and_written_everywhere(tmp_path, monkeypatch):
    from streamtrain.readers import formats

    monkeypatch.setitem(formats.FORMATS, "npz", formats.Format("npz", (".npz",), _NpzDataset, _npz_writer()))
    from streamtrain import make_data

    info = make_data(tmp_path / "d.npz", rows=500, features=4, overwrite=False)  # the writers
    assert info["rows"] == 500
    ds = open_dataset(tmp_path / "d.npz")  # open_dataset
    assert (ds.n_rows, ds.n_features) == (500, 4)
    t = Trainer(hidden=4, epochs=2)
    t.fit(tmp_path / "d.npz", checkpoint_dir=tmp_path / "run", log=None)
    t.write_predictions(tmp_path / "d.npz", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["y"], t.predict(ds))
    assert ".npz" in formats.suffixes() and ".npz" in formats.suffixes(readable=False)
    # the service's landing directory takes the format's files too
    from streamtrain.serve.rows import Columns
    from streamtrain.serve.sources import DirectorySource

    landing = tmp_path / "landing"
    landing.mkdir()
    (tmp_path / "d.npz").rename(landing / "d.npz")
    source = DirectorySource(landing, Columns(None, "y"))
    source.start(None, {})
    entries = []
    while batch := source.poll(0.01):
        entries += batch
    source.close()
    assert sum(len(e.X) for e in entries) == 500 and source.state()["done"] == ["d.npz"]


def test_an_unknown_suffix_is_the_same_one_line_error_everywhere(tmp_path):
    from streamtrain import DataError, make_data
    from streamtrain.io.writers import open_writer

    (tmp_path / "d.txt").write_text("1,2\n")
    expected = f"{tmp_path}/d.txt: unknown format; use one of .h5"
    for call in (lambda: open_dataset(tmp_path / "d.txt"),
                 lambda: make_data(tmp_path / "d.txt", rows=10, features=2)):
        with pytest.raises(DataError) as e:
            call()
        assert str(e.value).startswith(expected)
    with pytest.raises(DataError, match=r"out.txt: unknown format; use one of .h5, .*\.csv"):
        with open_writer(tmp_path / "out.txt", 10, ["a"]):
            pass
