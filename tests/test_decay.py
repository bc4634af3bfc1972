"""Plain SGD's L2 penalty over a table of codes, applied lazily (``nn/decay.py``): a row a step did
not touch decays when it is next touched or the table is read whole; the result is the dense
update's (within float64 roundings), a resumed run the uninterrupted one bitwise, and every reader
of a checkpoint sees the table up to date."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtrain import CheckpointError, Trainer
from streamtrain.io.checkpoint import load_checkpoint, save_checkpoint
from streamtrain.io.resolve import list_checkpoints
from streamtrain.nn.decay import LazyDecay
from streamtrain.train.hooks import Hook
from streamtrain.train.schema import TRAINER

from .test_tabular import flights

BIN = Path(sys.executable).with_name("streamtrain")

# flight_id hashed into 512 rows: most rows are touched by a few batches of an epoch, and skipped by most
SETTINGS = dict(hidden=6, batch_size=16, optimizer="sgd", lr=0.2, l2=0.05, one_hot_max=0, hash="flight_id:512",
                seed=4)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("decay") / "f.parquet"
    flights(1200).to_parquet(path, row_group_size=400)
    return str(path)


def test_skipped_steps_decay_a_row_by_their_product():
    # 3,000 steps of varying factors (a schedule's), each touching a few of 40 rows and adding to
    # them; the reference multiplies every row by every step's factor, one at a time, in float64.
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 5))
    ref, params = W.copy(), {"W1": W.copy()}
    decay = LazyDecay(params)
    LazyDecay.FLOOR, floor = 1e-3, LazyDecay.FLOOR  # (several settles on the way)
    try:
        for t in range(3000):
            f = 1.0 - 0.01 * (1.0 + np.sin(t / 50.0))
            rows = np.unique(rng.integers(0, 40, 3))
            decay.catch_up(rows)
            np.testing.assert_allclose(params["W1"][rows], ref[rows], rtol=1e-12, atol=1e-15)
            g = rng.standard_normal((len(rows), 5)) * 0.01
            ref *= f
            ref[rows] -= g
            params["W1"][rows] = params["W1"][rows] * f - g  # the step: the rows touched, penalty included
            decay.advance(f, rows)
    finally:
        LazyDecay.FLOOR = floor
    assert decay.settles >= 2
    assert not np.allclose(params["W1"], ref, rtol=1e-3)  # raw: rows are behind
    np.testing.assert_allclose(decay.materialised(), ref, rtol=1e-12, atol=1e-15)
    decay.settle()
    np.testing.assert_allclose(params["W1"], ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_catch_up_and_sums_are_numpy_s(dtype):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((300, 7)).astype(dtype)
    stamp = np.sort(rng.uniform(0.2, 1.0, 300))
    decays, rows = [], np.unique(rng.integers(0, 300, 90))
    for compiled in (True, False):
        d = LazyDecay({"W1": W.copy()}, stamp, 0.2)
        d.compiled = compiled
        sums = d.sums(rows), d.sums()
        d.catch_up(rows)
        decays.append((d, sums))
    (a, sa), (b, sb) = decays
    np.testing.assert_array_equal(a.params["W1"], b.params["W1"])
    np.testing.assert_array_equal(a.stamp, b.stamp)
    assert not np.array_equal(a.params["W1"], W)
    np.testing.assert_allclose(sa, sb, rtol=1e-13)


class _Watch(Hook):
    """Records, after each batch, how many rows of the table are behind (not up to date)."""

    def __init__(self):
        self.behind = []

    def on_batch_end(self, t, rows, loss):
        d = t.stepper.decay
        self.behind.append(int((d.stamp != d.scale).sum()))


@pytest.mark.parametrize("schedule,batch_size", [("constant", 16), ("cosine", 16), ("invscaling", 1)])
def test_lazy_l2_equals_the_dense_update_in_float64(table, schedule, batch_size):
    # (batch size 1: the compiled per-sample loop, against numpy's dense step)
    from streamtrain.train.update import GradientStep, PerSampleSGD

    runs, watch = [], _Watch()
    settings = {**SETTINGS, "batch_size": batch_size, **({"lr": 0.02} if batch_size == 1 else {})}
    for dense in (False, True):
        t = Trainer(**settings, epochs=3 if batch_size > 1 else 2, dtype="float64", lr_schedule=schedule,
                    dense_updates=dense)
        t.fit(table, label="status", log=None, callbacks=[] if dense else [watch])
        assert (t.stepper.decay is None) == dense
        assert isinstance(t.stepper, PerSampleSGD if batch_size == 1 and not dense else GradientStep)
        runs.append(t)
    lazy, dense = runs
    assert max(watch.behind) > 400  # most rows were left behind mid-epoch: the update was lazy
    # (the compiled loop sums in its own order, as it does without a penalty: float64 rounding apart)
    rtol, atol = (1e-12, 1e-15) if batch_size > 1 else (1e-10, 1e-13)
    for k in dense.net.params:
        np.testing.assert_allclose(lazy.net.params[k], dense.net.params[k], rtol=rtol, atol=atol, err_msg=k)
    np.testing.assert_allclose([h["train_loss"] for h in lazy.history], [h["train_loss"] for h in dense.history],
                               rtol=1e-12)


def test_lazy_l2_in_float32_stays_within_float32_rounding_of_the_dense_update(table):
    lazy, dense = (Trainer(**SETTINGS, epochs=2, dense_updates=d) for d in (False, True))
    for t in (lazy, dense):
        t.fit(table, label="status", log=None)
    for k in dense.net.params:
        np.testing.assert_allclose(lazy.net.params[k], dense.net.params[k], rtol=2e-5, atol=1e-6, err_msg=k)


class _StopAt(Hook):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, t, rows, loss):
        if t.global_step == self.step:
            t.stop("test")


def test_a_run_stopped_mid_epoch_resumes_bitwise_and_its_checkpoint_holds_the_table_up_to_date(table, tmp_path):
    ref = Trainer(**SETTINGS, epochs=3, dtype="float64")
    ref.fit(table, label="status", checkpoint_dir=tmp_path / "ref", log=None)
    Trainer(**SETTINGS, epochs=3, dtype="float64").fit(table, label="status", checkpoint_dir=tmp_path / "run",
                                                       callbacks=[_StopAt(100)], log=None)  # epoch 2 of 3, mid-way
    arrays, meta = load_checkpoint(list_checkpoints(tmp_path / "run")[0], TRAINER)
    assert meta["state"]["global_step"] == 100 and {"optim.raw.W1", "optim.stamp", "optim.scale"} <= set(arrays)
    behind = arrays["optim.scale"] / arrays["optim.stamp"]
    assert (behind < 1).sum() > 400
    np.testing.assert_array_equal(arrays["param.W1"], arrays["optim.raw.W1"] * behind[:, None])
    # what every reader takes: the dense update's table at that step
    dense = Trainer(**SETTINGS, epochs=3, dtype="float64", dense_updates=True)
    dense.fit(table, label="status", checkpoint_dir=tmp_path / "dense", callbacks=[_StopAt(100)], log=None)
    np.testing.assert_allclose(arrays["param.W1"], dense.net.params["W1"], rtol=1e-12, atol=1e-15)
    loaded = Trainer.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(table), dense.predict_proba(table), rtol=1e-10)

    again = Trainer()
    again.fit(table, label="status", checkpoint_dir=tmp_path / "run", resume=True, log=None)
    for k in ref.net.params:
        np.testing.assert_array_equal(again.net.params[k], ref.net.params[k], err_msg=k)


def killed_and_resumed(args: list, tmp_path, every: int, at: int) -> tuple[dict, dict]:
    """The last checkpoint's arrays of the command ``args`` run whole, and of the same command
    checkpointing every ``every`` steps, "killed" at step ``at`` (every later checkpoint removed)
    and resumed."""
    whole = subprocess.run([*args, "--checkpoint-dir", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr
    parts = subprocess.run([*args, "--checkpoint-dir", str(tmp_path / "parts"), "--checkpoint-every", str(every),
                            "--keep", "100"], capture_output=True, text=True, timeout=300)
    assert parts.returncode == 0, parts.stderr
    kept = sorted(list_checkpoints(tmp_path / "parts"), key=lambda p: p.name)
    mid = [p for p in kept if load_checkpoint(p, TRAINER)[1]["state"]["global_step"] == at]
    assert mid
    for p in kept:
        if p.name > mid[0].name:
            p.unlink()
    resumed = subprocess.run([*args, "--checkpoint-dir", str(tmp_path / "parts"), "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (a, _), (b, _) = (load_checkpoint(sorted(list_checkpoints(tmp_path / d), key=lambda p: p.name)[-1], TRAINER)
                      for d in ("whole", "parts"))
    return a, b


@pytest.mark.parametrize("batch_size,every,at", [(16, 7, 119), (1, 250, 1750)])
def test_a_command_killed_mid_epoch_resumes_bitwise(table, tmp_path, batch_size, every, at):
    args = [str(BIN), "train", table, "--label", "status", "--hidden", "6", "--batch-size", str(batch_size), "--lr",
            "0.2" if batch_size > 1 else "0.02",
            "--optimizer", "sgd", "--l2", "0.05", "--one-hot-max", "0", "--hash", "flight_id:512", "--epochs", "3",
            "--dtype", "float64", "--quiet"]
    # a checkpoint every few batches; "the process died there" (epoch 2, mid-way): every later one removed, then resumed
    a, b = killed_and_resumed(args, tmp_path, every, at)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("tamper,message", [
    (lambda a: a["optim.stamp"].__setitem__(3, 2.0), "array optim.stamp holds values outside [scale, 1]"),
    (lambda a: a.update({"optim.scale": np.array(0.0)}), "array optim.scale is not in [1e-100, 1]"),
    (lambda a: (a.update({"optim.scale": np.array(1e-170)}), a["optim.stamp"].fill(1e-170)), "optim.scale"),
    (lambda a: a.update({"optim.stamp": a["optim.stamp"][:-1]}), "optim.stamp"),
    (lambda a: a.pop("optim.scale"), "array optim.scale is missing"),
])
def test_a_tampered_decay_state_is_refused(table, tmp_path, tamper, message):
    Trainer(**SETTINGS, epochs=1).fit(table, label="status", checkpoint_dir=tmp_path / "r", callbacks=[_StopAt(30)],
                                      log=None)
    path = list_checkpoints(tmp_path / "r")[0]
    arrays, meta = load_checkpoint(path, TRAINER)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    tamper(arrays)
    meta = {k: v for k, v in copy.deepcopy(meta).items() if k != "format_version"}
    save_checkpoint(path, arrays, meta)
    with pytest.raises(CheckpointError, match="not a valid streamtrain checkpoint") as e:
        Trainer.load(path)
    assert message in str(e.value)


def test_l1_keeps_plain_sgd_dense_and_other_settings_take_the_saved_table(table, tmp_path):
    t = Trainer(**{**SETTINGS, "l1": 1e-3}, epochs=1)
    t.fit(table, label="status", log=None)
    assert not t.stepper.sparse and t.stepper.decay is None
    # a lazy run's checkpoint continued with Adam: the up-to-date table, the decay state left behind
    Trainer(**SETTINGS, epochs=2).fit(table, label="status", checkpoint_dir=tmp_path / "r", callbacks=[_StopAt(30)],
                                      log=None)
    arrays, _ = load_checkpoint(list_checkpoints(tmp_path / "r")[0], TRAINER)
    other = Trainer(**{**SETTINGS, "optimizer": "adam"}, epochs=2)
    other.fit(table, label="status", checkpoint_dir=tmp_path / "r", resume=True, force=True, log=None)
    assert other.stepper.decay is None
    saved, _ = load_checkpoint(sorted(list_checkpoints(tmp_path / "r"), key=lambda p: p.name)[-1], TRAINER)
    assert not any(k in saved for k in ("optim.raw.W1", "optim.stamp", "optim.scale")) and "optim.m.W1" in saved


def test_the_service_learner_publishes_and_checkpoints_the_table_up_to_date(table, tmp_path):
    # a service continuing a lazy run (--init-from): /predict's model and its checkpoints hold the
    # table brought up to date, while the learner's own stays behind; a restart continues bitwise
    from streamtrain import TrainConfig
    from streamtrain.readers import open_dataset
    from streamtrain.serve.learner import StreamLearner

    init = Trainer(**SETTINGS, epochs=1, dtype="float64")
    init.fit(table, label="status", log=None)
    init.save(tmp_path / "init.npz")
    with open_dataset(table, label="status", dtype="float64", encoding=init.model.encoding.state_dict()) as ds:
        X, y = ds.read(np.arange(ds.n_rows))
    cfg = TrainConfig(**SETTINGS, dtype="float64")

    def learner():
        return StreamLearner(cfg, list(init.model.feature_names), "status", init=Trainer.load(tmp_path / "init.npz"))

    whole = learner()
    whole.feed(X, whole.targets(y, "test"), {"row": len(X)})
    decay = whole.optimizer.decay
    assert decay is not None and (decay.stamp != decay.scale).sum() > 400
    published = whole.publish().model.net.params["W1"]
    np.testing.assert_array_equal(published, decay.materialised())
    assert not np.array_equal(published, whole.model.net.params["W1"])
    arrays, meta = whole.checkpoint_contents()
    np.testing.assert_array_equal(arrays["param.W1"], published)

    first = learner()
    first.feed(X[:700], first.targets(y[:700], "test"), {"row": 700})
    path = save_checkpoint(tmp_path / "c.npz", *first.checkpoint_contents())
    second = learner()
    second.restore(*load_checkpoint(path, TRAINER))
    second.feed(X[700:], second.targets(y[700:], "test"), {"row": len(X)})
    for k, v in whole.model.net.params.items():
        np.testing.assert_array_equal(second.model.net.params[k], v, err_msg=k)


def test_a_hook_mid_epoch_and_a_run_that_failed_read_the_table_up_to_date(table, tmp_path):
    from streamtrain import TrainingError

    class Look(Hook):
        def on_batch_end(self, t, rows, loss):
            if t.global_step == 100:
                self.seen = t.predict_proba(table)
                raise TrainingError("a hook's error")

    dense = Trainer(**SETTINGS, epochs=3, dtype="float64", dense_updates=True)
    dense.fit(table, label="status", callbacks=[_StopAt(100)], log=None)
    look, lazy = Look(), Trainer(**SETTINGS, epochs=3, dtype="float64")
    with pytest.raises(TrainingError, match="a hook's error"):
        lazy.fit(table, label="status", callbacks=[look], log=None)
    want = dense.predict_proba(table)
    np.testing.assert_allclose(look.seen, want, rtol=1e-10)  # mid-epoch, through the trainer
    np.testing.assert_allclose(lazy.net.params["W1"], dense.net.params["W1"], rtol=1e-12, atol=1e-15)  # after it
    np.testing.assert_allclose(lazy.predict_proba(table), want, rtol=1e-10)


def test_a_loaded_checkpoint_saved_again_keeps_its_decay_state(table, tmp_path):
    Trainer(**SETTINGS, epochs=2, dtype="float64").fit(table, label="status", checkpoint_dir=tmp_path / "r",
                                                       callbacks=[_StopAt(30)], log=None)
    path = list_checkpoints(tmp_path / "r")[0]
    a, _ = load_checkpoint(path, TRAINER)
    Trainer.load(path).save(tmp_path / "again.npz")
    b, _ = load_checkpoint(tmp_path / "again.npz", TRAINER)
    assert {"optim.raw.W1", "optim.stamp", "optim.scale"} <= set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_an_empty_global_batch_under_mpi_makes_no_step():
    # (every process takes part in every step, with no rows where the screen left none)
    from streamtrain import TrainConfig
    from streamtrain.train.update import ReducedStep

    from .test_loop import TwoIdenticalRanks, _table_step

    net, step = _table_step(ReducedStep, TrainConfig(hidden=6, optimizer="sgd", dtype="float64", lr=0.05, l2=0.02),
                            TwoIdenticalRanks())
    before = {k: v.copy() for k, v in net.params.items()}
    out = step.update(np.empty((0, 3)), np.empty(0, np.int64))
    assert out.rows == 0 and step.decay.scale == 1.0
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k], err_msg=k)


def test_a_table_up_to_date_is_not_copied_to_be_read(table):
    t = Trainer(**SETTINGS, epochs=1)
    t.fit(table, label="status", log=None)
    assert t.optimizer.decay.settled and t._up_to_date() is t.model  # (after the epoch: nothing behind)
    arrays, _ = t.checkpoint_contents(copy=False)
    assert arrays["param.W1"] is t.net.params["W1"]
