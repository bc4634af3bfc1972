"""The training options users look for: learning-rate schedules (exact on resume), class weights, a
per-row weight column and sample weights, progressive training accuracy, early stopping on a
chosen metric with min_delta."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamtrain import ConfigError, TrainConfig, Trainer
from streamtrain.nn import minibatch, online
from streamtrain.nn.network import TwoLayerNet
from streamtrain.nn.schedules import rates
from streamtrain.train.hooks import Hook

BIN = Path(sys.executable).with_name("streamtrain")


def _data(rows=600, seed=0, features=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0.3).astype(int)


class StopAt(Hook):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, t, rows, loss):
        if t.global_step >= self.step:
            t.stop("test")


# -- schedules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,settings,expected", [
    ("constant", {}, [0.2, 0.2, 0.2, 0.2]),
    ("invscaling", {"power_t": 0.5}, [0.2, 0.2 / 2**0.5, 0.2 / 3**0.5, 0.1]),  # scikit-learn's lr / t^power_t
    ("step", {"lr_step": 2, "lr_gamma": 0.5}, [0.2, 0.2, 0.1, 0.1]),
    ("exponential", {"lr_step": 2, "lr_gamma": 0.25}, [0.2, 0.1, 0.05, 0.025]),
    ("cosine", {"lr_min": 0.0}, [0.2, 0.1 * (1 + np.cos(np.pi / 4)), 0.1, 0.1 * (1 + np.cos(3 * np.pi / 4))]),
])
def test_schedules_give_the_documented_rates(schedule, settings, expected):
    cfg = TrainConfig(lr=0.2, lr_schedule=schedule, **settings)
    np.testing.assert_allclose(rates(cfg, np.arange(4), 4), expected, rtol=1e-12)
    warm = TrainConfig(lr=0.2, lr_schedule=schedule, warmup=4, **settings)
    np.testing.assert_allclose(rates(warm, np.arange(4), 4), np.array(expected) * [0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("schedule", [dict(lr_schedule="invscaling", power_t=0.3),
                                      dict(lr_schedule="cosine", warmup=30),
                                      dict(lr_schedule="step", lr_step=40, lr_gamma=0.5, optimizer="adam")])
def test_a_scheduled_run_resumes_bitwise(tmp_path, batch, schedule):
    cfg = TrainConfig(hidden=4, epochs=3, batch_size=batch, lr=0.05, **schedule)
    ref = Trainer(cfg)
    ref.fit(_data(), checkpoint_dir=tmp_path / "ref", log=None)
    Trainer(cfg).fit(_data(), checkpoint_dir=tmp_path / "run", callbacks=[StopAt(57 if batch == 1 else 41)], log=None)
    again = Trainer(cfg)
    again.fit(_data(), checkpoint_dir=tmp_path / "run", resume=True, log=None)
    for k in ref.net.params:
        np.testing.assert_array_equal(again.net.params[k], ref.net.params[k])


def test_the_schedule_is_applied_at_batch_size_1_row_by_row():
    # A run with invscaling equals, step for step, plain SGD with each row's rate applied by hand.
    X, y = _data(rows=50)
    cfg = TrainConfig(hidden=3, epochs=1, batch_size=1, lr=0.3, lr_schedule="invscaling", power_t=0.7,
                      shuffle="none", scale="none", task="binary", dtype="float64", activation="sigmoid")
    t = Trainer(cfg)
    t.fit((X, y), log=None)
    assert t.stepper.blocks
    net = TwoLayerNet(5, 3, 1, seed=0, dtype="float64")
    for i in range(50):
        online.sgd_online(net.params, X[i:i + 1].astype(np.float64), y[i:i + 1], 0.3 / (i + 1) ** 0.7, 0, 0,
                          "sigmoid", "binary")
    for k in net.params:
        np.testing.assert_allclose(t.net.params[k], net.params[k], rtol=1e-12)


def test_settings_of_another_schedule_are_refused():
    with pytest.raises(ConfigError, match="power_t: does nothing with lr_schedule 'step'"):
        TrainConfig(lr_schedule="step", power_t=0.2)


# -- weights -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_weighted_gradients_compiled_equal_numpy(task, dtype, atol):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 6)).astype(dtype)
    y = {"binary": rng.integers(0, 2, 40), "multiclass": rng.integers(0, 3, 40),
         "regression": rng.standard_normal((40, 1)).astype(dtype)}[task]
    w = rng.uniform(0, 3, 40).astype(dtype)
    net = TwoLayerNet(6, 5, {"binary": 1, "multiclass": 3, "regression": 1}[task], "tanh", task, seed=2, dtype=dtype)
    loss, penalty, want = net.loss_and_grads(X, y, 0.01, 0.02, weights=w)
    total, correct, got = minibatch.loss_and_grads(net.params, X, y, 0.01, 0.02, "tanh", task, weights=w)
    assert total == pytest.approx(loss + penalty, rel=10 * atol, abs=atol) and correct == net.last_correct
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=atol)


def test_weights_of_one_change_nothing_and_a_weight_column_trains(tmp_path):
    X, y = _data()
    plain = Trainer(hidden=4, epochs=2, shuffle="none")
    plain.fit((X, y), log=None)
    ones = Trainer(hidden=4, epochs=2, shuffle="none")
    ones.fit((X, y), weight=np.ones(len(X)), log=None)
    for k in plain.net.params:
        np.testing.assert_allclose(ones.net.params[k], plain.net.params[k], rtol=1e-6, atol=1e-7)
    assert ones.net.n_in == 5 and ones.model.weight == "sample_weight"
    w = np.where(y == 1, 5.0, 1.0)  # the positives count five times
    pd.DataFrame({**{f"x{j}": X[:, j] for j in range(5)}, "w": w, "y": y}).to_parquet(tmp_path / "w.parquet")
    res = subprocess.run([str(BIN), "train", str(tmp_path / "w.parquet"), "--weight", "w", "--epochs", "3",
                          "--checkpoint-dir", str(tmp_path / "ck")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    weighted = Trainer.load(tmp_path / "ck")
    assert weighted.model.feature_names == [f"x{j}" for j in range(5)]  # the weight is not a feature
    unweighted = Trainer(hidden=64, epochs=3)
    unweighted.fit(tmp_path / "w.parquet", features=[f"x{j}" for j in range(5)], log=None)
    # weighing the positives up predicts more positives, on the same rows, without the weight column
    frame = pd.DataFrame({f"x{j}": X[:, j] for j in range(5)})
    assert weighted.predict(frame).mean() > unweighted.predict(frame).mean()


def test_a_weight_column_needs_one_column_per_feature(tmp_path):
    from streamtrain import DataError, make_data

    make_data(tmp_path / "m.h5", rows=100, features=3)
    with pytest.raises(DataError, match="a weight column goes with one column per feature"):
        Trainer(hidden=3, epochs=1).fit(tmp_path / "m.h5", weight="y", log=None)


@pytest.mark.parametrize("spec", ["balanced", "0=1,1=9"])
def test_class_weights_favour_the_rare_class(spec):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 4)).astype(np.float32)
    y = (X[:, 0] > 1.3).astype(int)  # ~10% positives
    base = Trainer(hidden=8, epochs=3, seed=1)
    base.fit((X, y), log=None)
    weighted = Trainer(hidden=8, epochs=3, seed=1, class_weight=spec)
    weighted.fit((X, y), log=None)
    if spec == "balanced":
        n1 = y.sum()
        np.testing.assert_allclose(weighted.model.class_weights, [3000 / (2 * (3000 - n1)), 3000 / (2 * n1)])
    else:
        assert weighted.model.class_weights == [1.0, 9.0]
    recall = lambda t: (t.predict(X)[y == 1] == 1).mean()  # noqa: E731
    assert recall(weighted) > recall(base) + 0.05


def test_class_weights_are_refused_for_a_regression_and_for_unknown_classes():
    from streamtrain import DataError

    X, y = _data()
    with pytest.raises(DataError, match="not one of the classes"):
        Trainer(hidden=3, epochs=1, class_weight="7=2").fit((X, y), log=None)
    with pytest.raises(DataError, match="class_weight applies to classification"):
        Trainer(hidden=3, epochs=1, class_weight="balanced", task="regression").fit((X, X[:, 0]), log=None)


def test_sample_weights_in_partial_fit_and_the_estimator():
    from streamtrain import StreamClassifier

    X, y = _data()
    a = Trainer(hidden=4, batch_size=32, optimizer="sgd").partial_fit(X, y, classes=[0, 1],
                                                                      sample_weight=np.full(len(X), 2.0))
    b = Trainer(hidden=4, batch_size=32, optimizer="sgd", lr=0.2).partial_fit(X, y, classes=[0, 1])
    for k in a.net.params:  # weights of 2 double every gradient: as a doubled learning rate
        np.testing.assert_allclose(a.net.params[k], b.net.params[k], rtol=1e-5, atol=1e-6)
    clf = StreamClassifier(hidden=4, epochs=2).fit(X, y, sample_weight=np.where(y == 1, 3.0, 1.0))
    assert clf.predict(X).shape == (len(X),)


# -- progressive accuracy, early stopping's metric ----------------------------------------------------
@pytest.mark.parametrize("batch", [1, 32])
def test_training_accuracy_scores_each_batch_before_its_update(batch):
    X, y = _data()
    # (sigmoid: a ReLU network's logit can be within float32's rounding of 0, where the
    # probability predict thresholds is exactly 0.5)
    t = Trainer(hidden=4, epochs=1, batch_size=batch, lr=1e-12, activation="sigmoid")  # the model does not change
    history = t.fit((X, y), log=None)
    assert history[0]["train_accuracy"] == pytest.approx((t.predict(X) == y).mean())


def test_early_stopping_on_a_chosen_metric_with_min_delta():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20))
    y = rng.integers(0, 2, 300)
    strict = Trainer(hidden=64, epochs=200, lr=0.5, val_fraction=0.3, early_stopping=2,
                     early_stopping_metric="val_accuracy", min_delta=0.5)  # nothing beats the first by 0.5
    history = strict.fit((X, y), log=None)
    assert len(history) == 3 and strict.state.restored_best == 1
    train = Trainer(hidden=8, epochs=200, early_stopping=3, early_stopping_metric="train_loss", min_delta=0.05)
    assert len(train.fit(_data(), log=None)) < 200  # no validation needed for a training metric
    with pytest.raises(ConfigError, match="a regression run has no val_accuracy"):
        Trainer(hidden=3, epochs=2, task="regression", val_fraction=0.2, early_stopping=2,
                early_stopping_metric="val_accuracy").fit((X, X[:, 0]), log=None)


def test_partial_fit_at_batch_size_1_runs_the_compiled_per_sample_loop(monkeypatch):
    X, y = _data(rows=200)
    calls = []
    real = online.sgd_online
    monkeypatch.setattr(online, "sgd_online", lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
    t = Trainer(hidden=4, batch_size=1).partial_fit(X, y, classes=[0, 1])
    assert t.stepper.blocks and calls == [200] and t.global_step == 200  # one compiled call, 200 updates
