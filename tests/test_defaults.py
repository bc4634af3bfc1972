"""The defaults (measured against scikit-learn on public tables, benchmarks/tables.md): Adam at
0.003 (plain SGD at batch size 1), ReLU, a cosine decay over the run, epochs from the run's size;
the textbook recipe one TOML file away."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtrain import TrainConfig, Trainer
from streamtrain.config import auto_epochs
from streamtrain.errors import CheckpointError
from streamtrain.nn import optim
from streamtrain.nn.schedules import rates

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).with_name("streamtrain")


def _data(rows=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 4)).astype(np.float32)
    return X, (X[:, 0] - X[:, 1] > 0).astype(int)


def test_the_defaults_are_the_measured_recipe():
    c = TrainConfig()
    assert (c.optimizer, c.activation, c.lr_schedule, c.epochs, c.learning_rate) == ("adam", "relu", "auto", None, 0.003)
    assert TrainConfig(batch_size=1).optimizer == "sgd" and TrainConfig(batch_size=1).learning_rate == 0.1
    assert TrainConfig(optimizer="momentum", batch_size=1).optimizer == "momentum"  # given: kept


@pytest.mark.parametrize("rows,batch,epochs", [(200, 32, 60), (3_000, 32, 32), (10_000, 32, 10), (96_000, 32, 10),
                                               (1, 32, 60), (10**9, 256, 10)])
def test_epochs_follow_the_runs_size(rows, batch, epochs):
    assert auto_epochs(rows, batch) == epochs


def test_a_run_takes_its_epochs_from_its_size_and_keeps_them(tmp_path):
    X, y = _data(300)
    t = Trainer(hidden=4)
    history = t.fit((X, y), checkpoint_dir=tmp_path, log=None)
    assert t.config.epochs == auto_epochs(300, 32) == len(history) == 60
    resumed = Trainer(hidden=4)  # its epochs not given: the run's own, all done
    assert resumed.fit((X, y), checkpoint_dir=tmp_path, resume=True, log=None) == history
    assert resumed.config.epochs == 60 and resumed.global_step == t.global_step


def test_the_default_schedule_decays_over_a_run_and_is_constant_without_one():
    c = TrainConfig(lr=0.01)
    r = rates(c, np.arange(101), 100)
    assert r[0] == pytest.approx(0.01) and r[50] == pytest.approx(0.005) and r[100] == pytest.approx(0.0, abs=1e-12)
    assert np.all(rates(c, np.arange(101), 0) == 0.01)  # serve, partial_fit: no run length
    X, y = _data(64)
    t = Trainer(hidden=4, lr=0.01).partial_fit(X, y, classes=[0, 1])
    assert not t.stepper.scheduled and t.stepper.rate(10**6) == 0.01


def test_raising_epochs_on_resume_stretches_the_default_decay_but_not_an_asked_for_cosine(tmp_path):
    X, y = _data(320)
    Trainer(hidden=4, epochs=2).fit((X, y), checkpoint_dir=tmp_path / "auto", log=None)
    t = Trainer(hidden=4, epochs=4)
    assert [h["epoch"] for h in t.fit((X, y), checkpoint_dir=tmp_path / "auto", resume=True, log=None)] == [1, 2, 3, 4]
    assert t.stepper.total_steps == 4 * 10 and t.stepper.rate(20) == pytest.approx(0.003 / 2)
    Trainer(hidden=4, epochs=2, lr_schedule="cosine").fit((X, y), checkpoint_dir=tmp_path / "cos", log=None)
    with pytest.raises(CheckpointError, match="epochs: 2 -> 4"):
        Trainer(hidden=4, epochs=4, lr_schedule="cosine").fit((X, y), checkpoint_dir=tmp_path / "cos", resume=True,
                                                              log=None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_adam_step_is_numpys_bitwise(dtype):
    rng = np.random.default_rng(1)
    shapes = {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}
    P = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    Q = {k: v.copy() for k, v in P.items()}
    a, b = optim.Adam(0.003, beta1=0.8, eps=1e-7), optim.Adam(0.003, beta1=0.8, eps=1e-7)
    b.compiled = False
    assert optim._compiled_adam() is not None
    for _ in range(30):
        G = {k: rng.standard_normal(s).astype(dtype) * 10 for k, s in shapes.items()}
        a.step(P, G)
        b.step(Q, G)
    for k in shapes:
        for x, z in ((P[k], Q[k]), (a.m[k], b.m[k]), (a.v[k], b.v[k])):
            assert x.dtype == dtype and np.array_equal(x, z), k
    assert a.t == b.t == 30


def test_the_textbook_recipe_is_one_toml_file_away(tmp_path):
    data = ROOT / "data" / "breast_cancer.h5"
    res = subprocess.run([str(BIN), "train", str(data), "--config", str(ROOT / "recipes" / "textbook.toml"),
                          "--checkpoint-dir", str(tmp_path / "run"), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    from streamtrain.io.resolve import resolve_checkpoint
    from streamtrain.train.schema import TRAINER

    _, _, meta = resolve_checkpoint(tmp_path / "run", TRAINER)
    cfg = meta["config"]
    assert (cfg["optimizer"], cfg["activation"], cfg["init"], cfg["lr"], cfg["lr_schedule"], cfg["batch_size"],
            cfg["epochs"]) == ("sgd", "sigmoid", "normal", 0.1, "constant", 32, 10)
