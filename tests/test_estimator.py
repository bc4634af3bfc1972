"""scikit-learn compatible estimators: check_estimator, Pipeline, GridSearchCV, fitting on a path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from streamtrain.estimator import StreamClassifier, StreamRegressor  # noqa: E402

from .conftest import DATA  # noqa: E402


@pytest.mark.parametrize("estimator", [StreamClassifier(), StreamRegressor()], ids=["classifier", "regressor"])
def test_passes_check_estimator(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed
    assert len(results) > 40


def test_pipeline_grid_search_and_clone(breast_cancer):
    X, y = breast_cancer
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    pipe = make_pipeline(StandardScaler(), StreamClassifier(hidden=10, epochs=15, scale="none"))
    search = GridSearchCV(pipe, {"streamclassifier__l2": [0.0, 0.01]}, cv=3).fit(X_tr, y_tr)
    assert search.score(X_te, y_te) > 0.93
    twin = clone(search.best_estimator_)
    assert twin.get_params()["streamclassifier__l2"] in (0.0, 0.01) and not hasattr(twin[-1], "trainer_")


def test_string_labels_partial_fit_and_fit_on_a_path(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    clf = StreamClassifier(hidden=32, epochs=10).fit(X, names)
    assert set(clf.predict(X[:50])) <= set(names) and clf.score(X, names) > 0.9
    inc = StreamClassifier(hidden=32, batch_size=32)
    for block in np.array_split(np.arange(len(X)), 20):
        inc.partial_fit(X[block], names[block], classes=np.unique(names))
    assert inc.predict_proba(X[:3]).shape == (3, 10)
    streamed = StreamClassifier(hidden=32, epochs=10).fit(str(DATA / "digits.h5"))
    assert streamed.n_features_in_ == 64 and streamed.score(X, y) > 0.9


def test_regressor_several_outputs():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1500, 4))
    Y = np.column_stack([X[:, 0] - X[:, 1], X[:, 2] * 0.5])
    reg = StreamRegressor(hidden=16, epochs=30, lr=0.05).fit(X, Y)
    assert reg.predict(X).shape == (1500, 2) and reg.score(X, Y) > 0.9
