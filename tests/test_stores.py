"""Tables kept in HDF5 and Zarr as users write them (pandas/PyTables, h5py, xarray, zarr 2 and 3):
strings, categoricals, timestamps, missing values and string labels are encoded as Parquet's
are, the same inputs to the bit, and train, predict and span several files."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from streamtrain import Trainer, open_dataset
from streamtrain.io.resolve import latest_checkpoint
from streamtrain.train.schema import TRAINER
from streamtrain.readers.arrow_columns import Spec, cf_time, to_arrow

from .test_tabular import flights

BIN = Path(sys.executable).with_name("streamtrain")


def _rows(ds):
    parts = [ds.read_chunk(i) for i in range(ds.n_chunks)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _frame(n=2000) -> pd.DataFrame:
    df = flights(n)
    df["seats"] = df["seats"].astype("float64")  # HDF5 has no nullable integers: pandas stores NaN
    return df


@pytest.mark.parametrize("layout", ["blocks", "data_columns", "compressed"])
def test_pandas_hdf5_tables_encode_exactly_as_parquet(layout, tmp_path):
    df = _frame()
    df.to_parquet(tmp_path / "f.parquet", row_group_size=700)
    kw = {"blocks": {}, "data_columns": {"data_columns": True},
          "compressed": {"data_columns": True, "complevel": 5, "complib": "blosc:zstd"}}[layout]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTables' warning about object columns
        df.to_hdf(tmp_path / "f.h5", key="flights", format="table", **kw)
    ref, ds = open_dataset(tmp_path / "f.parquet", label="status"), open_dataset(tmp_path / "f.h5", label="status")
    # pandas stores columns in blocks by type: they come back in the frame's order
    assert ds.feature_names == ref.feature_names
    assert {"carrier=<missing>", "weather=snow", "departs", "distance:missing", "seats:missing"} <= set(ds.feature_names)
    assert [n for n, _ in ds.left_out] == ["flight_id"]
    (X, y), (Xr, yr) = _rows(ds), _rows(ref)
    np.testing.assert_array_equal(X, Xr)  # NaN, 'nan' strings, categorical codes, UTC stamps: the same inputs
    np.testing.assert_array_equal(y, yr)
    info = ds.describe()["columns"]
    assert "categorical" in info["weather"] and "datetime" in info["departs"] and "missing" in info["carrier"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_zarr_columns_encode_as_parquet(zarr_format, tmp_path):
    import xarray as xr

    df = _frame()
    df["departs"] = df["departs"].dt.tz_convert(None)  # xarray keeps no time zone
    df["weather"] = df["weather"].astype(str)  # nor categoricals
    df["carrier"] = df["carrier"].fillna("none")
    df.to_parquet(tmp_path / "f.parquet", row_group_size=700)
    xr.Dataset.from_dataframe(df).to_zarr(tmp_path / "f.zarr", zarr_format=zarr_format, mode="w",
                                          consolidated=False)
    ref, ds = open_dataset(tmp_path / "f.parquet", label="status"), open_dataset(tmp_path / "f.zarr", label="status")
    assert sorted(ds.feature_names) == sorted(ref.feature_names)  # a store's arrays come by name
    assert ds.feature_names == sorted(ds.feature_names, key=lambda n: n.split("=")[0].split(":")[0])
    (X, y), (Xr, yr) = _rows(ds), _rows(ref)
    by_name = {n: X[:, j] for j, n in enumerate(ds.feature_names)}
    for j, n in enumerate(ref.feature_names):  # CF times ("minutes since ...") decoded to the same seconds
        np.testing.assert_array_equal(by_name[n], Xr[:, j], err_msg=n)
    np.testing.assert_array_equal(y, yr)


def test_a_variable_over_another_dimension_is_named_with_the_drop_that_reads_the_rest(tmp_path):
    import xarray as xr

    rng = np.random.default_rng(0)
    xr.Dataset({"a": ("row", rng.normal(size=300)), "y": ("row", rng.integers(0, 2, 300)),
                "station_lat": ("station", rng.normal(size=5))}).to_zarr(tmp_path / "m.zarr", zarr_format=3,
                                                                        consolidated=False)
    run = lambda *a: subprocess.run([str(BIN), "inspect", str(tmp_path / "m.zarr"), "--label", "y", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    res = run()  # (it said "feature and label arrays have different lengths [5, 300]")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.zarr'}: station_lat has 5 rows where the other arrays have 300: not columns of this "
        "table; leave it out with --drop station_lat"]
    assert run("--drop", "station_lat").returncode == 0


def test_an_xarray_coordinate_is_named_as_left_out_and_reads_as_a_column_when_named(tmp_path):
    # (the "time" coordinate was left out without a word, and --features time found no column)
    import xarray as xr

    rng = np.random.default_rng(0)
    hours = pd.date_range("2020-01-01", periods=400, freq="h")
    xr.Dataset({"humidity": ("time", rng.normal(size=400)), "station": ("time", rng.choice(["A", "B"], 400)),
                "y": ("time", (hours.hour >= 12).astype(int))},
               coords={"time": hours}).to_zarr(tmp_path / "w.zarr", zarr_format=3, consolidated=False)
    run = lambda cmd, *a: subprocess.run([str(BIN), cmd, *map(str, a)],  # noqa: E731
                                         capture_output=True, text=True, timeout=120)
    res = run("inspect", tmp_path / "w.zarr", "--label", "y")
    assert res.returncode == 0, res.stderr
    assert "  time: left out: int64: an xarray coordinate, the index of dimension 'time' (--features names it, " \
           "with the columns to use, to take it as one)" in res.stdout
    named = ["--features", "time", "--features", "humidity", "--features", "station"]
    res = run("inspect", tmp_path / "w.zarr", "--label", "y", *named)
    assert "feature_names: time, humidity, station=" in res.stdout and "time: timestamp[" in res.stdout
    res = run("train", tmp_path / "w.zarr", "--label", "y", *named, "--epochs", "2", "--checkpoint-dir", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    res = run("predict", tmp_path / "r", tmp_path / "w.zarr", "--out", tmp_path / "p.parquet")
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 400


def test_a_pandas_frame_in_hdf5_s_fixed_format_says_how_to_write_it_readably(tmp_path):
    # (it said "no features dataset found; name it with --features", which reads nothing there)
    df = pd.DataFrame({"a": np.arange(200.0), "b": np.arange(200.0) * 2, "y": np.arange(200) % 2})
    df.to_hdf(tmp_path / "f.h5", key="df")  # (pandas' default: format="fixed")
    run = lambda path: subprocess.run([str(BIN), "inspect", str(path), "--label", "y"],  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    res = run(tmp_path / "f.h5")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'f.h5'}: 'df' is a pandas DataFrame in HDF5's fixed format (to_hdf's default: blocks "
        "of columns, not rows); write it with to_hdf(path, key='df', format='table'), or as Parquet, to read it"]
    pd.read_hdf(tmp_path / "f.h5").to_hdf(tmp_path / "t.h5", key="df", format="table")  # (as it says)
    res = run(tmp_path / "t.h5")
    assert res.returncode == 0 and "feature_names: a, b" in res.stdout


def test_an_hdf5_file_of_one_1d_dataset_per_column_says_how_to_write_it_readably(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    cols = {"age": rng.integers(18, 90, 300), "income": rng.normal(size=300), "label": rng.integers(0, 2, 300)}
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[k] = v
    message = (f"error: {tmp_path / 'c.h5'}: its datasets (age, income, label) are 1-D, one per column, which an "
               "HDF5 file is not read as: write the columns as one table (pandas' DataFrame.to_hdf(path, key='data', "
               "format='table'), or Parquet) or the features as one 2-D dataset")
    # (it advised --features, and then said "no features dataset named ['age', 'income'] (found: age, income, ...)")
    for extra in ([], ["--features", "age", "--features", "income", "--label", "label"]):
        res = subprocess.run([str(BIN), "inspect", str(tmp_path / "c.h5"), *extra], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [message]
    pd.DataFrame(cols).to_hdf(tmp_path / "t.h5", key="data", format="table")  # the advice, followed
    res = subprocess.run([str(BIN), "inspect", str(tmp_path / "t.h5"), "--label", "label"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "feature_names: age, income" in res.stdout


@pytest.mark.parametrize("strings", [False, True])  # (plain columns; encoded ones)
def test_a_variable_over_a_second_dimension_is_named_as_left_out(strings, tmp_path):
    import xarray as xr

    rng = np.random.default_rng(0)
    n = 400
    data = {"a": ("row", rng.normal(size=n)), "spec": (("row", "band"), rng.normal(size=(n, 3))),
            "y": ("row", rng.integers(0, 2, n))}
    if strings:
        data["city"] = ("row", rng.choice(["Paris", "Lyon"], n))
    xr.Dataset(data).to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    ds = open_dataset(tmp_path / "s.zarr", label="y")  # (it was left out and named nowhere)
    assert ds.left_out == [("spec", "2-D array (400, 3): not a column (one 1-D array per column is; split it into "
                            "1-D arrays to use it)")]
    res = subprocess.run([str(BIN), "train", str(tmp_path / "s.zarr"), "--label", "y", "--epochs", "1",
                          "--checkpoint-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "1 column left out: spec (2-D array (400, 3)): not a column" in res.stderr


def test_h5py_compound_tables_with_fixed_and_variable_strings_train_and_predict(tmp_path):
    rng = np.random.default_rng(3)
    n = 1500
    rows = np.empty(n, np.dtype([("x", "f4"), ("n", "u2"), ("city", h5py.string_dtype()), ("code", "S4"),
                                 ("y", h5py.string_dtype())]))
    rows["x"], rows["n"] = rng.normal(size=n), rng.integers(0, 9, n)
    rows["city"] = rng.choice(["Paris", "Lyon", "Nice"], n)
    rows["code"] = rng.choice([b"A1", b"B2"], n)
    rows["y"] = np.where((rows["city"] == "Nice") ^ (rows["code"] == b"B2"), "yes", "no")
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("rows", data=rows, chunks=(256,))
    ds = open_dataset(tmp_path / "t.h5")
    assert ds.label_name == "y" and ds.label_classes == ["no", "yes"] and ds.left_out == []
    assert {"x", "n", "city=Nice", "code=A1", "code=B2"} <= set(ds.feature_names)
    trainer = Trainer(hidden=8, epochs=30, batch_size=32, seed=0)
    trainer.fit(str(tmp_path / "t.h5"), log=None)
    pred = trainer.predict(str(tmp_path / "t.h5"))
    assert set(pred) == {"no", "yes"} and (pred == rows["y"].astype(str)).mean() > 0.95


def test_an_h5py_matrix_with_text_labels_trains_predicts_and_evaluates(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1200, 3)).astype("f4")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = X
        f["y"] = np.where(X[:, 0] + X[:, 1] > 0, b"dog", b"cat").astype("S3")
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f["X"] = X[:5]  # no labels: predict only
    run = lambda *a: subprocess.run([str(BIN), *map(str, a)], capture_output=True, text=True, timeout=300)  # noqa: E731
    res = run("train", tmp_path / "d.h5", "--checkpoint-dir", tmp_path / "r", "--epochs", "20", "--quiet")
    assert res.returncode == 0, res.stderr
    res = run("evaluate", tmp_path / "r", tmp_path / "d.h5")
    assert res.returncode == 0 and "cat" in res.stdout and "dog" in res.stdout, res.stderr
    assert float(res.stdout.split("accuracy")[1].split()[0]) > 0.95
    res = run("predict", tmp_path / "r", tmp_path / "new.h5", "--out", tmp_path / "p.csv")
    assert res.returncode == 0, res.stderr
    pred = pd.read_csv(tmp_path / "p.csv")["prediction"]
    assert list(pred) == ["dog" if a + b > 0 else "cat" for a, b in X[:5, :2]]


def test_many_hdf5_files_share_one_encoding_learned_over_all(tmp_path):
    rng = np.random.default_rng(5)
    for k in range(3):
        df = pd.DataFrame({"x": rng.normal(size=300), "n": rng.integers(0, 5, 300),
                           "c": rng.choice(["a", "b"] + (["late"] if k == 2 else []), 300),
                           "y": rng.choice(["p", "q"], 300)})
        df.to_hdf(tmp_path / f"part{k}.h5", key="df", format="table")
    ds = open_dataset(str(tmp_path / "part*.h5"), label="y")
    assert "c=late" in ds.feature_names  # a value only the last file holds
    assert ds.encoding.rows == 900  # (each file counted once, however often the pass asks for the chunks)
    assert ds.reopen["options"]["encoding"] == ds.encoding.state_dict()  # workers apply it, never learn again
    X, _ = _rows(ds)
    late = X[:, ds.feature_names.index("c=late")]
    assert late[:600].sum() == 0 and late[600:].sum() == (pd.read_hdf(tmp_path / "part2.h5")["c"] == "late").sum()


def test_encoding_settings_reach_hdf5_tables(tmp_path):
    _frame(600).to_hdf(tmp_path / "f.h5", key="f", format="table", data_columns=True)
    ds = open_dataset(tmp_path / "f.h5", label="status", encode={
        "overrides": {"hash": {"carrier": 8}, "categorical": ["weather"]}, "max_categories": 2})
    assert [n for n in ds.feature_names if n.startswith("carrier")] == \
        ["carrier=<missing>", *[f"carrier=#{k}" for k in range(8)]]
    assert [n for n in ds.feature_names if n.startswith("weather")] == \
        ["weather=<missing>", "weather=<other>", "weather=clear", "weather=rain"]  # the 2 most frequent


def test_arrow_conversions_keep_what_the_writer_meant():
    assert to_arrow(np.array([b"a", b"nan", b"b"]), Spec("string", nan_rep="nan")).to_pylist() == ["a", None, "b"]
    assert to_arrow(np.array([1, -1, 0], np.int8), Spec("category", categories=("x", "y"))).to_pylist() == \
        ["y", None, "x"]
    stamps = to_arrow(np.array([0, 90, np.iinfo(np.int64).min]), Spec("datetime", unit="s"))
    assert [str(v) if v else v for v in stamps.to_pylist()] == ["1970-01-01 00:00:00", "1970-01-01 00:01:30", None]
    spec = cf_time({"units": "hours since 2024-01-01 06:00:00", "calendar": "proleptic_gregorian"})
    assert str(to_arrow(np.array([0, 30]), spec).to_pylist()[1]) == "2024-01-02 12:00:00"
    assert cf_time({"units": "days since 2024-01-01", "calendar": "noleap"}) is None  # not our calendar: numbers
    assert cf_time({"units": "metres"}) is None
    assert to_arrow(np.array([1.5, np.nan]), Spec()).to_pylist() == [1.5, None]


@pytest.mark.parametrize("store", ["h5", "zarr"])
def test_nan_in_an_all_numeric_table_is_named_and_the_advice_imputes_it(store, tmp_path):
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 50, "b": np.arange(200.0), "y": [0, 1] * 100})
    if store == "h5":
        path = tmp_path / "t.h5"
        df.to_hdf(path, key="t", format="table", data_columns=True)
    else:
        import xarray as xr

        path = tmp_path / "t.zarr"
        xr.Dataset.from_dataframe(df).to_zarr(path, zarr_format=3, consolidated=False)
    run = lambda *a: subprocess.run([str(BIN), "train", str(path), "--epochs", "1", "--quiet", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    res = run()
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().endswith("NaN or Inf in row 1, column 'a'; clean the data or skip such rows "
                                       "(--skip-nonfinite, nonfinite='skip'), or treat NaN as missing (imputed, "
                                       "with an indicator): --numeric a")
    res = run("--numeric", "a", "--checkpoint-dir", str(tmp_path / "r"))  # the advice, followed
    assert res.returncode == 0, res.stderr
    _, _, meta = latest_checkpoint(tmp_path / "r", schema=TRAINER)
    assert "a:missing" in meta["model"]["feature_names"]


@pytest.mark.parametrize("data_columns", [True, None])
def test_a_pandas_table_keeps_its_timestamps_time_zone_as_parquet_does(tmp_path, data_columns):
    # (pandas keeps the zone only in a pickled attribute beside the table: read from its opcodes,
    # never unpickled; the hour is the zone's, as from the same frame written as Parquet)
    rng = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame({"t": pd.Timestamp("2024-03-01", tz="Asia/Kolkata") + pd.to_timedelta(rng.integers(0, 10**6, n),
                                                                                             unit="s"),
                       "x": rng.normal(size=n), "y": rng.choice(["p", "q"], n)})
    df.to_hdf(tmp_path / "t.h5", key="df", format="table", data_columns=data_columns)
    df.to_parquet(tmp_path / "t.parquet")
    opts = {"encode": {"date_parts": {"t": ["hour"]}}}
    h5, pq_ = (open_dataset(tmp_path / f, label="y", **opts) for f in ("t.h5", "t.parquet"))
    assert h5.feature_names == pq_.feature_names and "t.hour=5" in h5.feature_names
    np.testing.assert_array_equal(_rows(h5)[0], _rows(pq_)[0])
    assert "in Asia/Kolkata" in h5.encoding.describe()["t"]


def test_the_plain_pickle_reader_reads_plain_values_and_nothing_else():
    import pickle

    from streamtrain.readers.hdf5_nodes import plain_pickle

    value = {1: {"names": [None], "type": "Index"}, "t": {"tz": "UTC"}, "n": [1, 2.5, -3, 10**30, True, ("a", "b")]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert plain_pickle(pickle.dumps(value, protocol=protocol)) == value
    assert plain_pickle(pickle.dumps(complex(1, 2))) is None  # (a call: never made)
    assert plain_pickle(b"cos\nsystem\n(S'touch /tmp/x'\ntR.") is None
    assert plain_pickle(b"(dp0\nVt\np1\n") is None and plain_pickle(b"") is None and plain_pickle(None) is None


def test_many_hdf5_files_of_plain_numbers_carry_the_first_file_s_identifier_note(tmp_path):
    for k in range(2):
        pd.DataFrame({"row_id": np.arange(300) + 300 * k, "x": np.random.default_rng(k).normal(size=300),
                      "y": np.arange(300) % 2}).to_hdf(tmp_path / f"m{k}.h5", key="df", format="table")
    ds = open_dataset(str(tmp_path / "m*.h5"), label="y")
    assert ds.encoding is None and [name for name, _ in ds.notes] == ["row_id"]
    assert "distinct and increasing" in ds.notes[0][1]
