"""The compiled minibatch SGD step against the numpy path, in the trainer and alone."""

from __future__ import annotations

import itertools
import os
import warnings

import numpy as np
import pytest

from streamtrain import TrainConfig, Trainer
from streamtrain.nn import minibatch
from streamtrain.nn.functions import ACTIVATIONS
from streamtrain.nn.network import TwoLayerNet
from streamtrain.nn.optim import SGD

from .conftest import DATA

pytestmark = pytest.mark.skipif(not minibatch.available(), reason="numba or scipy not importable")

CASES = list(itertools.product(ACTIVATIONS, ["binary", "multiclass", "regression"], [(0.0, 0.0), (0.001, 0.01)]))


def _pair(activation, task, dtype, seed=1, hidden=5):
    n_out = 4 if task == "multiclass" else 1
    return [TwoLayerNet(7, hidden, n_out, activation, task, "glorot", seed=seed, dtype=dtype) for _ in range(2)]


# 5 hidden units: the layer whole; 16: its columns in two halves (minibatch.split), on one lane or two
WIDTHS = [5, 16]


def _data(task, rows=230, dtype=np.float64):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 7)).astype(dtype)
    y = rng.standard_normal(rows) if task == "regression" else rng.integers(0, 4 if task == "multiclass" else 2, rows)
    return X, y


@pytest.mark.parametrize("hidden", WIDTHS)
@pytest.mark.parametrize("block", [512, 10])  # 10: each batch in blocks of rows, the last one short
@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("activation,task,reg", CASES)
def test_compiled_step_equals_numpy_step(activation, task, reg, dtype, atol, block, hidden, monkeypatch):
    monkeypatch.setattr(minibatch, "BLOCK_ROWS", block)
    X, y = _data(task, dtype=dtype)
    a, b = _pair(activation, task, dtype, hidden=hidden)
    sgd = SGD(0.05)
    for s in range(0, len(X), 32):  # 230 rows: the last batch has 6
        loss, penalty, grads = a.loss_and_grads(X[s:s + 32], y[s:s + 32], *reg)
        sgd.step(a.params, grads)
        total, _ = minibatch.sgd_step(b.params, X[s:s + 32], y[s:s + 32], 0.05, *reg, activation, task)
        assert total == pytest.approx(loss + penalty, rel=10 * atol, abs=atol)
    for k in a.params:
        assert b.params[k].dtype == dtype
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=atol)


def test_float32_sigmoid_is_within_2_5_ulp_and_never_subnormal():
    z = np.concatenate([np.linspace(-120, 120, 200_001), [-80, 80, -1e30, 1e30]]).astype(np.float32)
    out = z.reshape(-1, 1).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minibatch._get("_sgd")  # binds the compiled helpers
        minibatch._activate(out, np.zeros(1, np.float32), 0, True)
    from scipy.special import expit

    exact = expit(z.astype(np.float64))
    inside = np.abs(z) <= 80
    ulp = np.spacing(exact[inside].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(out[inside, 0] - exact[inside]) / ulp) <= 2.5
    # beyond +-80 it saturates at sigmoid(+-80): normal floats, no overflow, no subnormal slow path
    assert out.min() == pytest.approx(1.8048513e-35, rel=1e-6) and out.max() == 1.0
    assert np.all((out == 0) | (np.abs(out) >= np.finfo(np.float32).tiny))


@pytest.mark.parametrize("compiled", [True, False])
def test_a_diverging_batch_leaves_the_parameters_alone(compiled):
    X = np.full((8, 7), 1e30, np.float32)
    net = TwoLayerNet(7, 5, 1, "relu", "regression", seed=0)
    before = {k: v.copy() for k, v in net.params.items()}
    if compiled:
        total, _ = minibatch.sgd_step(net.params, X, np.full(8, 1e30), 0.1, 0, 0, "relu", "regression")
    else:
        from types import SimpleNamespace

        from streamtrain.train.update import GradientStep, choose_update

        model = SimpleNamespace(net=net, task="regression")
        step = choose_update(TrainConfig(compiled=False, lr=0.1), model, SGD(0.1))
        assert type(step) is GradientStep
        with np.errstate(over="ignore", invalid="ignore"):  # as the trainer runs its steps
            total = step.update(X, np.full((8, 1), 1e30, np.float32)).loss_sum
    assert not np.isfinite(total)
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k])


def test_load_brings_in_every_blas_the_step_uses():
    # Loader.sharing_cores limits the BLAS libraries loaded when it starts: the step's must be among them.
    from threadpoolctl import threadpool_info

    minibatch.load()
    loaded = {lib["filepath"] for lib in threadpool_info()}
    net = TwoLayerNet(64, 64, 1, seed=0)
    minibatch.sgd_step(net.params, np.ones((256, 64), np.float32), np.ones(256), 0.1, 0, 0, "sigmoid", "binary")
    assert {lib["filepath"] for lib in threadpool_info()} == loaded


def test_trainer_uses_the_compiled_step_and_matches_the_numpy_path():
    runs = {}
    for compiled in (True, False):
        t = Trainer(TrainConfig(hidden=10, epochs=30, batch_size=32, lr=0.1, l2=0.01, val_fraction=0.2,
                                compiled=compiled))
        runs[compiled] = (t, t.fit(DATA / "breast_cancer.h5", log=None))
        assert t.stepper.compiled is compiled
    (fast, h_fast), (slow, h_slow) = runs[True], runs[False]
    for k in fast.net.params:
        np.testing.assert_allclose(fast.net.params[k], slow.net.params[k], atol=1e-4)
    assert h_fast[-1]["train_loss"] == pytest.approx(h_slow[-1]["train_loss"], rel=1e-4)
    assert h_fast[-1]["val_accuracy"] >= 0.97  # the textbook recipe's accuracy


@pytest.mark.parametrize("hidden", WIDTHS)
@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("activation,task,reg", CASES)
def test_compiled_gradients_equal_numpy_gradients(activation, task, reg, dtype, atol, hidden, monkeypatch):
    monkeypatch.setattr(minibatch, "BLOCK_ROWS", 10)  # 32 rows in blocks of 10, 10, 10, 2
    X, y = _data(task, rows=32, dtype=dtype)
    net = _pair(activation, task, dtype, hidden=hidden)[0]
    before = {k: v.copy() for k, v in net.params.items()}
    loss, penalty, want = net.loss_and_grads(X, y, *reg)
    total, correct, got = minibatch.loss_and_grads(net.params, X, y, *reg, activation, task)
    assert correct == net.last_correct  # the rows classified right, before any update
    assert total == pytest.approx(loss + penalty, rel=10 * atol, abs=atol)
    for k in want:
        assert got[k].dtype == dtype and got[k].shape == want[k].shape
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=atol)
        np.testing.assert_array_equal(net.params[k], before[k])  # gradients only: nothing updated


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_other_optimisers_take_compiled_gradients(optimizer):
    runs = {}
    for compiled in (True, False):
        t = Trainer(TrainConfig(hidden=10, epochs=5, batch_size=32, lr=0.01, optimizer=optimizer, l2=0.01,
                                compiled=compiled, dtype="float64"))
        runs[compiled] = (t, t.fit(DATA / "breast_cancer.h5", log=None))
        assert t.stepper.compiled is compiled
    (fast, h_fast), (slow, h_slow) = runs[True], runs[False]
    for k in fast.net.params:
        np.testing.assert_allclose(fast.net.params[k], slow.net.params[k], rtol=0, atol=1e-9)
    assert h_fast[-1]["train_loss"] == pytest.approx(h_slow[-1]["train_loss"], rel=1e-9)


def test_partial_fit_runs_the_same_steps_as_fit():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    # (the default schedule decays over fit's run, whose length partial_fit does not know)
    cfg = dict(hidden=6, batch_size=50, epochs=1, shuffle="none", scale="none", task="binary", lr_schedule="constant")
    a = Trainer(TrainConfig(**cfg)).partial_fit(X, y, classes=[0, 1])
    b = Trainer(TrainConfig(**cfg))
    b.fit((X, y), log=None)
    assert a.stepper.compiled and b.stepper.compiled
    for k in a.net.params:
        np.testing.assert_array_equal(a.net.params[k], b.net.params[k])


def test_compiled_false_runs_every_step_in_numpy(monkeypatch):
    from streamtrain.nn import online, optim

    def refuse(*args, **kwargs):
        raise AssertionError("a compiled loop ran")

    for module, name in ((online, "sgd_online"), (minibatch, "sgd_step"), (minibatch, "loss_and_grads"),
                         (minibatch, "step_batches")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(optim, "_compiled_adam", lambda: refuse)
    data = (np.random.default_rng(0).standard_normal((64, 3)), np.arange(64) % 2)
    for batch_size, optimizer in ((1, "sgd"), (16, "sgd"), (16, "adam")):
        t = Trainer(TrainConfig(hidden=4, epochs=1, batch_size=batch_size, optimizer=optimizer, compiled=False))
        t.fit(data, log=None)
        assert t.global_step == 64 // batch_size
    for optimizer in ("sgd", "adam"):  # and the default does run them
        with pytest.raises(AssertionError, match="a compiled loop ran"):
            Trainer(TrainConfig(hidden=4, epochs=1, batch_size=16, optimizer=optimizer)).fit(data, log=None)


def test_multi_output_regression_step_equals_numpy_step():
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((70, 7)), rng.standard_normal((70, 3))
    a, b = (TwoLayerNet(7, 5, 3, "tanh", "regression", "glorot", seed=2, dtype=np.float64) for _ in range(2))
    for s in range(0, 70, 32):
        loss, penalty, grads = a.loss_and_grads(X[s:s + 32], Y[s:s + 32], 0.001, 0.01)
        SGD(0.05).step(a.params, grads)
        total, _ = minibatch.sgd_step(b.params, X[s:s + 32], Y[s:s + 32], 0.05, 0.001, 0.01, "tanh", "regression")
        assert total == pytest.approx(loss + penalty, rel=1e-12)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=1e-12)


def _adam_scalars(opt_t, n, lr, b1=0.9, b2=0.999, eps=1e-8):
    return np.array([(b1, 1.0 - b1, b2, 1.0 - b2, lr / (1.0 - b1 ** (opt_t + k + 1)), 1.0 - b2 ** (opt_t + k + 1), eps)
                     for k in range(n)])


@pytest.mark.parametrize("hidden,lanes", [(5, 1), (16, 1), (16, 2)])
@pytest.mark.parametrize("adam", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,task,reg", CASES)
def test_batches_in_one_call_are_the_steps_one_at_a_time_bitwise(activation, task, reg, dtype, adam, hidden, lanes,
                                                                  monkeypatch):
    # Scaled, weighted, penalised: what the service's learner hands over in one call (GIL released).
    # Two lanes, each on half the hidden layer's columns, meeting three times a batch (blocks of 12 rows).
    from streamtrain.nn.optim_compiled import adam_update

    monkeypatch.setattr(minibatch, "BLOCK_ROWS", 12 if lanes == 2 else minibatch.BLOCK_ROWS)
    X, y = _data(task, rows=7 * 32, dtype=dtype)
    X = X * 3 + 2
    mean, factor = X.mean(axis=0).astype(dtype), (1 / X.std(axis=0)).astype(dtype)
    w = np.random.default_rng(1).uniform(0.5, 2, len(X))
    a, b = _pair(activation, task, dtype, hidden=hidden)
    moments = [{k: np.zeros_like(v) for k, v in b.params.items()} for _ in range(2)] if adam else None
    ma, va = ({k: np.zeros_like(v) for k, v in a.params.items()} for _ in range(2))
    lrs = 0.05 / np.sqrt(1 + np.arange(7))  # a rate per step, as a schedule gives
    scalars = _adam_scalars(0, 7, 0.01) if adam else np.c_[lrs, np.zeros((7, 6))]
    done, out = minibatch.step_batches(b.params, X, y, 32, scalars, *reg, activation, task, w, (mean, factor),
                                       None if moments is None else tuple(moments), lanes=lanes)
    assert done == 7 and out.shape == (7, 2)
    for k in range(7):
        s = slice(32 * k, 32 * (k + 1))
        Xs = (X[s] - mean) * factor
        if adam:
            total, correct, grads = minibatch.loss_and_grads(a.params, Xs, y[s], *reg, activation, task, w[s])
            adam_update(a.params, grads, ma, va, 0.9, 0.999, scalars[k, 4], scalars[k, 5], 1e-8)
        else:
            total, correct = minibatch.sgd_step(a.params, Xs, y[s], lrs[k], *reg, activation, task, w[s])
        assert (out[k, 0], out[k, 1]) == (total, correct)
    for k in a.params:
        np.testing.assert_array_equal(b.params[k], a.params[k], err_msg=k)
        if adam:
            np.testing.assert_array_equal(moments[0][k], ma[k])
            np.testing.assert_array_equal(moments[1][k], va[k])


# One process's losses and weights from the step's entry points and the per-sample loop: penalised,
# weighted, each task and activation
_STEP_BITS = """
import hashlib, sys
import numpy as np
from streamtrain.nn import minibatch, online
from streamtrain.nn.network import TwoLayerNet
rng = np.random.default_rng(0)
X = rng.standard_normal((7 * 32, 7)).astype(np.float32) * 3 + 2
w = rng.uniform(0.5, 2, len(X))
ys = {"binary": np.arange(len(X)) % 2, "multiclass": rng.integers(0, 4, len(X)),
      "regression": rng.standard_normal(len(X))}
digest = hashlib.sha256()
for task, y in ys.items():
    for act in ("sigmoid", "tanh", "relu"):
        for entry in ("batches", "steps", "online"):
            net = TwoLayerNet(7, 5, 4 if task == "multiclass" else 1, act, task, "glorot", seed=1, dtype=np.float32)
            if entry == "batches":
                _, out = minibatch.step_batches(net.params, X, y, 32, np.c_[np.full(7, 0.05), np.zeros((7, 6))],
                                                0.001, 0.01, act, task, w)
                losses = out[:, 0]
            elif entry == "online":
                losses = np.array(online.sgd_online(net.params, X, y, 0.05, 0.001, 0.01, act, task, w)[:1])
            else:
                losses = np.array([minibatch.sgd_step(net.params, X[k:k + 32], y[k:k + 32], 0.05, 0.001, 0.01, act,
                                                      task, w[k:k + 32])[0] for k in range(0, len(X), 32)])
            digest.update(losses.tobytes() + b"".join(net.params[k].tobytes() for k in ("W1", "b1", "W2", "b2")))
# the per-sample loops over codes (categories selecting first-layer rows): SGD with a lazy L2, lazy Adam
import pandas as pd
from streamtrain import TrainConfig, Trainer
df = pd.DataFrame({"a": rng.choice(list("abcdefgh"), 300), "b": rng.choice(list("pqrs"), 300), "x": rng.normal(size=300)})
df["y"] = ((df["a"] < "e") ^ (df["x"] > 0)).astype(int)
for opt, l2 in (("sgd", 0.01), ("adam", 0.0)):
    t = Trainer(TrainConfig(hidden=8, epochs=2, batch_size=1, optimizer=opt, l2=l2, one_hot_max=0, seed=2))
    t.fit(df, label="y", log=None)
    assert t.model.net.layout is not None  # (codes)
    digest.update(b"".join(np.ascontiguousarray(t.model.net.params[k]).tobytes() for k in ("W1", "b1", "W2", "b2")))
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_a_process_reading_the_compiled_loops_from_the_cache_computes_what_the_compiling_one_did(tmp_path):
    # A run and its resume: the first process compiles the step (and the per-sample loop), the next
    # reads them from numba's cache. numba links a copy of every helper into each caller and optimises it there; compiled
    # with fastmath, the copies a process ran depended on which it had loaded first (a multiclass
    # loss a last bit apart between the two processes, float32). Each from a cold cache of its own.
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", _STEP_BITS], capture_output=True, text=True, check=True, env=env)
            for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.strip()) == 64


@pytest.mark.parametrize("hidden,lanes", [(5, 1), (16, 2)])
@pytest.mark.parametrize("adam", [False, True])
def test_batches_in_one_call_stop_at_the_first_that_diverges(adam, hidden, lanes):
    X, y = _data("regression", rows=5 * 8, dtype=np.float32)
    X[3 * 8 + 2] = 1e30  # batch 3 diverges
    a, b = _pair("relu", "regression", np.float32, hidden=hidden)
    moments = tuple({k: np.zeros_like(v) for k, v in b.params.items()} for _ in range(2)) if adam else None
    scalars = _adam_scalars(0, 5, 0.01) if adam else np.c_[np.full(5, 0.01), np.zeros((5, 6))]
    with np.errstate(over="ignore", invalid="ignore"):
        done, out = minibatch.step_batches(b.params, X, y, 8, scalars, 0, 0, "relu", "regression", adam=moments,
                                           lanes=lanes)
        assert done == 3 and np.isfinite(out[:3, 0]).all() and not np.isfinite(out[3, 0])
        again = {k: v.copy() for k, v in a.params.items()}
        minibatch.step_batches(again, X[:24], y[:24], 8, scalars[:3], 0, 0, "relu", "regression",
                               adam=None if moments is None else
                               tuple({k: np.zeros_like(v) for k, v in again.items()} for _ in range(2)))
    for k in a.params:  # the three batches before it, and nothing of it
        np.testing.assert_array_equal(b.params[k], again[k], err_msg=k)


@pytest.mark.parametrize("optimizer,schedule,strategy", [("adam", "constant", "GradientStep"),
                                                         ("sgd", "cosine", "FusedSGD"),
                                                         ("momentum", "constant", "GradientStep")])
def test_a_strategy_s_batches_are_its_updates_one_at_a_time(optimizer, schedule, strategy):
    # update_batches (one compiled call for plain SGD and Adam; a loop for the others) against update
    # per batch on the scaled rows: the same parameters, optimiser state and loss, bitwise.
    import copy

    from streamtrain.data.scaling import DataStats, Scaler
    from streamtrain.model import Model
    from streamtrain.train.state import make_run_optimizer
    from streamtrain.train.update import choose_update

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(256 * 7, 5)) * 3 + 1).astype(np.float32)
    y = np.where(X[:, 0] > 1, "a", "b")
    cfg = TrainConfig(hidden=8, batch_size=256, optimizer=optimizer, lr_schedule=schedule, epochs=2, l2=1e-3,
                      class_weight="a=2, b=1")
    stats = DataStats()
    stats.update_labels(y)
    stats.update_features(X)
    one = Model.build(cfg, stats, 5, [f"f{i}" for i in range(5)], "y", None, "test", "test")
    one.scaler = Scaler.from_stats("standard", stats, cfg.dtype)
    two = copy.deepcopy(one)
    opt_one, opt_two = make_run_optimizer(cfg), make_run_optimizer(cfg)
    fast, slow = choose_update(cfg, one, opt_one, total_steps=14), choose_update(cfg, two, opt_two, total_steps=14)
    assert type(fast).__name__ == strategy
    T = one.targets(y, "test")
    made = [fast.update_batches(X, T, 0, 256, scaler=one.scaler), fast.update_batches(X, T, 7, 256, scaler=one.scaler)]
    loss = 0.0
    for step in range(14):
        s = slice(256 * (step % 7), 256 * (step % 7 + 1))
        loss += slow.update(two.scaler.transform(X[s]), T[s], step).loss_sum
    assert [m.diverged for m in made] == [None, None] and sum(m.done.steps for m in made) == 14
    assert sum(m.done.loss_sum for m in made) == pytest.approx(loss, rel=1e-12)
    for k, v in two.net.params.items():
        np.testing.assert_array_equal(one.net.params[k], v, err_msg=k)
    for k, v in opt_two.state_dict().items():
        np.testing.assert_array_equal(opt_one.state_dict()[k], v, err_msg=k)


def _lane_case(hidden=64, rows=4 * 256):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((rows, 32)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int), TwoLayerNet(32, hidden, 1, "sigmoid", "binary", seed=3)


def test_two_lanes_fall_back_to_one_where_another_caller_has_the_second_thread():
    from streamtrain.nn import lanes

    X, y, net = _lane_case()
    one, two = ({k: v.copy() for k, v in net.params.items()} for _ in range(2))
    scalars = np.c_[np.full(4, 0.1), np.zeros((4, 6))]
    minibatch.step_batches(one, X, y, 256, scalars, 0, 1e-3, "sigmoid", "binary")
    with lanes.SECOND.lock:  # (held: the call runs its one-lane form instead of waiting for the thread)
        done, _ = minibatch.step_batches(two, X, y, 256, scalars, 0, 1e-3, "sigmoid", "binary", lanes=2)
    assert done == 4
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


@pytest.mark.parametrize("failing", [0, 1])
def test_a_lane_that_fails_ends_the_other_lane_s_wait(failing):
    # Each lane waits at the barrier for the other; the one that raises must not leave it spinning.
    import threading

    from streamtrain.nn import lanes

    f = lanes.flags()
    seen = {}

    def lane(k):
        if k == failing:
            raise ValueError(f"lane {k} failed")
        seen[k] = lanes.barrier(f, k, 1)  # (compiled: spins until the other arrives or fails)
        return seen[k]

    outcome = {}

    def call():
        try:
            lanes.run(lane, lambda k: (k,), f)
        except ValueError as e:
            outcome["error"] = str(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "a lane kept waiting for one that had failed"
    assert outcome == {"error": f"lane {failing} failed"} and seen == {1 - failing: False}
    g = lanes.flags()
    assert lanes.run(lambda k: lanes.barrier(g, k, 1), lambda k: (k,), g) == (True, True)  # (and it serves the next)


def test_the_trainer_gives_two_lanes_to_an_in_memory_run_alone_and_gets_the_same_weights(monkeypatch):
    # In memory, in storage order, one process: nothing else works, so the step takes both cores
    # (BLAS one thread per lane) and the loader makes its batches on the trainer's thread (a third
    # thread would preempt a lane). The weights are those of one lane's run, bitwise; a shuffled
    # run (a loader thread gathering rows) keeps to one lane.
    import os
    import threading

    from threadpoolctl import threadpool_info

    from streamtrain.data import decoder

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: no second lane is given")
    from streamtrain.data.loader import GROUP_ROWS

    X, y, _ = _lane_case(hidden=16, rows=4 * GROUP_ROWS)  # (groups enough that a loader thread waits to put one)
    calls = []
    step = minibatch.step_batches

    def spy(*args, **kwargs):
        blas = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
        loader = any(t.name == "streamtrain-loader" for t in threading.enumerate())
        calls.append((args[-1] if len(args) > 12 else kwargs.get("lanes", 1), blas, loader))
        return step(*args, **kwargs)

    monkeypatch.setattr(minibatch, "step_batches", spy)
    runs = {}
    for name, cores, shuffle in (("two", 2, "none"), ("one", 1, "none"), ("shuffled", 2, "window")):
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(decoder, "cores_of_one", lambda processes=1: cores)
            t = Trainer(TrainConfig(hidden=16, epochs=2, batch_size=256, lr=0.1, shuffle=shuffle, scale="none",
                                    task="binary", optimizer="adam"))
            t.fit((X, y), log=None)
        runs[name] = (t.net.params, {lanes for lanes, _, _ in calls}, calls[0][1], {loader for *_, loader in calls})
        assert t.stepper.lanes == 1  # (given back after the run)
    assert runs["two"][1:] == ({2}, {1}, {False})  # two lanes, one BLAS thread each, no loader thread
    assert runs["one"][1] == {1} and True in runs["one"][3]  # (a loader thread reading ahead, until it is done)
    assert runs["shuffled"][1] == {1} and True in runs["shuffled"][3]
    for k, v in runs["one"][0].items():
        np.testing.assert_array_equal(runs["two"][0][k], v, err_msg=k)
    # batch-center scaling prepares each batch: no fused calls, so no lanes, and BLAS left alone
    steps, blas = [], {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    one_step = minibatch.sgd_step
    monkeypatch.setattr(minibatch, "sgd_step", lambda *a, **k: steps.append(
        {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}) or one_step(*a, **k))
    with monkeypatch.context() as m:  # (every core the process has: no cap of its own on BLAS either)
        m.setattr(decoder, "cores_of_one", lambda processes=1: len(os.sched_getaffinity(0)))
        Trainer(TrainConfig(hidden=16, epochs=1, batch_size=256, shuffle="none", scale="batch-center", optimizer="sgd",
                            task="binary")).fit((X[:4096], y[:4096]), log=None)
    assert steps and all(threads == blas for threads in steps)


def test_two_lanes_run_on_two_threads_and_a_lane_that_fails_stops_the_other_before_any_step(monkeypatch):
    # Lane 0 (compiled) waits at its first meeting for lane 1, which raises first: lane 0 must
    # return (-1) rather than wait, before any update, and the error reaches the caller.
    import threading

    from streamtrain.nn import lanes

    X, y, net = _lane_case()
    scalars = np.c_[np.full(4, 0.1), np.zeros((4, 6))]
    real, seen = lanes.run, []

    def recording(fail):
        def run(fn, args_of, f):
            def lane(*args):
                seen.append((args[0], threading.current_thread().name))
                if fail and args[0] == 1:
                    raise RuntimeError("lane 1 failed")
                done = fn(*args)
                seen.append((args[0], done))
                return done
            return real(lane, args_of, f)
        return run

    monkeypatch.setattr(lanes, "run", recording(False))
    assert minibatch.step_batches(net.params, X, y, 256, scalars, 0, 0, "sigmoid", "binary", lanes=2)[0] == 4
    assert set(seen) == {(0, 4), (0, "MainThread"), (1, 4), (1, "streamtrain-lane")}
    seen.clear()
    before = {k: v.copy() for k, v in net.params.items()}
    monkeypatch.setattr(lanes, "run", recording(True))
    with pytest.raises(RuntimeError, match="lane 1 failed"):
        minibatch.step_batches(net.params, X, y, 256, scalars, 0, 0, "sigmoid", "binary", lanes=2)
    assert set(seen) == {(0, -1), (0, "MainThread"), (1, "streamtrain-lane")}
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k], err_msg=k)


@pytest.mark.parametrize("hidden", WIDTHS)
def test_no_whole_batch_steps_nothing_and_an_empty_batch_s_loss_is_the_penalty(hidden):
    X, y, net = _lane_case(hidden=hidden, rows=100)
    before = {k: v.copy() for k, v in net.params.items()}
    done, out = minibatch.step_batches(net.params, X, y, 256, np.zeros((0, 7)), 0, 0, "sigmoid", "binary", lanes=2)
    assert done == 0 and out.shape == (0, 2)
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k], err_msg=k)
    # (the compiled form alone: the public functions take no batch of 0 rows)
    compiled, act = minibatch._generated.get("sigmoid")
    p, f = net.params, np.float32
    total, correct, *g = compiled._grads(p["W1"], p["b1"], p["W2"], p["b2"], X[:0], np.zeros((0, 1), f),
                                         np.zeros(0, f), f(1e-3), f(1e-2), act, 0, True, minibatch.BLOCK_ROWS)
    grads = dict(zip(("W1", "b1", "W2", "b2"), g))
    W = [net.params["W1"].astype(np.float64), net.params["W2"].astype(np.float64)]
    want = sum(0.5 * 1e-2 * (w * w).sum() + 1e-3 * np.abs(w).sum() for w in W)
    assert correct == 0 and total == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(grads["W1"], 1e-2 * net.params["W1"] + 1e-3 * np.sign(net.params["W1"]), rtol=1e-6)
