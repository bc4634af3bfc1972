"""Nothing silent for long: progress of every pass, the statistics pass only where needed, train
--json; and evaluate's metrics against scikit-learn's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtrain import Trainer, make_data

from .conftest import DATA

BIN = Path(sys.executable).with_name("streamtrain")


def _cli(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "d.zarr"
    make_data(path, rows=60_000, features=8, chunk_rows=2000, seed=3)
    return path


def test_every_long_pass_says_what_it_does_off_a_terminal(data, tmp_path):
    # --log-every 0: a line at every chunk, as a long pass would every few seconds
    make = _cli("make-data", tmp_path / "m.h5", "--rows", 30_000, "--features", 4, "--chunk-rows", 5000,
                "--log-every", 0)
    assert make.returncode == 0 and f"writing {tmp_path / 'm.h5'}: 5,000 of 30,000 rows (17%)" in make.stderr
    train = _cli("train", data, "--epochs", 1, "--val-fraction", 0.2, "--log-every", 0, "--checkpoint-dir",
                 tmp_path / "ck")
    assert train.returncode == 0, train.stderr
    err = train.stderr
    assert f"statistics pass over {data} (feature means and variances" in err and "of 47," in err
    assert "validation of epoch 1:" in err
    assert "epoch 1/1: " in err and "train_loss" in err and "samples/s" in err  # lines during the epoch
    ev = _cli("evaluate", tmp_path / "ck", data, "--log-every", 0)
    assert f"evaluating {data}: 2,000 of 60,000 rows" in ev.stderr
    pr = _cli("predict", tmp_path / "ck", data, "--out", tmp_path / "p.parquet", "--log-every", 0)
    assert f"predicting {data}: 60,000 of 60,000 rows (100%)" in pr.stderr


def test_a_short_pass_prints_no_progress(tmp_path):
    res = _cli("train", DATA / "breast_cancer.h5", "--epochs", 2)
    assert res.returncode == 0
    # (the notes: no --checkpoint-dir, so nothing will be saved, and was not)
    assert [line.split()[0] for line in res.stderr.splitlines()] == ["task:", "note:", "epoch", "epoch", "note:"]


def test_without_standard_scaling_the_statistics_pass_reads_only_labels(tmp_path, monkeypatch):
    from streamtrain.readers.zarr import ZarrDataset

    make_data(tmp_path / "z.zarr", rows=3000, features=5, chunk_rows=500)
    read = []
    real = ZarrDataset._load_chunk
    monkeypatch.setattr(ZarrDataset, "_load_chunk", lambda self, i: read.append(i) or real(self, i))
    lines = []
    t = Trainer(hidden=3, epochs=1, scale="none", task="binary", shuffle="none", decoder="thread")
    t.fit(tmp_path / "z.zarr", log=lines.append, log_every=0)
    assert t.classes == [0, 1]
    stamp = [0, 3, 5]  # the resume fingerprint hashes the first, middle and last chunks
    assert read == stamp + list(range(6))  # then the epoch's chunks once: none for the statistics
    assert any(line.startswith(f"reading the labels of {tmp_path / 'z.zarr'} (the classes; --scale none")
               for line in lines)
    read.clear()
    Trainer(hidden=3, epochs=1, scale="standard", shuffle="none", decoder="thread").fit(tmp_path / "z.zarr", log=None)
    assert read == list(range(6)) + stamp + list(range(6))  # the statistics pass, the stamp, the epoch


def test_train_json_writes_one_object_per_epoch(tmp_path):
    res = _cli("train", DATA / "breast_cancer.h5", "--epochs", 3, "--val-fraction", 0.2, "--json", "--quiet")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and all("val_accuracy" in r for r in records)
    assert res.stderr == ""


def test_evaluate_metrics_agree_with_scikit_learn(tmp_path):
    from sklearn.metrics import log_loss, precision_recall_fscore_support, roc_auc_score

    for task, classes in (("binary", 2), ("multiclass", 4)):
        path = tmp_path / f"{task}.parquet"
        make_data(path, rows=3000, features=6, task=task, classes=classes, seed=4, noise=1.0)
        t = Trainer(hidden=8, epochs=2)
        t.fit(path, log=None)
        got = t.evaluate(path)
        y = t.model.open_like_training(path).read(np.arange(3000))[1]
        proba = t.predict_proba(path)
        pred = proba.argmax(axis=1)
        p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
        np.testing.assert_allclose(got["precision"], p)
        np.testing.assert_allclose(got["f1"], f)
        assert got["support"] == s.tolist()
        for avg in ("macro", "weighted"):
            want = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
            assert got[avg]["recall"] == pytest.approx(want[1]) and got[avg]["f1"] == pytest.approx(want[2])
        assert got["log_loss"] == pytest.approx(log_loss(y, proba), rel=1e-4)
        # a class absent from the labels and the predictions is not in the macro average (it was, as 0)
        X = t.model.open_like_training(path).read(np.arange(3000))[0]
        rest = (y != 0) & (pred != 0)
        part = t.evaluate((X[rest], y[rest]))
        assert part["support"][0] == 0 and part["macro"]["f1"] == pytest.approx(
            precision_recall_fscore_support(y[rest], pred[rest], average="macro", zero_division=0)[2])
        if task == "binary":
            assert got["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]), abs=2e-4)
        else:
            assert "roc_auc" not in got


def test_evaluate_says_what_the_regression_loss_is(tmp_path):
    make_data(tmp_path / "r.h5", rows=2000, features=4, task="regression")
    assert _cli("train", tmp_path / "r.h5", "--epochs", 2, "--checkpoint-dir", tmp_path / "ck").returncode == 0
    res = _cli("evaluate", tmp_path / "ck", tmp_path / "r.h5")
    assert "half the squared error" in res.stdout and "mse" in res.stdout


@pytest.mark.slow
def test_the_mlflow_hook_logs_settings_metrics_and_the_final_checkpoint(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for local use
    uri = f"file://{tmp_path / 'mlruns'}"
    res = subprocess.run([str(BIN), "train", str(DATA / "breast_cancer.h5"), "--epochs", "3", "--hidden", "5",
                          "--val-fraction", "0.2", "--checkpoint-dir", str(tmp_path / "run"), "--mlflow", uri],
                         capture_output=True, text=True, env={**__import__("os").environ})
    assert res.returncode == 0, res.stderr
    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("streamtrain").experiment_id])
    assert run.data.params["hidden"] == "5" and run.data.params["data.format"] == "hdf5"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3] and run.info.run_name == "run"
    (art,) = client.list_artifacts(run.info.run_id, "checkpoint")
    assert art.path.endswith(".npz") and run.info.status == "FINISHED"


def test_library_messages_go_through_logging(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="streamtrain"):
        Trainer(hidden=3, epochs=2).fit(DATA / "breast_cancer.h5")  # the default log
    assert any(r.name == "streamtrain" and r.getMessage().startswith("epoch 2/2") for r in caplog.records)
