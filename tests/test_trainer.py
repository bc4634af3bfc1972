"""The trainer end to end: learning real data, exact resume, divergence, early stopping, evaluation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from streamtrain import (
    ArrayDataset,
    TrainConfig,
    Trainer,
    TrainingError,
    make_data,
    open_dataset,
)
from streamtrain.io.resolve import list_checkpoints

from .conftest import DATA


def test_textbook_recipe_learns_breast_cancer():
    t = Trainer(TrainConfig(hidden=10, batch_size=32, lr=0.1, l2=0.01, epochs=60, val_fraction=0.2))
    history = t.fit(DATA / "breast_cancer.h5", log=None)
    assert len(history) == 60
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    assert history[-1]["val_accuracy"] >= 0.97
    assert t.task == "binary" and t.classes == [0, 1]


def test_digits_multiclass_from_parquet():
    t = Trainer(TrainConfig(hidden=32, epochs=15, val_fraction=0.2, seed=1))
    history = t.fit(DATA / "digits.parquet", log=None)
    assert t.task == "multiclass" and len(t.classes) == 10
    assert history[-1]["val_accuracy"] > 0.9


def test_regression_learns_a_teacher(tmp_path):
    make_data(tmp_path / "r.h5", rows=4000, features=8, task="regression", noise=0.1)
    t = Trainer(TrainConfig(hidden=32, epochs=20, lr=0.05, val_fraction=0.25, activation="tanh"))
    history = t.fit(tmp_path / "r.h5", log=None)
    assert t.task == "regression" and history[-1]["val_r2"] > 0.8


class StopAt:
    """A callback that asks the trainer to stop (as SIGINT will) after ``step`` batches."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, rows, loss):
        if trainer.global_step == self.step:
            trainer.stop_requested = "test"


class RecordRows:
    """Records the row indices of every batch the trainer consumed."""

    def __init__(self):
        self.rows = []

    def on_batch_end(self, trainer, rows, loss):
        self.rows.append(rows.copy())


@pytest.mark.parametrize("validation", [True, False])
@pytest.mark.parametrize("shuffle", ["window", "global", "none"])
@pytest.mark.parametrize("batch", [1, 32, 37])
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, shuffle, batch, validation):
    make_data(tmp_path / "d.parquet", rows=600, features=5, chunk_rows=64, seed=2)
    extra = {"val_fraction": 0.2, "early_stopping": 5} if validation else {}
    cfg = TrainConfig(hidden=6, epochs=3, batch_size=batch, shuffle=shuffle, window_mb=0.004,
                      optimizer="adam", lr=0.01, **extra)
    ref, ref_rows = Trainer(cfg), RecordRows()
    ref.fit(tmp_path / "d.parquet", checkpoint_dir=tmp_path / "ref", callbacks=[ref_rows], log=None)

    n_batches = ref.global_step
    stop = int(np.random.default_rng(batch).integers(1, n_batches - 1))
    first, first_rows = Trainer(cfg), RecordRows()
    first.fit(tmp_path / "d.parquet", checkpoint_dir=tmp_path / "run", callbacks=[StopAt(stop), first_rows], log=None)
    assert first.global_step == stop
    second, second_rows = Trainer(cfg), RecordRows()
    second.fit(tmp_path / "d.parquet", checkpoint_dir=tmp_path / "run", resume=True, callbacks=[second_rows],
               log=None)
    assert second.global_step == n_batches
    for k in ref.net.params:
        np.testing.assert_array_equal(second.net.params[k], ref.net.params[k])
    # the same samples, in the same batches, in the same order
    consumed = first_rows.rows + second_rows.rows
    assert len(consumed) == len(ref_rows.rows)
    assert all(np.array_equal(a, b) for a, b in zip(consumed, ref_rows.rows))
    assert [h["train_loss"] for h in second.history] == [h["train_loss"] for h in ref.history]
    if validation:
        assert [h["val_loss"] for h in second.history] == [h["val_loss"] for h in ref.history]


class EverySteps:
    """A step-scheduled hook that does nothing: it cuts the runs of batches made in one call."""

    def __init__(self, steps):
        from streamtrain.train.hooks import Every

        self.every, self.calls = Every(steps=steps), 0

    def on_batch_end(self, trainer, rows, loss):
        self.calls += 1


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_how_batches_are_grouped_into_one_call_changes_no_bit(tmp_path, optimizer):
    # A loader group's whole batches go to one compiled call, cut where a step hook is due: the
    # parameters and each epoch's loss (summed an update at a time) are those of the steps one by
    # one, however the runs fall (a resumed run's fall elsewhere).
    make_data(tmp_path / "d.h5", rows=3000, features=5, chunk_rows=256, seed=4)
    runs = {}
    for cut in (None, 7, 1):  # 1: a hook after every step, one batch per call
        cfg = TrainConfig(hidden=6, epochs=2, batch_size=32, optimizer=optimizer, lr=0.01, window_mb=0.05)
        t, hooks = Trainer(cfg), [] if cut is None else [EverySteps(cut)]
        t.fit(tmp_path / "d.h5", callbacks=hooks, log=None)
        runs[cut] = t
        if cut:
            assert hooks[0].calls == t.global_step // cut
    for cut in (7, 1):
        assert runs[cut].global_step == runs[None].global_step
        for k, v in runs[None].net.params.items():
            np.testing.assert_array_equal(runs[cut].net.params[k], v, err_msg=k)
        assert [h["train_loss"] for h in runs[cut].history] == [h["train_loss"] for h in runs[None].history]
        assert [h["train_accuracy"] for h in runs[cut].history] == [h["train_accuracy"] for h in runs[None].history]


def test_resume_refuses_different_data_unless_forced(tmp_path):
    make_data(tmp_path / "a.h5", rows=300, features=4)
    make_data(tmp_path / "b.h5", rows=400, features=4)
    Trainer(TrainConfig(hidden=3, epochs=1)).fit(tmp_path / "a.h5", checkpoint_dir=tmp_path / "c", log=None)
    with pytest.raises(Exception, match=r"data n_rows: 300 -> 400"):
        Trainer(TrainConfig(hidden=3, epochs=2)).fit(tmp_path / "b.h5", checkpoint_dir=tmp_path / "c", resume=True,
                                                     log=None)


def test_resume_refuses_changed_settings_unless_forced(tmp_path):
    data = (np.random.default_rng(0).standard_normal((200, 3)), np.arange(200) % 2)
    Trainer(TrainConfig(hidden=4, epochs=1)).fit(data, checkpoint_dir=tmp_path, log=None)
    with pytest.raises(Exception, match=r"lr: 0.003 -> 0.5"):
        Trainer(TrainConfig(hidden=4, epochs=2, lr=0.5)).fit(data, checkpoint_dir=tmp_path, resume=True, log=None)
    t = Trainer(TrainConfig(hidden=4, epochs=2, lr=0.5))
    t.fit(data, checkpoint_dir=tmp_path, resume=True, force=True, log=None)
    assert len(t.history) == 2


def test_divergence_stops_with_a_clear_error_and_finite_checkpoints(tmp_path):
    X = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    y = X.sum(1) * 1e3
    t = Trainer(TrainConfig(hidden=8, epochs=50, optimizer="sgd", lr=1e3, scale="none", task="regression",
                            checkpoint_every=1))
    with pytest.raises(TrainingError, match="diverged"):
        t.fit((X, y), checkpoint_dir=tmp_path, log=None)
    for path in list_checkpoints(tmp_path):
        restored = Trainer.load(path)
        assert all(np.isfinite(v).all() for v in restored.net.params.values())


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20))
    y = rng.integers(0, 2, 300)  # pure noise: validation loss soon rises
    t = Trainer(TrainConfig(hidden=64, epochs=200, lr=0.5, val_fraction=0.3, early_stopping=3))
    history = t.fit((X, y), log=None)
    assert len(history) < 200
    best = min(history, key=lambda h: h["val_loss"])
    assert t.state.early["best_epoch"] == best["epoch"]
    assert len(history) == best["epoch"] + 3


def test_callbacks_see_every_batch_and_epoch():
    calls = {"batch": 0, "epoch": []}

    class CB:
        def on_batch_end(self, trainer, rows, loss):
            calls["batch"] += 1

        def on_epoch_end(self, trainer, record):
            calls["epoch"].append(record["epoch"])

    Trainer(TrainConfig(hidden=3, epochs=2, batch_size=10)).fit(
        (np.zeros((95, 2)), np.arange(95) % 2), callbacks=[CB()], log=None)
    assert calls == {"batch": 20, "epoch": [1, 2]}


def test_evaluate_and_predict_from_a_checkpoint_alone(tmp_path, breast_cancer):
    t = Trainer(TrainConfig(hidden=10, epochs=20, l2=0.01))
    t.fit(DATA / "breast_cancer.zarr", checkpoint_dir=tmp_path, log=None)
    loaded = Trainer.load(tmp_path)
    X, y = breast_cancer
    result = loaded.evaluate(ArrayDataset(X, y))
    assert result["accuracy"] > 0.95
    assert np.array_equal(np.array(result["confusion_matrix"]).sum(), 569)
    pred = loaded.predict(ArrayDataset(X))
    assert np.mean(pred == y) == pytest.approx(result["accuracy"])
    proba = loaded.predict_proba(ArrayDataset(X))
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    # The same model evaluated on the Parquet copy: columns selected by name, label detected.
    assert loaded.evaluate(DATA / "breast_cancer.parquet")["accuracy"] == result["accuracy"]


def test_multi_output_regression_and_one_hot_labels():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 4))
    Y = np.column_stack([X[:, 0] + X[:, 1], X[:, 2] - X[:, 3]])
    t = Trainer(TrainConfig(hidden=16, epochs=30, lr=0.05, activation="tanh", init="glorot", val_fraction=0.2))
    history = t.fit((X, Y), log=None)
    assert t.task == "regression" and t.net.n_out == 2 and history[-1]["val_r2"] > 0.9
    assert t.predict(X[:5]).shape == (5, 2)
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)  # 3 classes
    onehot = np.eye(3, dtype=np.int8)[labels]
    t = Trainer(TrainConfig(hidden=16, epochs=30, val_fraction=0.2, optimizer="momentum", lr=0.05))
    history = t.fit((X, onehot), log=None)
    assert t.task == "multiclass" and t.classes == [0, 1, 2] and history[-1]["val_accuracy"] > 0.85


@pytest.mark.parametrize("workers", [0, 3])
def test_decoding_process_trains_bitwise_like_the_thread_and_resumes_exactly(tmp_path, workers, monkeypatch):
    from streamtrain.data.decoder import DecoderProcess, usable_cores, worker_count
    from streamtrain.data.loader import window_rows_for
    from streamtrain.data.sources import slot_rows

    started, init = [], DecoderProcess.__init__

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append(len(self.workers))

    monkeypatch.setattr(DecoderProcess, "__init__", counting_init)
    make_data(tmp_path / "d.zarr", rows=3000, features=5, chunk_rows=128, seed=4)
    cfg = TrainConfig(hidden=6, epochs=2, batch_size=32, shuffle="window", window_mb=0.1, lr=0.05)
    thread = Trainer(cfg, decoder="thread")
    thread.fit(tmp_path / "d.zarr", log=None)
    process = Trainer(cfg, decoder="process", decoder_workers=workers)  # 0: the default, two
    process.fit(tmp_path / "d.zarr", checkpoint_dir=tmp_path / "ck", callbacks=[StopAt(70)], log=None)
    process.fit(tmp_path / "d.zarr", checkpoint_dir=tmp_path / "ck", resume=True, log=None)
    for k in thread.net.params:
        np.testing.assert_array_equal(process.net.params[k], thread.net.params[k])
    assert [h["train_loss"] for h in process.history] == [h["train_loss"] for h in thread.history]
    if hasattr(os, "memfd_create") and usable_cores() >= 2:  # else the thread decodes
        ds = open_dataset(tmp_path / "d.zarr")
        expected = worker_count(ds, slot_rows(ds, window_rows_for(0.1 * 2**20, ds)), workers or None)
        assert started and set(started) == {expected}  # the run and the resumed run; capped by the cores
        assert expected == min(workers or 2, usable_cores())
