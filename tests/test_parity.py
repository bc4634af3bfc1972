"""Parity with scikit-learn's MLP on the real data in data/ (the textbook recipe), run in the same test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from streamtrain import TrainConfig, Trainer

sklearn = pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def _accuracy(trainer, X, y):
    return float(np.mean(trainer.predict(X) == y))


@pytest.mark.slow
def test_breast_cancer_textbook_recipe_matches_scikit_learn(breast_cancer):
    X, y = breast_cancer
    X_rest, _, y_rest, _ = train_test_split(X, y, test_size=0.2, stratify=y, random_state=42)
    X_tr, X_va, y_tr, y_va = train_test_split(X_rest, y_rest, test_size=0.2, stratify=y_rest, random_state=42)
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_va = scaler.transform(X_tr), scaler.transform(X_va)
    ours, theirs = [], []
    for seed in range(10):
        t = Trainer(TrainConfig(hidden=10, activation="sigmoid", batch_size=32, lr=0.1, l2=0.01, epochs=100,
                                seed=seed, scale="none"))
        t.fit((X_tr, y_tr), log=None)
        ours.append(_accuracy(t, X_va, y_va))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = MLPClassifier(hidden_layer_sizes=(10,), activation="logistic", solver="sgd", alpha=0.01,
                                batch_size=32, learning_rate_init=0.1, random_state=seed).fit(X_tr, y_tr)
        theirs.append(clf.score(X_va, y_va))
    assert abs(np.median(ours) - np.median(theirs)) <= 0.015, (np.median(ours), np.median(theirs))
    assert np.median(ours) >= 0.95


@pytest.mark.slow
def test_digits_matches_scikit_learn(digits):
    X, y = digits
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=42)
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    # scikit-learn's solver="sgd" is Nesterov momentum 0.9 with alpha=1e-4 applied as alpha/batch_size
    # per step: the same algorithm here is optimizer="nesterov" with l2=1e-4/32.
    ours_runs, theirs_runs = [], []
    for seed in range(3):
        t = Trainer(TrainConfig(hidden=100, activation="sigmoid", batch_size=32, lr=0.1, epochs=60, seed=seed,
                                scale="none", init="glorot", optimizer="nesterov", l2=1e-4 / 32))
        t.fit((X_tr, y_tr), log=None)
        ours_runs.append(_accuracy(t, X_te, y_te))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = MLPClassifier(hidden_layer_sizes=(100,), activation="logistic", solver="sgd", batch_size=32,
                                learning_rate_init=0.1, random_state=seed).fit(X_tr, y_tr)
        theirs_runs.append(clf.score(X_te, y_te))
    ours, theirs = np.median(ours_runs), np.median(theirs_runs)
    assert abs(ours - theirs) <= 0.015, (ours, theirs)
    assert ours > 0.95


def test_regression_r2_close_to_scikit_learn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 6))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.standard_normal(3000)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)
    t = Trainer(TrainConfig(hidden=32, activation="tanh", batch_size=32, lr=0.05, epochs=60, task="regression",
                            init="glorot", scale="none"))
    t.fit((X_tr, y_tr), log=None)
    ours = t.evaluate((X_te, y_te))["r2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = MLPRegressor(hidden_layer_sizes=(32,), activation="tanh", solver="sgd", batch_size=32,
                           learning_rate_init=0.05, max_iter=60, random_state=0).fit(X_tr, y_tr)
    theirs = reg.score(X_te, y_te)
    assert ours > 0.8 and abs(ours - theirs) < 0.05, (ours, theirs)
