"""The compiled online loop (batch_size=1, SGD) against the numpy path, and its resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamtrain import TrainConfig, Trainer, make_data
from streamtrain.data import loader as loader_module
from streamtrain.nn import online
from streamtrain.nn.functions import ACTIVATIONS
from streamtrain.nn.network import TwoLayerNet
from streamtrain.nn.optim import SGD

from .conftest import DATA

pytestmark = pytest.mark.skipif(not online.available(), reason="numba not importable")


@pytest.mark.parametrize("activation,task,reg", list(itertools.product(
    ACTIVATIONS, ["binary", "multiclass", "regression"], [(0.0, 0.0), (0.001, 0.01)])))
def test_compiled_loop_equals_numpy_steps_in_float64(activation, task, reg):
    rng = np.random.default_rng(0)
    n_out = 4 if task == "multiclass" else 1
    X = rng.standard_normal((200, 7))
    y = rng.standard_normal(200) if task == "regression" else rng.integers(0, max(2, n_out), 200)
    a = TwoLayerNet(7, 5, n_out, activation, task, "glorot", seed=1, dtype=np.float64)
    b = TwoLayerNet(7, 5, n_out, activation, task, "glorot", seed=1, dtype=np.float64)
    sgd, total = SGD(0.05), 0.0
    for i in range(len(X)):
        loss, penalty, grads = a.loss_and_grads(X[i:i + 1], y[i:i + 1], *reg)
        total += loss + penalty
        sgd.step(a.params, grads)
    compiled_total, _ = online.sgd_online(b.params, X, y, 0.05, reg[0], reg[1], activation, task)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=1e-12)
    assert compiled_total == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("activation,task", list(itertools.product(ACTIVATIONS,
                                                                     ["binary", "multiclass", "regression"])))
def test_compiled_loop_in_float32_follows_the_float64_steps(activation, task):
    # float32 takes the polynomial exponential (sigmoid, and tanh through it): float32 rounding only
    rng = np.random.default_rng(3)
    n_out = 4 if task == "multiclass" else 1
    X = rng.standard_normal((300, 7)) * 3  # pre-activations well into the tails
    y = rng.standard_normal(300) if task == "regression" else rng.integers(0, max(2, n_out), 300)
    a = TwoLayerNet(7, 6, n_out, activation, task, "glorot", seed=1, dtype=np.float64)
    b = TwoLayerNet(7, 6, n_out, activation, task, "glorot", seed=1, dtype=np.float32)
    lr = 0.01 if task == "regression" else 0.05
    sgd, total = SGD(lr), 0.0
    for i in range(len(X)):
        loss, penalty, grads = a.loss_and_grads(X[i:i + 1], y[i:i + 1])
        total += loss + penalty
        sgd.step(a.params, grads)
    compiled_total, _ = online.sgd_online(b.params, X.astype(np.float32), y, lr, 0.0, 0.0, activation, task)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=2e-4)
    assert compiled_total == pytest.approx(total, rel=1e-4)


class _AnyBatchCallback:
    def on_batch_end(self, trainer, rows, loss):  # its presence selects the numpy path
        pass


def test_trainer_online_path_matches_numpy_path_and_learns():
    cfg = TrainConfig(hidden=10, epochs=15, batch_size=1, lr=0.01, val_fraction=0.2)
    fast, slow = Trainer(cfg), Trainer(cfg)
    h_fast = fast.fit(DATA / "breast_cancer.h5", log=None)
    h_slow = slow.fit(DATA / "breast_cancer.h5", log=None, callbacks=[_AnyBatchCallback()])
    for k in fast.net.params:
        np.testing.assert_allclose(fast.net.params[k], slow.net.params[k], atol=1e-4)
    assert h_fast[-1]["train_loss"] == pytest.approx(h_slow[-1]["train_loss"], rel=1e-4)
    # batch_size=1 reaches the minibatch recipe's accuracy on breast cancer
    mini = Trainer(TrainConfig(hidden=10, epochs=60, batch_size=32, lr=0.1, l2=0.01, val_fraction=0.2))
    h_mini = mini.fit(DATA / "breast_cancer.h5", log=None)
    assert h_fast[-1]["val_accuracy"] >= h_mini[-1]["val_accuracy"] - 0.01


def test_online_run_stopped_and_resumed_is_bitwise_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(loader_module, "GROUP_ROWS", 50)  # many compiled calls per epoch
    make_data(tmp_path / "d.h5", rows=700, features=6, chunk_rows=64)
    cfg = TrainConfig(hidden=8, epochs=2, batch_size=1, lr=0.02, val_fraction=0.2, shuffle="global")
    ref = Trainer(cfg)
    ref.fit(tmp_path / "d.h5", log=None)
    calls = {"n": 0}
    real = online.sgd_online

    def stop_after_seven(params, *args):
        out = real(params, *args)
        calls["n"] += 1
        if calls["n"] == 7:
            first.stop_requested = "test"
        return out

    monkeypatch.setattr(online, "sgd_online", stop_after_seven)
    first = Trainer(cfg)
    first.fit(tmp_path / "d.h5", checkpoint_dir=tmp_path / "ck", log=None)
    assert 0 < first.global_step < ref.global_step
    monkeypatch.setattr(online, "sgd_online", real)
    second = Trainer(cfg)
    second.fit(tmp_path / "d.h5", checkpoint_dir=tmp_path / "ck", resume=True, log=None)
    for k in ref.net.params:
        np.testing.assert_array_equal(second.net.params[k], ref.net.params[k])
    assert [h["train_loss"] for h in second.history] == [h["train_loss"] for h in ref.history]
