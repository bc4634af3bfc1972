"""Nothing the user gave is dropped silently: every column found beside the features and the label
that is not used is named, by `inspect` and by a warning line when training starts."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamtrain import Trainer, open_dataset

BIN = Path(sys.executable).with_name("streamtrain")


def _frame(n=200):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "carat": rng.random(n), "cut": pd.Categorical(rng.choice(["Fair", "Good", "Ideal"], n)),
        "color": rng.choice(list("DEFG"), n), "when": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
        "price": rng.random(n) * 1000, "y": np.arange(n) % 2})


def _unusable(n=200):
    """Columns no encoding can use: a list, raw bytes, an identifier."""
    return _frame(n).assign(tags=[[1, 2]] * n, blob=[b"\x00"] * n, uid=[f"u{i}" for i in range(n)])


def test_inspect_and_train_name_every_column_left_out(tmp_path):
    _unusable().to_parquet(tmp_path / "d.parquet")
    info = json.loads(subprocess.run([str(BIN), "inspect", str(tmp_path / "d.parquet"), "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    assert [n for n in info["feature_names"] if "=" not in n] == ["carat", "when", "price"]
    columns = info["columns"]  # every column, used or not
    assert set(columns) == {"carat", "cut", "color", "when", "price", "y", "tags", "blob", "uid"}
    assert columns["tags"].startswith("left out: list<") and "explode it" in columns["tags"]
    assert columns["blob"].startswith("left out: binary") and "identifier" in columns["uid"]
    assert "categorical" in columns["cut"] and "datetime" in columns["when"]
    assert "--hash with its name hashes it" in columns["uid"]
    # the advice previewed: inspect takes train's column options and shows the plan they make
    planned = json.loads(subprocess.run([str(BIN), "inspect", str(tmp_path / "d.parquet"), "--json", "--hash", "uid:16"],
                                        capture_output=True, text=True, check=True).stdout)
    uid = planned["columns"]["uid"]
    assert uid.startswith("large_string, none missing; hashed") and "16 buckets" in uid
    assert planned["columns"]["tags"] == columns["tags"] and planned["n_features"] == info["n_features"] + 17  # (and a missing input)
    run = tmp_path / "run"
    subprocess.run([str(BIN), "train", str(tmp_path / "d.parquet"), "--epochs", "1", "--checkpoint-dir", str(run),
                    "--quiet"], check=True)
    res = subprocess.run([str(BIN), "inspect", str(run), "--hash", "uid"], capture_output=True, text=True)
    assert res.returncode == 2 and "--hash applies to a dataset" in res.stderr and "Traceback" not in res.stderr
    hashed = subprocess.run([str(BIN), "train", str(tmp_path / "d.parquet"), "--epochs", "1", "--hash", "uid",
                             "--checkpoint-dir", str(tmp_path / "hashed")], capture_output=True, text=True)
    assert hashed.returncode == 0, hashed.stderr  # the advice followed: uid hashed, not left out
    warned = [line for line in hashed.stderr.splitlines() if "left out" in line]
    assert len(warned) == 1 and "2 columns left out" in warned[0] and "uid" not in warned[0], hashed.stderr
    res = subprocess.run([str(BIN), "train", str(tmp_path / "d.parquet"), "--epochs", "1"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "left out" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {tmp_path / 'd.parquet'}: 3 columns left out: tags (")
    assert "blob (binary" in warned[0] and "uid (" in warned[0] and "--features" in warned[0]
    # named features: the user's own choice, nothing to warn about
    res = subprocess.run([str(BIN), "train", str(tmp_path / "d.parquet"), "--epochs", "1", "--features", "carat"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "left out" not in res.stderr


def test_the_library_says_it_too(caplog):
    with caplog.at_level(logging.WARNING, logger="streamtrain"):
        Trainer(hidden=3, epochs=1).fit(_unusable(), log=None)
    assert any("3 columns left out" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("writer", ["polars", "zarr", "pytables", "hive"])
def test_every_format_names_what_it_leaves_out(writer, tmp_path):
    frame = _frame()
    if writer == "polars":
        import polars as pl

        pl.from_pandas(_unusable()).with_columns(pl.col("cut").cast(pl.Categorical)).write_parquet(
            tmp_path / "d.parquet")
        ds, expected = open_dataset(tmp_path / "d.parquet"), {"tags", "blob", "uid"}
    elif writer == "zarr":
        import zarr

        g = zarr.open_group(tmp_path / "d.zarr", mode="w", zarr_format=2)
        for name in ("carat", "price", "y"):
            g[name] = frame[name].to_numpy()
        g.create_array("color", shape=(len(frame),), dtype="<U1")[:] = frame["color"].to_numpy().astype("<U1")
        ds, expected = open_dataset(tmp_path / "d.zarr"), set()  # strings are encoded: nothing left out
    elif writer == "pytables":
        frame[["carat", "color", "price", "y"]].to_hdf(tmp_path / "d.h5", key="t", format="table",
                                                       data_columns=True)
        ds, expected = open_dataset(tmp_path / "d.h5"), set()
    else:
        for part in ("a", "b"):
            (tmp_path / "h" / f"part={part}").mkdir(parents=True)
            frame[["carat", "price", "y"]].to_parquet(tmp_path / "h" / f"part={part}" / "f.parquet")
        ds, expected = open_dataset(tmp_path / "h"), {"part"}
    assert {name for name, _ in ds.left_out} == expected
    if writer in ("zarr", "pytables"):  # the string column is one-hot encoded
        assert {n for n in ds.feature_names if n.startswith("color=")} >= {f"color={c}" for c in frame["color"]}
    info = ds.describe()
    assert (info["left_out"].keys() if "left_out" in info else
            {k for k, v in info["columns"].items() if v.startswith("left out")}) == expected


def test_a_list_option_given_twice_keeps_both_lists(tmp_path):
    # (--hash a --hash b once kept b alone: the first was dropped without a word)
    _unusable().to_parquet(tmp_path / "d.parquet")

    def inspect(*options):
        return json.loads(subprocess.run([str(BIN), "inspect", str(tmp_path / "d.parquet"), "--json", *options],
                                         capture_output=True, text=True, check=True).stdout)["columns"]

    twice = inspect("--hash", "uid:16", "--hash", "color", "--drop", "price", "--drop", "carat")
    assert twice == inspect("--hash", "uid:16,color", "--drop", "price,carat")
    assert "hashed" in twice["uid"] and "hashed" in twice["color"]
    assert twice["price"].startswith("left out") and twice["carat"].startswith("left out")
    (tmp_path / "c.toml").write_text('hash = ["uid:16", "color"]\n')  # (a TOML list, as the option repeated)
    res = subprocess.run([str(BIN), "train", str(tmp_path / "d.parquet"), "--config", str(tmp_path / "c.toml"),
                          "--drop", "price", "--drop", "carat", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # (the columns it dropped are not warned about: the user asked for it; the others are)
    warned = [line for line in res.stderr.splitlines() if "left out" in line]
    assert len(warned) == 1 and "2 columns left out: tags (" in warned[0] and "blob (" in warned[0], res.stderr
    assert "price" not in warned[0] and "carat" not in warned[0]
    trained = json.loads(subprocess.run([str(BIN), "inspect", str(tmp_path / "r"), "--json"], capture_output=True,
                                        text=True, check=True).stdout)["columns"]
    assert "16 buckets" in trained["uid"] and "hashed" in trained["color"]
    assert trained["price"].startswith("left out") and trained["carat"].startswith("left out")
