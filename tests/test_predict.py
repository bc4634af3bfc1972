"""Prediction in production: unlabelled data, one model across layouts (files written by h5py,
zarr, pandas), hive partition columns, and errors that say how to select the features."""

from __future__ import annotations

import json
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


def test_inspect_lists_an_encoded_table_s_hive_partition_key_with_why_it_is_left_out(tmp_path):
    # (train's warning named it; inspect's columns, of a table with strings, did not)
    for part in (1, 2):
        (tmp_path / "h" / f"country={part}").mkdir(parents=True)
        pd.DataFrame({"a": np.arange(40.0), "city": ["x", "y"] * 20, "y": np.arange(40) % 2}).to_parquet(
            tmp_path / "h" / f"country={part}" / "f.parquet")
    res = _cli("inspect", tmp_path / "h", "--label", "y", "--json")
    assert res.exit_code == 0, res.output
    columns = json.loads(res.output)["columns"]
    assert columns["country"] == "left out: a hive partition key: used only when named in --features"
    assert "city" in columns and "a" in columns


LABEL_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "float32",
                "float64"]


def _run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


def _cli(*args):
    from click.testing import CliRunner

    from streamtrain.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("dtype, classes", [(d, k) for d in LABEL_DTYPES for k in (2, 3) if (d, k) != ("bool", 3)])
def test_train_evaluate_and_predict_take_labels_of_every_width(dtype, classes, tmp_path):
    """Every metric and every encoding of labels computes in a wide type: an int8 label once
    overflowed evaluate's ROC AUC bins (target * 65536)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 4)).astype(np.float32)
    raw = np.digitize(X[:, 0] + 0.3 * X[:, 1], [0.0] if classes == 2 else [-0.5, 0.5])
    # 0/1 (class indices as stored), and -1/1 for two widths (looked up in the classes' table)
    values = np.array([-1, 1] if classes == 2 and dtype in ("int16", "int64") else range(classes))
    y = values[raw].astype(dtype)
    for name, opts in (("plain", {}), ("gzip", {"compression": "gzip", "chunks": (500,)})):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["X"] = X
            f.create_dataset("y", data=y, **opts)
    res = _cli("train", tmp_path / "gzip.h5", "--epochs", 5, "--hidden", 8, "--checkpoint-dir", tmp_path / "run")
    assert res.exit_code == 0, res.output
    for name in ("plain", "gzip"):
        res = _cli("evaluate", tmp_path / "run", tmp_path / f"{name}.h5", "--json")
        assert res.exit_code == 0, res.output
        result = json.loads(res.output)
        assert result["n"] == 3000 and result["accuracy"] > 0.85
        assert sum(result["support"]) == 3000 and sum(map(sum, result["confusion_matrix"])) == 3000
        if classes == 2:
            assert result["roc_auc"] > 0.9
    res = _cli("predict", tmp_path / "run", tmp_path / "plain.h5", "--out", tmp_path / "p.parquet")
    assert res.exit_code == 0, res.output
    pred = pd.read_parquet(tmp_path / "p.parquet")["prediction"].to_numpy()
    assert set(np.unique(pred).tolist()) <= set(np.unique(y).tolist())  # the label's own values
    assert (pred == y).mean() > 0.85


def test_a_file_with_other_column_names_is_used_when_the_user_names_its_columns(tmp_path):
    """The refusal's advice works when followed: --features naming the columns (a glob, or one by one)
    takes them as the model's features, in order, and says so in one line."""
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer(as_frame=True)
    frame = b.frame.rename(columns={"target": "y"})
    frame.to_parquet(tmp_path / "named.parquet")
    renamed = pd.DataFrame(b.data.to_numpy(), columns=[f"c{j}" for j in range(30)])
    renamed["y"] = b.target.to_numpy()
    renamed.to_parquet(tmp_path / "c.parquet")
    res = _run("train", tmp_path / "named.parquet", "--epochs", 3, "--checkpoint-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    refused = _run("evaluate", tmp_path / "run", tmp_path / "c.parquet")
    assert refused.returncode == 2
    assert "select them with --features 'c*'" in refused.stderr, refused.stderr
    expected = json.loads(_run("evaluate", tmp_path / "run", tmp_path / "named.parquet", "--json").stdout)
    for selection in (["--features", "c*"], [a for j in range(30) for a in ("--features", f"c{j}")]):
        res = _run("evaluate", tmp_path / "run", tmp_path / "c.parquet", *selection, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["accuracy"] == expected["accuracy"]
        said = [line for line in res.stderr.splitlines() if "taken as the model's features" in line]
        assert len(said) == 1 and "'c0' ... 'c29' (30)" in said[0] and "'mean radius'" in said[0]
        res = _run("predict", tmp_path / "run", tmp_path / "c.parquet", *selection, "--out",
                   tmp_path / f"p{len(selection)}.csv")
        assert res.returncode == 0, res.stderr
    # a selection of the wrong number of columns is still refused
    res = _run("evaluate", tmp_path / "run", tmp_path / "c.parquet", "--features", "c1*")
    assert res.returncode == 2 and "features" in res.stderr


def test_another_file_of_the_same_layout_with_other_feature_names_is_refused(tmp_path):
    """The model's own selection ("X") opening another file is not the user's statement that its
    columns are the model's: names that differ are refused, not mapped."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 2)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    for name, names, cols in (("a.h5", ["a", "b"], X), ("b.h5", ["b", "a"], X[:, ::-1])):
        with h5py.File(tmp_path / name, "w") as f:
            f["X"], f["y"] = cols, y
            f["X"].attrs["feature_names"] = names
    t = Trainer(hidden=3, epochs=2)
    t.fit(tmp_path / "a.h5", log=None)
    with pytest.raises(DataError, match=r"b.h5: feature names differ from the model's \('b' vs 'a'\)"):
        t.evaluate(tmp_path / "b.h5")
    # naming them is the user's statement: then they are taken in order
    assert t.evaluate(open_dataset(tmp_path / "b.h5", "X"))["n"] == 300


def test_a_matrix_named_by_its_attribute_with_a_text_label_is_predicted_and_evaluated(tmp_path):
    # (training took the attribute's names as its selection, which reopens no HDF5 matrix: predict,
    # evaluate and report then refused the very file trained on)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1500, 5)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(500, 5))
        f["X"].attrs["feature_names"] = ["weight", "height", "age", "speed", "noise"]
        f["y"] = np.array([b"cat", b"dog", b"bird"])[np.digitize(X[:, 0], [-0.5, 0.5])]
    res = _cli("train", tmp_path / "a.h5", "--epochs", 3, "--checkpoint-dir", tmp_path / "run")
    assert res.exit_code == 0, res.output
    res = _cli("predict", tmp_path / "run", tmp_path / "a.h5", "--out", tmp_path / "p.parquet")
    assert res.exit_code == 0, res.output
    pred = pd.read_parquet(tmp_path / "p.parquet")["prediction"]
    assert set(pred) <= {"cat", "dog", "bird"} and len(pred) == 1500
    res = _cli("evaluate", tmp_path / "run", tmp_path / "a.h5", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["classes"] == ["bird", "cat", "dog"] and result["n"] == 1500
    assert pd.Series(pred).value_counts().reindex(["bird", "cat", "dog"], fill_value=0).tolist() == \
        np.array(result["confusion_matrix"]).sum(axis=0).tolist()  # (predictions per class: the matrix's columns)
    res = _cli("report", tmp_path / "run", tmp_path / "a.h5", "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.output
