"""The network against central-difference gradients, and the numerically delicate spots."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from streamtrain.nn.functions import ACTIVATIONS, TASKS, init_weights, sigmoid, softmax
from streamtrain.nn.network import TwoLayerNet
from streamtrain.nn.optim import make_optimizer


def _data(task, rng, n=7, d=4):
    X = rng.standard_normal((n, d))
    if task == "binary":
        return X, rng.integers(0, 2, n), 1
    if task == "multiclass":
        return X, rng.integers(0, 3, n), 3
    return X, rng.standard_normal(n), 1


@pytest.mark.parametrize("activation,task,reg", list(itertools.product(
    ACTIVATIONS, TASKS, [(0.0, 0.0), (0.0, 0.1), (0.05, 0.0), (0.05, 0.1)])))
def test_gradients_match_central_differences(activation, task, reg):
    rng = np.random.default_rng(0)
    X, y, n_out = _data(task, rng)
    net = TwoLayerNet(4, 5, n_out, activation, task, "glorot", seed=1, dtype=np.float64)
    l1, l2 = reg
    _, _, grads = net.loss_and_grads(X, y, l1, l2)
    eps = 1e-6
    for name, p in net.params.items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = sum(net.loss_and_grads(X, y, l1, l2)[:2])
            p[idx] = old - eps
            down = sum(net.loss_and_grads(X, y, l1, l2)[:2])
            p[idx] = old
            num[idx] = (up - down) / (2 * eps)
        rel = np.linalg.norm(num - grads[name]) / max(np.linalg.norm(num) + np.linalg.norm(grads[name]), 1e-12)
        assert rel < 1e-6, (name, rel)


def test_no_overflow_warnings_on_extreme_inputs():
    z = np.array([[-1e4, 0.0, 1e4]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sigmoid(z).tolist() == [[0.0, 0.5, 1.0]]
        np.testing.assert_allclose(softmax(z), [[0, 0, 1]])
        loss, _ = TASKS["binary"].loss_delta(np.array([[1e4], [-1e4]], np.float32), np.array([0, 1]))
        assert np.isfinite(loss) and loss == pytest.approx(1e4)


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("init", ["normal", "glorot", "he"])
def test_weights_drawn_by_blocks_are_one_draw_of_the_whole(init, ahead, monkeypatch):
    # (a table of millions of rows is drawn a block at a time, straight into its dtype: the
    # values are those of one draw in float64, cast, as before, so a seed keeps its model;
    # ahead: a thread maps the blocks' pages meanwhile, writing zeros where the draw has not been)
    import streamtrain.nn.functions as functions

    monkeypatch.setattr(functions, "AHEAD_BYTES", 1 if ahead else 1 << 62)
    if ahead:  # (that thread's zeros slowed, so the draw meets it on a block and overtakes it)
        touch = functions.PagesAhead.__init__.__globals__["touch_pages"]
        monkeypatch.setitem(functions.PagesAhead.__init__.__globals__, "touch_pages",
                            lambda a: (__import__("time").sleep(0.01), touch(a)))
    n, h = (1 << 20) // 64 * 7 + 5, 64  # seven blocks and a part
    rng = np.random.default_rng([3, 0x1417])
    if init == "glorot":
        limit = np.sqrt(6.0 / (n + h)) * 4.0
        whole = rng.uniform(-limit, limit, size=(n, h))
    else:
        whole = rng.normal(0.0, 0.1 if init == "normal" else np.sqrt(2.0 / n), size=(n, h))
    after = rng.random()
    rng = np.random.default_rng([3, 0x1417])
    drawn = init_weights(init, rng, n, h, "sigmoid", np.float32)
    assert drawn.dtype == np.float32 and np.array_equal(drawn, whole.astype(np.float32))
    assert rng.random() == after  # the generator is left where one draw leaves it


def test_float32_by_default_and_seeded():
    a, b = TwoLayerNet(3, 4, 1, seed=7), TwoLayerNet(3, 4, 1, seed=7)
    assert a.params["W1"].dtype == np.float32
    np.testing.assert_array_equal(a.params["W1"], b.params["W1"])
    assert not np.array_equal(a.params["W1"], TwoLayerNet(3, 4, 1, seed=8).params["W1"])


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_optimisers_minimise_a_quadratic_and_round_trip_their_state(name):
    params = {"w": np.array([3.0, -2.0])}
    opt = make_optimizer(name, lr=0.05)
    for _ in range(500):
        opt.step(params, {"w": 2 * params["w"]})
    assert np.abs(params["w"]).max() < 1e-2
    twin = make_optimizer(name, lr=0.05)
    twin.load_state_dict(opt.state_dict())
    p1, p2 = {"w": params["w"].copy()}, {"w": params["w"].copy()}
    opt.step(p1, {"w": np.array([1.0, 1.0])})
    twin.step(p2, {"w": np.array([1.0, 1.0])})
    np.testing.assert_array_equal(p1["w"], p2["w"])
