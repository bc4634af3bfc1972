"""``make-data --kind clicks``: a click log like Criteo's, the same rows for the same arguments,
in every format it writes, and trainable with no preprocessing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from streamtrain import open_dataset
from streamtrain.clicks import click_chunk, levels, make_clicks

BIN = Path(sys.executable).with_name("streamtrain")


def test_a_chunk_is_the_same_for_the_same_arguments_and_has_the_shape_of_a_click_log():
    a, b = click_chunk(5000, 0, 5000, 3, 0), click_chunk(5000, 0, 5000, 3, 0)
    assert a.equals(b) and not a.equals(click_chunk(5000, 0, 5000, 4, 0))
    assert a.column_names == ["click", *[f"i{j}" for j in range(1, 14)], *[f"c{j}" for j in range(1, 27)], "time"]
    sizes = levels(10_000_000)
    assert sizes[0] == 100 and sizes[-1] == 10_000_000 and (np.diff(sizes) > 0).all()
    frame = a.to_pandas()
    assert 0.2 < frame["click"].mean() < 0.6
    assert frame["i13"].isna().mean() > 0.3 and frame["i1"].max() > 50 * frame["i1"].median()  # heavy tails
    assert frame["c1"].isna().mean() > 0.1  # (some columns often missing, as Criteo's)
    assert frame["c1"].dropna().str.fullmatch(r"[0-9a-f]{8}").all()
    assert frame["c1"].nunique() <= 100 < frame["c26"].nunique()
    top = frame["c26"].value_counts()
    assert top.iloc[0] > 20 * top.iloc[len(top) // 2]  # Zipf: a few values are most of the rows
    assert frame["time"].is_monotonic_increasing


@pytest.mark.parametrize("name", ["c.parquet", "c.csv.gz", "c.h5"])
def test_every_format_holds_the_same_rows_and_trains(name, tmp_path):
    info = make_clicks(tmp_path / name, rows=3000, chunk_rows=1000, seed=1)
    assert info["chunks"] == 3
    ref = pd.concat([click_chunk(1000, k * 1000, 3000, 1, k).to_pandas() for k in range(3)], ignore_index=True)
    ds = open_dataset(tmp_path / name, label="click")
    assert ds.n_rows == 3000 and ds.left_out == []
    assert {"i1", "i1:missing", "c1=<missing>", "time"} <= set(ds.feature_names)
    y = np.concatenate([ds.read_chunk(i)[1] for i in range(ds.n_chunks)])
    np.testing.assert_array_equal(y, ref["click"].to_numpy())
    res = subprocess.run([str(BIN), "train", str(tmp_path / name), "--label", "click", "--epochs", "1",
                          "--hash-buckets", "2048", "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_the_command_writes_a_click_log_and_refuses_what_does_not_apply(tmp_path):
    res = subprocess.run([str(BIN), "make-data", str(tmp_path / "c.parquet"), "--kind", "clicks", "--rows", "2500",
                          "--chunk-rows", "1000", "--max-levels", "5000"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "2,500 rows of clicks (13 integer, 26 categorical columns of 100 to 5,000 levels), 3 chunks" in res.stdout
    assert pq.ParquetFile(tmp_path / "c.parquet").metadata.num_row_groups == 3
    for args, message in ((["--features", "8"], "--features is for --kind teacher"),
                          ([], "already exists")):
        res = subprocess.run([str(BIN), "make-data", str(tmp_path / "c.parquet"), "--kind", "clicks", "--rows", "10",
                              *args], capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([str(BIN), "make-data", str(tmp_path / "t.h5"), "--rows", "10"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "--features" in res.stderr
