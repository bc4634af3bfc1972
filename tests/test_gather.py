"""Categorical columns that enter the network as codes selecting rows of the first layer's weights
(a gather, ``--one-hot-max``), never as a one-hot matrix: the same model as the one-hot one, to
float64 rounding, in the network's math, in training, and through checkpoints and predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from streamtrain.features.encoding import Encoding, EncodingOptions
from streamtrain.features.learn import learn_encoding
from streamtrain.io.resolve import latest_checkpoint
from streamtrain.nn.functions import ACTIVATIONS
from streamtrain.nn.network import InputLayout, RowGrad, TwoLayerNet
from streamtrain.train.schema import TRAINER

from .test_tabular import flights

BIN = Path(sys.executable).with_name("streamtrain")


def _trained(tmp_path, *args):
    """A run of ``streamtrain train f.parquet --label status ARGS`` in ``tmp_path/r``: its latest checkpoint."""
    res = subprocess.run([str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "status", *args,
                          "--checkpoint-dir", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return latest_checkpoint(tmp_path / "r", schema=TRAINER)


def _encodings(df: pd.DataFrame, label: str, **options):
    """The table, and its encoding learned one-hot and gathered (every categorical column)."""
    t = pa.Table.from_pandas(df, preserve_index=False)
    features = [c for c in t.column_names if c != label]
    learn = lambda m: learn_encoding(t.schema, features, label, lambda keys: [t.select(keys)],  # noqa: E731
                                     EncodingOptions(one_hot_max=m, **options), "t")
    return t, learn(1 << 20), learn(0)


@pytest.mark.parametrize("task,n_out", [("binary", 1), ("multiclass", 3), ("regression", 2)])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_gather_equals_the_dense_one_hot_reference(task, n_out, activation):
    df = flights(400)
    t, dense, gathered = _encodings(df, "status", overrides={"hash": {"flight_id": 97}})
    assert gathered.feature_names == ["distance", "distance:missing", "seats", "seats:missing", "carrier",
                                      "weather", "departs", "flight_id"]
    assert gathered.n_rows == dense.width == len(dense.feature_names) and gathered.width == 8
    Xd, Xg = dense.transform(t, np.float64, "t"), gathered.transform(t, np.float64, "t")
    a = TwoLayerNet(dense.width, 6, n_out, activation, task, seed=2, dtype=np.float64)
    b = TwoLayerNet(gathered.width, 6, n_out, activation, task, seed=2, dtype=np.float64,
                    layout=InputLayout(*gathered.layout()))
    np.testing.assert_array_equal(a.params["W1"], b.params["W1"])  # one row per one-hot input, alike
    rng = np.random.default_rng(0)
    y = rng.normal(size=(len(df), n_out)) if task == "regression" else rng.integers(0, max(n_out, 2), len(df))
    w = rng.random(len(df))
    la, pa_, ga = a.loss_and_grads(Xd, y, l1=1e-4, l2=1e-3, weights=w)
    lb, pb, gb = b.loss_and_grads(Xg, y, l1=1e-4, l2=1e-3, weights=w)
    np.testing.assert_allclose(lb, la, rtol=1e-12)
    assert pb == pa_
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-12, atol=1e-12 * np.abs(ga[k]).max(), err_msg=k)
    np.testing.assert_allclose(b.predict_output(Xg), a.predict_output(Xd), rtol=1e-12, atol=1e-15)


def test_a_code_outside_its_column_is_refused_not_read_past_the_weights():
    layout = InputLayout([0], [0], [1], [1], [3])
    net = TwoLayerNet(2, 4, 1, layout=layout, dtype=np.float64)
    assert net.params["W1"].shape == (4, 4)
    for bad in (3.0, -1.0, 1.5):
        with pytest.raises(ValueError, match=r"input column 1 holds a code outside \[0, 3\)"):
            net.forward(np.array([[0.5, bad]]))


@pytest.mark.parametrize("dtype,index", [(np.float32, np.int64), (np.float64, np.int32)])
def test_the_compiled_gather_adds_the_rows_as_numpy_does_bitwise(dtype, index):
    # (the forward pass's rows are summed by a compiled loop; numpy's column-at-a-time form is the
    # reference: the same sums, in the same order, so a seed keeps its model)
    from streamtrain.nn.sparse_compiled import add_rows

    rng = np.random.default_rng(5)
    W = rng.normal(size=(50, 7)).astype(dtype)
    picked = (rng.zipf(1.5, size=(300, 6)) % 50).astype(index)  # rows repeat within and across samples
    h = rng.normal(size=(300, 7)).astype(dtype)
    ref = h.copy()
    for r in picked.T:
        ref += W[r]
    add_rows(h, W, picked)
    assert np.array_equal(h, ref)
    layout = InputLayout([0], [0], [1, 2], [1, 11], [10, 39])
    net = TwoLayerNet(3, 7, 1, layout=layout, dtype=dtype)
    X = np.column_stack([rng.normal(size=300), picked[:, 0] % 10, picked[:, 1] % 39]).astype(dtype)
    W1 = net.params["W1"]
    ref = X[:, [0]] @ W1[[0]] + W1[1 + X[:, 1].astype(int)] + W1[11 + X[:, 2].astype(int)]
    assert np.array_equal(net._first(X), ref)


@pytest.mark.parametrize("init,std", [("he", lambda fan, h: np.sqrt(2.0 / fan)),
                                      ("glorot", lambda fan, h: np.sqrt(6.0 / (fan + h)) / np.sqrt(3.0))])
def test_a_table_s_scale_comes_from_the_inputs_a_sample_sums_not_from_its_rows(init, std):
    # 3 code columns of 100,000 rows each and 2 plain inputs: a sample sums 5 rows of W1, so He's
    # and Glorot's scales take a fan-in of 5 (from the table's 300,002 rows they would be 250x smaller)
    layout = InputLayout([0, 1], [0, 1], [2, 3, 4], [2, 100_002, 200_002], [100_000] * 3)
    net = TwoLayerNet(5, 16, 1, activation="tanh", init=init, layout=layout, dtype=np.float64)
    W1 = net.params["W1"]
    assert W1.shape == (300_002, 16)
    np.testing.assert_allclose(W1.std(), std(5, 16), rtol=0.01)
    X = np.column_stack([np.random.default_rng(0).standard_normal((2000, 2)),
                         np.random.default_rng(1).integers(0, 100_000, (2000, 3))]).astype(np.float64)
    h = net._first(X)
    assert 0.3 < h.std() / (std(5, 16) * np.sqrt(5)) < 3  # pre-activations of order one, not vanishing


def test_training_with_codes_equals_training_one_hot(tmp_path):
    flights(3000).to_parquet(tmp_path / "f.parquet", row_group_size=500)
    runs = {}
    for m in (1024, 0):
        res = subprocess.run([str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "status", "--epochs", "3",
                              "--dtype", "float64", "--hash", "flight_id:300", "--one-hot-max", str(m),
                              "--dense-updates",  # Adam (the default) as the one-hot model runs it: not lazy
                              "--checkpoint-dir", str(tmp_path / f"r{m}"), "--quiet"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        runs[m] = latest_checkpoint(tmp_path / f"r{m}", schema=TRAINER)
    (_, a, ma), (_, b, mb) = runs[1024], runs[0]
    assert ma["model"]["n_in"] == 317 and mb["model"]["n_in"] == 8  # the data's width: codes, not one-hot
    assert [c.get("gather", False) for c in mb["model"]["encoding"]["columns"]] == [False, False, True, True,
                                                                                     False, True]
    for k in a:
        if k.startswith(("param.", "optim.")):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12, err_msg=k)
    flights(50, seed=9).to_csv(tmp_path / "new.csv", index=False)
    preds = []
    for m in (1024, 0):
        res = subprocess.run([str(BIN), "predict", str(tmp_path / f"r{m}"), str(tmp_path / "new.csv"), "--out",
                              str(tmp_path / f"p{m}.csv")], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        preds.append(pd.read_csv(tmp_path / f"p{m}.csv"))
    assert (preds[0]["prediction"] == preds[1]["prediction"]).all()
    np.testing.assert_allclose(preds[1]["p_late"], preds[0]["p_late"], rtol=1e-6)


def test_many_categories_need_no_one_hot_matrix(tmp_path):
    rng = np.random.default_rng(1)
    n = 4000
    ids = rng.integers(0, 50_000, n)
    pd.DataFrame({"user": [f"u{i}" for i in ids], "x": rng.normal(size=n),
                  "y": (ids % 2).astype(np.int8)}).to_parquet(tmp_path / "f.parquet")
    res = subprocess.run([str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "y", "--hash", "user:200000",
                          "--hidden", "4", "--epochs", "2", "--checkpoint-dir", str(tmp_path / "r"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    _, arrays, meta = latest_checkpoint(tmp_path / "r", schema=TRAINER)
    assert meta["model"]["n_in"] == 2 and arrays["param.W1"].shape == (1 + 200_001, 4)  # x, then the user's rows


def test_a_checkpoint_whose_gather_is_tampered_is_refused(tmp_path):
    flights(300).to_parquet(tmp_path / "f.parquet")
    _, arrays, meta = _trained(tmp_path, "--epochs", "1", "--one-hot-max", "0")
    required, _ = TRAINER.arrays(meta)
    assert required["param.W1"][1] == arrays["param.W1"].shape  # the rows the encoding declares
    col = next(c for c in meta["model"]["encoding"]["columns"] if c.get("gather"))
    col["gather"] = "yes"
    with pytest.raises(ValueError, match="gather must be true or false"):
        TRAINER.validate_meta(meta)
    col["gather"] = False  # one-hot now: the data's width no longer the model's feature names
    with pytest.raises(ValueError, match="feature names"):
        TRAINER.validate_meta(meta)
    assert Encoding.from_state(meta["model"]["encoding"]).n_rows == arrays["param.W1"].shape[0]


# -- updates that touch only the rows a batch selected ---------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparse_sgd_updates_equal_dense_updates_bitwise(dtype, tmp_path):
    from streamtrain import Trainer

    flights(1200).to_parquet(tmp_path / "f.parquet", row_group_size=400)
    params = []
    for dense in (False, True):
        t = Trainer(hidden=6, epochs=2, batch_size=32, optimizer="sgd", lr_schedule="constant", one_hot_max=0,
                    dtype=dtype, dense_updates=dense, seed=4)
        t.fit(str(tmp_path / "f.parquet"), label="status", log=None)
        assert t.stepper.sparse is not dense
        params.append(t.net.params)
    for k in params[0]:
        np.testing.assert_array_equal(params[0][k], params[1][k], err_msg=k)


def _two_steps(opt, dense: bool, steps=([0, 1], [2])):
    """Parameters after a step touching rows {0, 1} and one touching {2}, as a gathered model's W1."""
    from streamtrain.nn.network import RowGrad

    W = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
    params = {"W1": W.copy()}
    for rows in steps:
        g = RowGrad(np.array(rows), np.full((len(rows), 3), 0.5), W.shape)
        opt.step(params, {"W1": g.dense() if dense else g})
    return W, params["W1"]


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_lazy_updates_leave_untouched_rows_and_their_state_alone(name):
    from streamtrain.nn.optim import SGD, Adam, Momentum

    make = {"sgd": lambda: SGD(0.1), "momentum": lambda: Momentum(0.1, 0.9),
            "nesterov": lambda: Momentum(0.1, 0.9, nesterov=True), "adam": lambda: Adam(0.1)}[name]
    W, lazy = _two_steps(make(), dense=False)
    _, dense = _two_steps(make(), dense=True)
    np.testing.assert_array_equal(lazy[3], W[3])  # never touched
    np.testing.assert_array_equal(lazy[2], dense[2])  # touched at the last step: one step, alike
    if name == "sgd":
        np.testing.assert_array_equal(lazy, dense)  # SGD is exact
    else:  # rows 0 and 1 were not touched by the second step: lazy leaves them, dense state moves them
        np.testing.assert_array_equal(lazy[:2], _two_steps(make(), False, steps=([0, 1],))[1][:2])
        assert not np.array_equal(lazy[:2], dense[:2])


@pytest.mark.parametrize("optimizer,l1,lazy", [("sgd", 0.0, True), ("sgd", 1e-4, False), ("adam", 1e-4, True),
                                               ("momentum", 0.0, True)])
def test_a_penalty_keeps_only_plain_sgd_with_l1_dense(tmp_path, optimizer, l1, lazy):
    # (plain SGD with L1 updates every row at every step; its L2 decays untouched rows lazily;
    # momentum and Adam penalise the rows a step touched, as their state advances there alone)
    from streamtrain import Trainer

    flights(600).to_parquet(tmp_path / "f.parquet")
    t = Trainer(hidden=4, epochs=1, one_hot_max=0, l2=1e-3, l1=l1, optimizer=optimizer)
    t.fit(str(tmp_path / "f.parquet"), label="status", log=None)
    assert t.stepper.sparse == lazy and (t.stepper.penalty is not None) == lazy
    X = np.zeros((2, t.net.n_in), t.net.dtype)
    _, _, grads = t.net.loss_and_grads(X, np.array([0, 1]), l2=1e-3, sparse=t.stepper.sparse)
    assert isinstance(grads["W1"], RowGrad) == lazy


def test_a_table_s_optimiser_state_is_made_ready_beside_its_draw_and_taken_by_the_first_step(tmp_path, monkeypatch):
    import gc

    from streamtrain import Trainer
    from streamtrain.nn import optim

    assert optim.prepare_zeros("adam", (1000, 8), np.float32) is None  # (small: not worth a thread)
    monkeypatch.setattr(optim, "PREPARE_BYTES", 1)
    assert optim.prepare_zeros("sgd", (1000, 8), np.float32) is None  # (its lazy decay's table is not zeros)
    assert len(optim.prepare_zeros("momentum", (1000, 8), np.float32).arrays) == 1  # (its velocity)
    zeros = optim.prepare_zeros("adam", (1000, 8), np.float64)
    made = [id(a) for a in zeros.arrays]
    W = np.random.default_rng(0).standard_normal((1000, 8))
    optim.attach(zeros, W)
    params, plain = {"W1": W}, {"W1": W.copy()}
    adam, reference = optim.Adam(0.1), optim.Adam(0.1)
    for _ in range(2):  # (the same values as zeros made at the first step, bitwise)
        g = np.sin(params["W1"])
        adam.step(params, {"W1": g})
        reference.step(plain, {"W1": g.copy()})
    np.testing.assert_array_equal(params["W1"], plain["W1"])
    assert sorted(map(id, (adam.m["W1"], adam.v["W1"]))) == sorted(made) and not zeros.thread.is_alive()
    other = np.zeros((10, 8))  # an array that was given none gets new zeros
    assert optim.zero_state(other).shape == (10, 8)
    key = id(W)
    assert key in optim._PREPARED
    del W, params
    gc.collect()
    assert key not in optim._PREPARED  # (gone with its table)

    # a run: the first step takes them (the model's table here: tiny, as PREPARE_BYTES is 1)
    flights(600).to_parquet(tmp_path / "f.parquet")
    t = Trainer(hidden=4, epochs=1, one_hot_max=0, optimizer="adam")
    t.fit(str(tmp_path / "f.parquet"), label="status", log=None)
    assert t.stepper.sparse and not optim._PREPARED[id(t.net.params["W1"])][1].arrays


def test_a_first_layer_beyond_the_memory_is_refused_before_it_is_allocated(tmp_path):
    flights(300).to_parquet(tmp_path / "f.parquet")
    res = subprocess.run([str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "status", "--hash",
                          "flight_id:1048576", "--hidden", "16384", "--epochs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'f.parquet'}: the first layer's 1,048,") and "GiB available" in line
    assert "--hash-buckets" in line and "--hidden" in line
    # the advice followed: fewer rows train
    res = subprocess.run([str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "status", "--hash",
                          "flight_id:1024", "--hidden", "16", "--epochs", "1", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_one_shared_hashed_table_equals_the_summed_one_hot_model():
    df = flights(300)
    df["carrier2"] = df["carrier"]  # the same values in two columns
    t, _, _ = _encodings(df, "status")
    enc = learn_encoding(t.schema, ["distance", "carrier", "carrier2", "weather", "flight_id"], "status",
                         lambda keys: [t.select(keys)],
                         EncodingOptions(hash_bits=6, crosses=[["carrier", "weather"]],
                                         overrides={"hash": {"flight_id": 8}}), "t")
    cols = ["carrier", "carrier2", "weather", "flight_id", "carrier*weather"]
    assert enc.feature_names == ["distance", "distance:missing", *cols]
    layout = InputLayout(*enc.layout())
    assert list(layout.offsets) == [2] * 5 and list(layout.sizes) == [65] * 5 and enc.n_rows == 2 + 65
    X = enc.transform(t, np.float64, "t")
    codes = X[:, 2:].astype(int)
    both = df["carrier"].notna().to_numpy()
    assert (codes[both, 0] != codes[both, 1]).any()  # each column hashes with its own salt
    # the reference: one 0/1 block that every column's code adds to
    dense = np.zeros((len(X), enc.n_rows))
    dense[:, :2] = X[:, :2]
    for j in range(codes.shape[1]):
        np.add.at(dense, (np.arange(len(X)), 2 + codes[:, j]), 1.0)
    a = TwoLayerNet(enc.n_rows, 5, 1, "tanh", seed=1, dtype=np.float64)
    b = TwoLayerNet(X.shape[1], 5, 1, "tanh", seed=1, dtype=np.float64, layout=layout)
    y = (df["status"] == "late").to_numpy().astype(int)
    la, _, ga = a.loss_and_grads(dense, y)
    lb, _, gb = b.loss_and_grads(X, y)
    np.testing.assert_allclose(lb, la, rtol=1e-12)
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-12, atol=1e-12 * np.abs(ga[k]).max(), err_msg=k)
    state = enc.state_dict()
    again = Encoding.from_state(state)
    np.testing.assert_array_equal(again.transform(t, np.float64, "t"), X)
    state["columns"][3]["buckets"] = 32
    with pytest.raises(ValueError, match="shared table must have as many buckets"):
        Encoding.from_state(state)


def test_hash_bits_from_the_command(tmp_path):
    flights(600).to_parquet(tmp_path / "f.parquet")
    # 21 bits: more rows than a column's own hash table may have (2**20), as Vowpal Wabbit's -b 22 would
    _, arrays, meta = _trained(tmp_path, "--hash-bits", "21", "--hidden", "2", "--epochs", "2")
    assert meta["model"]["feature_names"] == ["distance", "distance:missing", "seats", "seats:missing", "carrier",
                                              "weather", "departs"]
    assert arrays["param.W1"].shape[0] == 5 + (1 << 21) + 1  # the numbers' rows, then the one table
    res = subprocess.run([str(BIN), "predict", str(tmp_path / "r"), str(tmp_path / "f.parquet"), "--out",
                          str(tmp_path / "p.parquet")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "status", "--hash-bits", "40"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "hash_bits" in res.stderr.replace("-", "_") and "Traceback" not in res.stderr


# -- online learning (batch size 1) over codes: the compiled per-sample loop ---------------------------

@pytest.mark.parametrize("optimizer,options", [
    ("sgd", {}), ("sgd", {"hash_bits": 6, "lr_schedule": "invscaling"}), ("sgd", {"activation": "tanh"}),
    # (hash_bits 2: one shared table of 4 rows, so that codes of two columns often select one row)
    ("adam", {}), ("adam", {"hash_bits": 2, "lr_schedule": "invscaling"}), ("adam", {"activation": "tanh"})])
def test_the_compiled_online_loop_over_codes_equals_the_numpy_step(optimizer, options, tmp_path):
    from streamtrain import Trainer
    from streamtrain.train.update import GradientStep, PerSampleAdam, PerSampleSGD

    rng = np.random.default_rng(3)
    flights(500).assign(gate=rng.choice(list("ABCDEFGH"), 500)).to_parquet(tmp_path / "f.parquet")
    runs = []
    for compiled in (True, False):
        t = Trainer(hidden=5, epochs=2, batch_size=1, optimizer=optimizer, one_hot_max=0, dtype="float64",
                    lr=0.02 if optimizer == "sgd" else 0.01, compiled=compiled, seed=2, **options)
        t.fit(str(tmp_path / "f.parquet"), label="status", log=None)
        fast = PerSampleSGD if optimizer == "sgd" else PerSampleAdam
        assert isinstance(t.stepper, fast if compiled else GradientStep)
        if optimizer == "adam" and options.get("hash_bits") and compiled:
            X, _ = t.open_like_training(str(tmp_path / "f.parquet")).read(np.arange(500))
            rows = t.net.layout.rows(X)
            assert sum(len(set(r)) < len(r) for r in rows.tolist()) > 100  # (rows two columns select)
        runs.append((t.net.params, t.optimizer))
    (pa_, oa), (pb, ob) = runs
    for k in pa_:  # (sums in another order: float64 rounding apart)
        np.testing.assert_allclose(pa_[k], pb[k], rtol=1e-9, atol=1e-12, err_msg=k)
    if optimizer == "adam":
        assert oa.t == ob.t == 2 * 500
        for k in pa_:
            np.testing.assert_allclose(oa.m[k], ob.m[k], rtol=1e-9, atol=1e-12, err_msg=k)
            np.testing.assert_allclose(oa.v[k], ob.v[k], rtol=1e-9, atol=1e-15, err_msg=k)
        untouched = (oa.v["W1"] == 0).all(axis=1)  # (lazy: a row no code selected has neither moved nor moments)
        np.testing.assert_array_equal(untouched, (ob.v["W1"] == 0).all(axis=1))


def test_the_online_loop_of_lazy_adam_stops_before_a_row_whose_loss_is_not_finite():
    # the loop stops before the row's step; the block is given back whole, as PerSampleSGD's: the
    # parameters, moments and step count before it
    from streamtrain.config import TrainConfig
    from streamtrain.model import Model
    from streamtrain.nn.optim import Adam
    from streamtrain.train.update import PerSampleAdam

    layout = InputLayout([0], [0], [1, 2], [1, 41], [40, 40])

    def stepper():
        net = TwoLayerNet(3, 4, 1, seed=1, dtype="float64", task="regression", layout=layout)
        model = Model(net, None, None, [], None, None)
        model.labels = type("L", (), {"task": "regression"})()
        return PerSampleAdam(TrainConfig(hidden=4, batch_size=1, optimizer="adam", lr=0.01, dtype="float64"), model,
                             Adam(0.01)), net

    X = np.array([[0.5, 3, 7], [1.0, 7, 7], [1e200, 3, 9], [2.0, 3, 1]])
    T = np.array([0.5, -1.0, 1e200, 0.0])
    from streamtrain.nn import online

    step, net = stepper()
    step.update(X[:1], T[:1])  # (a good block first: moments that are not zeros)
    before = ({k: v.copy() for k, v in net.params.items()}, {k: v.copy() for k, v in step.optimizer.m.items()},
              {k: v.copy() for k, v in step.optimizer.v.items()})
    p, m, v = ({k: a.copy() for k, a in d.items()} for d in before)
    S = np.array([[0.01 / (1 - 0.9 ** t), 1 - 0.999 ** t] for t in range(2, 6)])
    assert online.adam_online_codes(p, layout, X, T, S, m, v, 0.9, 0.999, 1e-8, "relu", "regression")[2] == 2
    out = step.update(X, T)
    assert np.isnan(out.loss_sum) and step.optimizer.t == 1
    for now, then in zip((net.params, step.optimizer.m, step.optimizer.v), before):
        for k in then:
            np.testing.assert_array_equal(now[k], then[k], err_msg=k)


def test_online_lazy_adam_over_codes_killed_mid_epoch_resumes_bitwise(tmp_path):
    from .test_decay import killed_and_resumed

    flights(400).to_parquet(tmp_path / "f.parquet")
    args = [str(BIN), "train", str(tmp_path / "f.parquet"), "--label", "status", "--hidden", "6", "--batch-size", "1",
            "--optimizer", "adam", "--one-hot-max", "0", "--hash", "flight_id:512", "--epochs", "3", "--quiet"]
    # a checkpoint every 170 rows; "the process died there": every one after epoch 2's middle removed, then resumed
    a, b = killed_and_resumed(args, tmp_path, 170, 510)
    assert "optim.m.W1" in a and int(a["optim.t"]) == 3 * 400
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lazy_adam_in_two_halves_gives_one_thread_s_values_bitwise(dtype):
    import threading

    from streamtrain.nn import sparse_compiled as sc

    rng = np.random.default_rng(1)
    p = rng.standard_normal((50_000, 64)).astype(dtype)
    m, v = (rng.standard_normal(p.shape).astype(dtype) ** 2 for _ in range(2))
    rows = np.unique(rng.integers(0, len(p), 3 * sc.SPLIT_ROWS))
    g = rng.standard_normal((rows.size, 64)).astype(dtype)
    one = [a.copy() for a in (p, m, v)]
    s = np.array([0.9, 1.0 - 0.9, 0.999, 1.0 - 0.999, 1e-3 / 0.1, 0.05, 1e-8], dtype)  # (as adam_rows makes them)
    sc._adam_rows(*one, rows, g, s)  # the whole, on this thread
    two = [a.copy() for a in (p, m, v)]
    sc.adam_rows(*two, rows, g, 0.9, 0.999, 1e-3 / 0.1, 0.05, 1e-8)
    assert any(t.name == "streamtrain-lane" for t in threading.enumerate())  # (it did take half)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    with sc.SECOND.lock:  # another caller holds the helper: this one does both halves itself
        three = [a.copy() for a in (p, m, v)]
        sc.adam_rows(*three, rows, g, 0.9, 0.999, 1e-3 / 0.1, 0.05, 1e-8)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_block_whose_loss_is_finite_but_reaches_an_infinite_weight_gives_its_rows_back(dtype):
    from streamtrain.nn.sparse_compiled import rows_finite, take_rows
    from streamtrain.train.update import _gave_back, _kept

    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((5000, 64)).astype(dtype), "b1": np.zeros(64, dtype)}
    rows = np.array([3, 17, 4095, 4999], np.intp)
    np.testing.assert_array_equal(take_rows(params["W1"], rows), params["W1"][rows])
    assert rows_finite(params["W1"], rows) and rows_finite(params["W1"], rows[:0])
    before = _kept(params, rows)
    assert not _gave_back(params, rows, before, 1.5)
    good = params["W1"].copy()
    for bad in (np.inf, -np.inf, np.nan):
        params["W1"][4095, 63] = bad  # (the last column of a row: the check's tail)
        params["W1"][[3, 17]] += 1.0
        assert not rows_finite(params["W1"], rows) and rows_finite(params["W1"], rows[[0, 1, 3]])
        assert _gave_back(params, rows, before, 1.5)  # a finite loss: the weights tell
        np.testing.assert_array_equal(params["W1"], good)


@pytest.mark.parametrize("l2", [0.0, 1e-9])
def test_a_diverged_online_block_over_codes_leaves_the_last_good_weights(l2):
    from streamtrain.config import TrainConfig
    from streamtrain.model import Model
    from streamtrain.nn.optim import SGD
    from streamtrain.train.update import PerSampleSGD

    layout = InputLayout([0], [0], [1], [1], [40])
    net = TwoLayerNet(2, 4, 1, seed=1, dtype="float64", task="regression", layout=layout)
    model = Model(net, None, None, [], None, None)
    model.labels = type("L", (), {"task": "regression"})()
    step = PerSampleSGD(TrainConfig(hidden=4, batch_size=1, optimizer="sgd", lr=1e6, l2=l2, dtype="float64"), model,
                        SGD(1e6))
    assert (step.decay is not None) == bool(l2)
    if l2:  # a good block first: rows fall behind (stamps), which the diverged block must give back too
        step.update(np.array([[0.0, 5]]), np.array([0.0]))
        assert (step.decay.stamp != step.decay.scale).sum() == 39
    X = np.array([[1e200, 3], [1e200, 7], [2.0, 3]])
    before = {k: v.copy() for k, v in net.params.items()}
    stamps = None if step.decay is None else (step.decay.stamp.copy(), step.decay.scale)
    out = step.update(X, np.array([1e200, -1e200, 0.0]))
    assert np.isnan(out.loss_sum)
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k], err_msg=k)
    if stamps is not None:
        np.testing.assert_array_equal(step.decay.stamp, stamps[0])
        assert step.decay.scale == stamps[1]
