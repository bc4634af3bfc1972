"""Prediction in production: unlabelled data, one model across layouts (files written by h5py,
zarr, pandas), hive partition columns, and errors that say how to select the features."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import zarr

from streamtrain import DataError, Trainer, open_dataset

BIN = Path(sys.executable).with_name("streamtrain")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on an HDF5 2-D X (generic feature names), and the same rows in other layouts."""
    d = tmp_path_factory.mktemp("layouts")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 4)).astype(np.float32)
    y = (X[:, 0] - X[:, 2] > 0).astype(np.int32)
    with h5py.File(d / "train.h5", "w") as f:
        f["X"], f["y"] = X, y
    with h5py.File(d / "nested.h5", "w") as f:
        f["train/X"], f["train/y"] = X, y
    g = zarr.open_group(d / "matrix.zarr", mode="w")
    g["X"] = X
    pd.DataFrame({f"f{j}": X[:, j] for j in range(4)}).to_parquet(d / "features.parquet")
    pd.DataFrame({**{f"s{j}": X[:, j] for j in range(4)}, "y": y}).to_parquet(d / "renamed.parquet")
    pd.DataFrame({f"s{j}": X[:, j] for j in range(3)}).to_parquet(d / "narrow.parquet")
    t = Trainer(hidden=5, epochs=3)
    t.fit(d / "train.h5", checkpoint_dir=d / "run", log=None)
    return d, t, X, y


@pytest.mark.parametrize("name", ["nested.h5", "matrix.zarr", "features.parquet", "renamed.parquet"])
def test_one_model_predicts_the_same_rows_in_any_layout(trained, name):
    d, t, X, _ = trained
    np.testing.assert_array_equal(t.predict(d / name), t.predict(X))


def test_predict_needs_no_label(trained, tmp_path):
    d, t, X, _ = trained
    frame = pd.DataFrame({f"f{j}": X[:, j] for j in range(4)})  # features only
    np.testing.assert_array_equal(t.predict(frame), t.predict(X))
    res = subprocess.run([str(BIN), "predict", str(d / "run"), str(d / "features.parquet"), "--out",
                          str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["p_0", "p_1", "prediction"] and len(out) == 400
    np.testing.assert_array_equal(out["prediction"].to_numpy(), t.predict(X))


def test_evaluate_finds_the_label_in_another_layout_and_says_when_there_is_none(trained):
    d, t, X, y = trained
    assert t.evaluate(d / "nested.h5")["accuracy"] == t.evaluate(d / "train.h5")["accuracy"]
    with pytest.raises(DataError, match=r"features.parquet: no label to evaluate against \(the model's was 'y'\)"):
        t.evaluate(d / "features.parquet")


def test_a_file_that_cannot_be_matched_names_what_the_model_expects_and_how_to_select(trained):
    d, t, _, _ = trained
    with pytest.raises(DataError) as e:
        t.predict(d / "narrow.parquet")
    msg = str(e.value)
    assert "narrow.parquet: the model expects 4 features (f0, f1, f2, f3)" in msg
    assert "the file has 3 features (s0, s1, s2)" in msg and "--features" in msg


def test_named_features_do_not_match_other_names(tmp_path):
    X = np.random.default_rng(1).standard_normal((200, 3))
    pd.DataFrame({"age": X[:, 0], "income": X[:, 1], "height": X[:, 2], "y": (X[:, 0] > 0).astype(int)}).to_parquet(
        tmp_path / "a.parquet")
    pd.DataFrame({"age": X[:, 0], "weight": X[:, 1], "height": X[:, 2]}).to_parquet(tmp_path / "b.parquet")
    t = Trainer(hidden=3, epochs=1)
    t.fit(tmp_path / "a.parquet", log=None)
    with pytest.raises(DataError, match=r"the model expects 3 features \(age, income, height\)"):
        t.predict(tmp_path / "b.parquet")


def test_hive_partition_columns_are_not_features_unless_named(tmp_path):
    rng = np.random.default_rng(2)
    for part in (1, 2):
        (tmp_path / "h" / f"part={part}").mkdir(parents=True)
        X = rng.standard_normal((50, 2))
        pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": (X[:, 0] > 0).astype(int)}).to_parquet(
            tmp_path / "h" / f"part={part}" / "f.parquet")
    assert open_dataset(tmp_path / "h").feature_names == ["a", "b"]
    assert open_dataset(tmp_path / "h", ["a", "part"]).feature_names == ["a", "part"]
    t = Trainer(hidden=3, epochs=1)
    t.fit(tmp_path / "h", log=None)
    frame = pd.DataFrame({"a": [0.1, -0.2], "b": [0.3, 0.0]})  # no partition column needed to predict
    assert t.predict(frame).shape == (2,)
