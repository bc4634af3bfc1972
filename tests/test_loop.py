"""The training loop and its hooks, the gradient seam, a knob added once, and a run's lifecycle:
one run per checkpoint directory, early stopping's restored model everywhere, --resume alone,
fit twice, options that would do nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamtrain import ConfigError, TrainConfig, Trainer, make_data
from streamtrain.io.checkpoint import load_checkpoint
from streamtrain.io.resolve import list_checkpoints
from streamtrain.train.hooks import Every, Hook

from .conftest import DATA

BIN = Path(sys.executable).with_name("streamtrain")


def _data(rows=600, features=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)


class Record(Hook):
    """Every event, with the step count it saw."""

    def __init__(self, every=None):
        if every is not None:
            self.every = every
        self.events, self.steps = [], []

    def on_train_begin(self, t):
        self.events.append("train_begin")

    def on_epoch_begin(self, t):
        self.events.append("epoch_begin")

    def on_batch_end(self, t, rows, loss):
        self.steps.append(t.global_step)

    def on_epoch_end(self, t, record):
        self.events.append(f"epoch_end {record['epoch']}")

    def on_train_end(self, t):
        self.events.append("train_end")


# -- hooks -------------------------------------------------------------------------------------------
def test_hooks_see_the_events_in_order():
    hook = Record()
    Trainer(hidden=3, epochs=2, batch_size=100).fit(_data(), callbacks=[hook], log=None)
    assert hook.events == ["train_begin", "epoch_begin", "epoch_end 1", "epoch_begin", "epoch_end 2", "train_end"]
    assert hook.steps == list(range(1, 13))  # every batch by default


@pytest.mark.parametrize("k", [1, 7, 250])
def test_a_hook_every_k_steps_at_batch_size_1_sees_exact_steps_and_the_loop_keeps_its_blocks(k):
    hook = Record(Every(steps=k))
    t = Trainer(hidden=3, epochs=2, batch_size=1)
    t.fit(_data(), callbacks=[hook], log=None)
    assert t.stepper.blocks  # the compiled per-sample loop, whatever the hook asks
    assert hook.steps == list(range(k, 1201, k))


def test_a_hook_every_few_seconds_keeps_batch_size_1_in_blocks():
    hook = Record(Every(seconds=3600))
    blocks = Record(Every(always=True))
    t = Trainer(hidden=3, epochs=1, batch_size=1)
    t.fit(_data(rows=3000), callbacks=[hook, blocks], log=None)
    assert t.stepper.blocks and hook.steps == []  # not due within the hour
    assert len(blocks.steps) < 10 and blocks.steps[-1] == 3000  # a few blocks of rows, not 3000 calls


def test_a_hook_stops_training_and_the_checkpoint_holds_that_moment(tmp_path):
    class StopAt(Hook):
        def on_batch_end(self, t, rows, loss):
            if t.global_step == 5:
                t.stop("enough")

    t = Trainer(hidden=3, epochs=3, batch_size=50)
    t.fit(_data(), checkpoint_dir=tmp_path, callbacks=[StopAt()], log=None)
    assert t.global_step == 5 and t.stop_requested == "enough"
    _, meta = load_checkpoint(list_checkpoints(tmp_path)[0])
    assert meta["state"]["global_step"] == 5 and meta["state"]["sampler"]["position"] == 250


def test_the_progress_bar_keeps_batch_size_1_on_the_compiled_loop(monkeypatch):
    import io

    from streamtrain.train.hooks import ProgressBar

    t = Trainer(hidden=3, epochs=2, batch_size=1)
    bar = ProgressBar(file=io.StringIO())
    t.fit(_data(rows=3000), callbacks=[bar], log=None)
    assert t.stepper.blocks


@pytest.mark.parametrize("extra", [[], ["--val-fraction", "0.2"], ["--checkpoint-seconds", "3600"]])
def test_batch_size_1_from_the_cli_keeps_the_loaders_blocks_with_a_checkpoint_directory(extra, tmp_path, monkeypatch):
    """A CLI run always has a checkpoint directory (and the divergence guard, the progress lines,
    perhaps validation): none of them may cut the compiled per-sample loop into one-row calls."""
    from click.testing import CliRunner

    from streamtrain.cli import cli
    from streamtrain.nn import online

    calls: list[int] = []
    compiled = online.sgd_online

    def counted(params, X, *args, **kw):
        calls.append(len(X))
        return compiled(params, X, *args, **kw)

    monkeypatch.setattr(online, "sgd_online", counted)
    X, y = _data(rows=6000)
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"], f["y"] = X, y
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "d.h5"), "--batch-size", "1", "--hidden", "4",
                                   "--epochs", "2", "--checkpoint-dir", str(tmp_path / "run"), *extra],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    trained = sum(json.loads(line)["samples"] for line in (tmp_path / "run" / "metrics.jsonl").open())
    assert sum(calls) == trained >= 2 * 4500
    # a few blocks per epoch, as long as the loader's items (not one compiled call per row)
    assert len(calls) <= 2 * 8 and max(calls) >= 1000, calls


def test_a_hook_with_every_none_is_never_called_per_batch():
    class Never(Record):
        every = None

    hook, blocks = Never(), Record(Every(always=True))
    t = Trainer(hidden=3, epochs=1, batch_size=1)
    t.fit(_data(rows=3000), callbacks=[hook, blocks], log=None)
    assert hook.steps == [] and len(blocks.steps) < 10


# -- the gradient seam ---------------------------------------------------------------------------------
class TwoIdenticalRanks:
    """A communicator as if a second process had the same rows: the sums double, the means do not."""

    rank, size, name = 0, 2, "test"

    def allreduce(self, buffer):
        buffer *= 2
        return buffer

    def allgatherv(self, buffer, counts):
        return np.concatenate([buffer, buffer])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("reg", [(0.0, 0.0), (0.01, 0.02)])
def test_gradients_through_a_reduction_update_as_the_one_process_step(optimizer, reg):
    from streamtrain.model import Model
    from streamtrain.nn.network import TwoLayerNet
    from streamtrain.train.state import make_run_optimizer
    from streamtrain.train.update import FusedSGD, ReducedStep, choose_update

    cfg = TrainConfig(hidden=6, optimizer=optimizer, l1=reg[0], l2=reg[1], dtype="float64", lr=0.05)
    X, y = _data(rows=64)
    X = X.astype(np.float64)
    nets = []
    for comm in (None, TwoIdenticalRanks()):
        net = TwoLayerNet(5, 6, 1, seed=3, dtype="float64")
        model = Model(net, None, None, [], None, None)
        model.labels = type("L", (), {"task": "binary"})()
        step = choose_update(cfg, model, make_run_optimizer(cfg), **({} if comm is None else {"comm": comm}))
        assert isinstance(step, ReducedStep) == (comm is not None)
        assert isinstance(step, FusedSGD) == (comm is None and optimizer == "sgd")
        losses = [step.update(X[a:a + 16], y[a:a + 16]).loss for a in range(0, 64, 16)]
        nets.append((net, losses))
    (a, la), (b, lb) = nets
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("how,gathered", [("auto", 4), ("gather", 4), ("allreduce", 0)])
def test_rows_of_codes_through_a_reduction_update_as_the_one_process_step(optimizer, how, gathered):
    from streamtrain.model import Model
    from streamtrain.nn.network import InputLayout, TwoLayerNet
    from streamtrain.train.state import make_run_optimizer
    from streamtrain.train.update import GradientStep, ReducedStep

    cfg = TrainConfig(hidden=6, optimizer=optimizer, dtype="float64", lr=0.05, sparse_reduce=how)
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.standard_normal(64), rng.integers(0, 50, 64), rng.integers(0, 30, 64)])
    y = (X[:, 0] + (X[:, 1] < 20) > 0.5).astype(int)
    nets = []
    for cls, comm in ((GradientStep, None), (ReducedStep, TwoIdenticalRanks())):
        layout = InputLayout([0], [0], [1, 2], [1, 51], [50, 30])
        net = TwoLayerNet(3, 6, 1, seed=3, dtype="float64", layout=layout)
        model = Model(net, None, None, [], None, None)
        model.labels = type("L", (), {"task": "binary"})()
        step = cls(cfg, model, make_run_optimizer(cfg), **({} if comm is None else {"comm": comm}))
        assert step.sparse
        losses = [step.update(X[a:a + 16], y[a:a + 16]).loss for a in range(0, 64, 16)]
        nets.append((net, losses))
    assert step.gathered_steps == gathered
    (a, la), (b, lb) = nets
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    untouched = np.setdiff1d(np.arange(81), np.r_[0, X[:, 1] + 1, X[:, 2] + 51].astype(int))
    assert len(untouched)  # rows no batch selected: left as they were, by both
    np.testing.assert_array_equal(a.params["W1"][untouched], b.params["W1"][untouched])
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12)


def _table_step(cls, cfg, comm=None):
    from streamtrain.model import Model
    from streamtrain.nn.network import InputLayout, TwoLayerNet
    from streamtrain.train.state import make_run_optimizer

    layout = InputLayout([0], [0], [1, 2], [1, 51], [50, 30])
    net = TwoLayerNet(3, 6, 1, seed=3, dtype="float64", layout=layout)
    model = Model(net, None, None, [], None, None)
    model.labels = type("L", (), {"task": "binary"})()
    return net, cls(cfg, model, make_run_optimizer(cfg), **({} if comm is None else {"comm": comm}))


def _table_rows(n=64, seed=5):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.standard_normal(n), rng.integers(0, 50, n), rng.integers(0, 30, n)])
    return X, (X[:, 0] + (X[:, 1] < 20) > 0.5).astype(int)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.02), (0.01, 0.0), (0.01, 0.02)])
def test_lazy_adam_with_a_penalty_equals_a_hand_written_reference(l1, l2, monkeypatch):
    # The table's rows a step touched get the penalty's gradient and advance their moments; the
    # others are left as they were (TensorFlow's LazyAdam with a penalty on the gathered rows).
    # The loss reported is the data loss plus the whole penalty, though the step tracks its sum
    # over the table from the touched rows' change (summed whole every REFRESH steps).
    from streamtrain.train import update
    from streamtrain.train.update import GradientStep

    monkeypatch.setattr(update.TablePenalty, "REFRESH", 3)
    cfg = TrainConfig(hidden=6, optimizer="adam", dtype="float64", lr=0.05, l1=l1, l2=l2)
    net, step = _table_step(GradientStep, cfg)
    ref, _ = _table_step(GradientStep, cfg)
    assert step.sparse and step.penalty is not None
    X, y = _table_rows(160)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.05
    m = {k: np.zeros_like(v) for k, v in ref.params.items()}
    v = {k: np.zeros_like(a) for k, a in ref.params.items()}
    for t, a in enumerate(range(0, 160, 16), start=1):
        Xb, yb = X[a:a + 16], y[a:a + 16]
        data_loss, _, g = ref.loss_and_grads(Xb, yb)  # dense, no penalty: zeros on rows not touched
        want = data_loss + ref.penalty(l1, l2)
        touched = np.unique(np.r_[0, Xb[:, 1] + 1, Xb[:, 2] + 51].astype(int))
        got = step.update(Xb, yb, step=t - 1).loss
        np.testing.assert_allclose(got, want, rtol=1e-11)
        for k in ref.params:
            rows = touched if k == "W1" else slice(None)
            p = ref.params[k][rows]
            gk = g[k][rows] + (l2 * p + l1 * np.sign(p) if k in ("W1", "W2") else 0)
            m[k][rows] = b1 * m[k][rows] + (1 - b1) * gk
            v[k][rows] = b2 * v[k][rows] + (1 - b2) * gk * gk
            ref.params[k][rows] = p - lr / (1 - b1**t) * m[k][rows] / (np.sqrt(v[k][rows] / (1 - b2**t)) + eps)
    for k in ref.params:
        np.testing.assert_allclose(net.params[k], ref.params[k], rtol=1e-10, atol=1e-13, err_msg=k)
    never = np.setdiff1d(np.arange(81), np.r_[0, X[:, 1] + 1, X[:, 2] + 51].astype(int))
    assert len(never) and np.array_equal(net.params["W1"][never], _table_step(GradientStep, cfg)[0].params["W1"][never])


@pytest.mark.parametrize("optimizer,l1", [("momentum", 0.003), ("sgd", 0.0)])
@pytest.mark.parametrize("how", ["gather", "allreduce"])
def test_lazy_penalties_through_a_reduction_equal_the_one_process_step(how, optimizer, l1):
    from streamtrain.train.update import GradientStep, ReducedStep

    cfg = TrainConfig(hidden=6, optimizer=optimizer, dtype="float64", lr=0.05, l1=l1, l2=0.02, sparse_reduce=how)
    X, y = _table_rows()
    (a, one), (b, two) = _table_step(GradientStep, cfg), _table_step(ReducedStep, cfg, TwoIdenticalRanks())
    assert one.sparse and two.sparse and (one.decay is not None) == (optimizer == "sgd")
    la = [one.update(X[i:i + 16], y[i:i + 16], step=i // 16).loss for i in range(0, 64, 16)]
    lb = [two.update(X[i:i + 16], y[i:i + 16], step=i // 16).loss for i in range(0, 64, 16)]
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    one.settle()
    two.settle()
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_plain_sgd_with_l2_decays_every_row_lazily_and_with_l1_updates_every_row():
    from streamtrain.train.update import GradientStep

    X, y = _table_rows(16)
    never = np.setdiff1d(np.arange(81), np.r_[0, X[:, 1] + 1, X[:, 2] + 51].astype(int))
    for l1, lazy in ((0.0, True), (0.01, False)):
        cfg = TrainConfig(hidden=6, optimizer="sgd", dtype="float64", lr=0.05, l1=l1, l2=0.02)
        net, step = _table_step(GradientStep, cfg)
        assert step.sparse == lazy and (step.decay is not None) == lazy
        before = net.params["W1"].copy()
        step.update(X, y)
        if lazy:  # left as they were, until read whole
            np.testing.assert_array_equal(net.params["W1"][never], before[never])
            step.settle()
        want = before[never] * (1 - 0.05 * 0.02) - 0.05 * l1 * np.sign(before[never])
        np.testing.assert_allclose(net.params["W1"][never], want, rtol=1e-12)


# -- a knob is added once --------------------------------------------------------------------------------
def test_every_setting_has_a_cli_option_with_help_and_every_option_a_setting():
    import dataclasses

    from streamtrain.cli.train import train
    from streamtrain.nn.optim import HYPERPARAMETERS

    options = {p.name: p for p in train.params if p.name not in ("data", "config")}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    expected = (fields - {"optimizer_params"}) | {f"hp_{h}" for h in HYPERPARAMETERS}
    run_options = {"features", "label", "val", "weight", "checkpoint_dir", "resume", "overwrite", "force", "quiet",
                   "as_json", "distributed", "mlflow_uri", "log_every"}
    assert set(options) - run_options == expected
    for name, p in options.items():
        assert p.help and len(p.help) > 10, name


def test_the_library_refuses_what_the_cli_refuses():
    for bad in (dict(hidden=0), dict(lr=-1), dict(lr=float("nan")), dict(activation="gelu"), dict(seed=-5),
                dict(optimizer_params={"momentum": 0.5})):
        with pytest.raises(ConfigError):
            Trainer(**bad)


def test_adam_takes_its_own_learning_rate_unless_one_is_given():
    assert Trainer(optimizer="adam").config.learning_rate == 0.003
    assert Trainer(optimizer="sgd").config.learning_rate == 0.1
    # the default optimiser: adam, and plain SGD for online learning (batch size 1)
    assert Trainer().config.optimizer == "adam" and Trainer(batch_size=1).config.optimizer == "sgd"
    assert Trainer(optimizer="adam", lr=0.01).config.learning_rate == 0.01


# -- a run's lifecycle --------------------------------------------------------------------------------------
def _cli(*args, **kw):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, **kw)


def test_a_directory_holds_one_run(tmp_path):
    ck = tmp_path / "run"
    assert _cli("train", DATA / "breast_cancer.h5", "--epochs", 3, "--hidden", 4, "--checkpoint-dir", ck).returncode == 0
    before = sorted(p.name for p in ck.iterdir())
    again = _cli("train", DATA / "digits.h5", "--epochs", 1, "--checkpoint-dir", ck)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "--resume" in again.stderr and "--overwrite" in again.stderr
    assert sorted(p.name for p in ck.iterdir()) == before  # nothing of the old run touched
    new = _cli("train", DATA / "digits.h5", "--epochs", 1, "--checkpoint-dir", ck, "--overwrite")
    assert new.returncode == 0, new.stderr
    info = json.loads(_cli("inspect", ck, "--json").stdout)
    assert info["model"]["n_in"] == 64 and [h["epoch"] for h in info["history"]] == [1]
    assert [p.name for p in list_checkpoints(ck)] == [f"ckpt-{int(np.ceil(1797 / 32)):012d}.npz"]


def test_early_stopping_leaves_the_best_model_everywhere(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20))
    y = rng.integers(0, 2, 300)  # noise: the validation loss soon rises
    t = Trainer(hidden=64, epochs=200, lr=0.5, val_fraction=0.3, early_stopping=3)
    history = t.fit((X, y), checkpoint_dir=tmp_path, log=None)
    best = min(history, key=lambda h: h["val_loss"])
    assert len(history) == best["epoch"] + 3 and t.state.restored_best == best["epoch"]
    assert t.summary == best
    loaded = Trainer.load(tmp_path)  # the final checkpoint on disk
    for k in t.net.params:
        np.testing.assert_array_equal(loaded.net.params[k], t.net.params[k])
    from streamtrain import ArrayDataset
    from streamtrain.readers.subset import HoldoutSplit

    val = HoldoutSplit(ArrayDataset(X, y, dtype="float32"), 0.3, 0, "val")
    assert loaded.evaluate(val)["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert loaded.state.restored_best == best["epoch"]


def test_the_summary_line_shows_the_best_epoch(tmp_path):
    rng = np.random.default_rng(0)
    import pandas as pd

    pd.DataFrame({**{f"x{j}": rng.standard_normal(300) for j in range(20)},
                  "y": rng.integers(0, 2, 300)}).to_parquet(tmp_path / "noise.parquet")
    res = _cli("train", tmp_path / "noise.parquet", "--hidden", 64, "--epochs", 200, "--lr", 0.5, "--val-fraction", 0.3,
               "--early-stopping", 3, "--checkpoint-dir", tmp_path / "ck")
    assert res.returncode == 0, res.stderr
    best = min((json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()),
               key=lambda h: h["val_loss"])
    assert f"model of epoch {best['epoch']}" in res.stdout and f"val_loss {best['val_loss']:.4f}" in res.stdout
    ev = json.loads(_cli("evaluate", tmp_path / "ck", tmp_path / "noise.parquet", "--split", "val", "--json").stdout)
    assert ev["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_resume_alone_continues_the_run_with_its_settings(tmp_path):
    ck = tmp_path / "run"
    data = DATA / "breast_cancer.h5"
    first = _cli("train", data, "--hidden", 5, "--batch-size", 16, "--lr", 0.05, "--epochs", 2,
                 "--val-fraction", 0.2, "--checkpoint-dir", ck)
    assert first.returncode == 0, first.stderr
    more = _cli("train", data, "--checkpoint-dir", ck, "--resume", "--epochs", 4)
    assert more.returncode == 0, more.stderr
    assert "epoch 3/4" in more.stderr and "trained 4 epochs" in more.stdout
    config = json.loads(_cli("inspect", ck, "--json").stdout)["config"]
    assert (config["hidden"], config["batch_size"], config["lr"], config["epochs"]) == (5, 16, 0.05, 4)
    changed = _cli("train", data, "--checkpoint-dir", ck, "--resume", "--epochs", 5, "--lr", 0.5)
    assert changed.returncode == 2 and "lr: 0.05 -> 0.5" in changed.stderr and "--force" in changed.stderr
    forced = _cli("train", data, "--checkpoint-dir", ck, "--resume", "--epochs", 5, "--lr", 0.5, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(_cli("inspect", ck, "--json").stdout)["config"]["lr"] == 0.5


def test_resume_is_bitwise_the_run_that_never_stopped_with_settings_from_the_checkpoint(tmp_path):
    args = dict(hidden=5, batch_size=8, epochs=3, optimizer="momentum", optimizer_params={"momentum": 0.8}, lr=0.02)
    ref = Trainer(**args)
    ref.fit(_data(), checkpoint_dir=tmp_path / "ref", log=None)

    class StopAt(Hook):
        def on_batch_end(self, t, rows, loss):
            if t.global_step == 100:
                t.stop("test")

    Trainer(**args).fit(_data(), checkpoint_dir=tmp_path / "run", callbacks=[StopAt()], log=None)
    again = Trainer()  # nothing given: every setting from the checkpoint
    again.fit(_data(), checkpoint_dir=tmp_path / "run", resume=True, log=None)
    assert again.config == ref.config
    for k in ref.net.params:
        np.testing.assert_array_equal(again.net.params[k], ref.net.params[k])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # one run's lines, each once


def test_the_interrupt_message_says_how_to_resume(tmp_path):
    make_data(tmp_path / "d.h5", rows=200_000, features=16)
    proc = subprocess.Popen([str(BIN), "train", str(tmp_path / "d.h5"), "--epochs", "20", "--checkpoint-dir",
                             str(tmp_path / "ck")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list_checkpoints(tmp_path / "ck") and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"continue with: streamtrain train {tmp_path / 'd.h5'} --checkpoint-dir {tmp_path / 'ck'} --resume" in err


def test_fit_twice_starts_a_new_run_each_time():
    t = Trainer(hidden=4, epochs=3, batch_size=32)
    first = [h["train_loss"] for h in t.fit(_data(), log=None)]
    w_first = {k: v.copy() for k, v in t.net.params.items()}
    second = t.fit(_data(), log=None)
    assert [h["epoch"] for h in second] == [1, 2, 3] and [h["train_loss"] for h in second] == first
    for k in w_first:
        np.testing.assert_array_equal(t.net.params[k], w_first[k])  # the same run again, not a continuation


@pytest.mark.parametrize("args,message", [
    (["--early-stopping", "3"], "early_stopping needs validation data"),
    (["--keep-best"], "keep_best needs validation data"),
    (["--momentum", "0.5"], "momentum: does nothing with optimizer 'adam' (it applies to momentum, nesterov)"),
    (["--optimizer", "momentum", "--beta1", "0.8"], "beta1: does nothing with optimizer 'momentum'"),
])
def test_options_that_would_do_nothing_are_refused_before_reading_data(args, message, tmp_path):
    res = _cli("train", DATA / "breast_cancer.h5", *args, "--checkpoint-dir", tmp_path / "ck")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not list_checkpoints(tmp_path / "ck")


def test_a_checkpoint_stays_the_same_size_however_long_the_run(tmp_path):
    t = Trainer(hidden=4, epochs=60, batch_size=256, keep=100)
    t.fit(_data(rows=256), checkpoint_dir=tmp_path, log=None)
    sizes = {p.stat().st_size for p in list_checkpoints(tmp_path)}
    assert len(list_checkpoints(tmp_path)) == 60 and max(sizes) - min(sizes) < 64  # a number's digits at most


def test_load_predicts_as_the_trainer_that_wrote_the_directory(tmp_path):
    X, y = _data()
    t = Trainer(hidden=6, epochs=3)
    t.fit((X, y), checkpoint_dir=tmp_path, log=None)
    np.testing.assert_array_equal(Trainer.load(tmp_path).predict_proba(X), t.predict_proba(X))


@pytest.mark.parametrize("batch_size", [1, 16])
def test_a_loaded_model_goes_on_learning_with_partial_fit(batch_size, tmp_path):
    X, y = _data()
    t = Trainer(hidden=3, epochs=1, batch_size=batch_size)
    t.fit((X, y), checkpoint_dir=tmp_path / "run", log=None)
    loaded = Trainer.load(tmp_path / "run")
    before = loaded.net.params["W1"].copy()
    loaded.partial_fit(X[:100], y[:100])
    assert loaded.global_step > t.global_step and not np.array_equal(loaded.net.params["W1"], before)
