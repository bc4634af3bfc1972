"""scikit-learn compatible estimators: StreamClassifier and StreamRegressor.

They fit on arrays (validated as scikit-learn does) or on a source path (streamed, never
loaded whole), and support ``partial_fit``. scikit-learn is imported only here.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:  # pragma: no cover
    def validate_data(est, X, y="no_validation", reset=True, **kw):
        return est._validate_data(X, y, reset=reset, **kw)

from .config import TrainConfig
from .train.trainer import Trainer

__all__ = ["StreamClassifier", "StreamRegressor"]


class _StreamEstimator(BaseEstimator):
    _task = "auto"

    def __init__(self, hidden=64, activation="sigmoid", batch_size=32, epochs=10, lr=0.1, optimizer="sgd",
                 l1=0.0, l2=0.0, shuffle="window", scale="standard", early_stopping=0, val_fraction=0.0,
                 seed=0, dtype="float64"):
        self.hidden, self.activation, self.batch_size, self.epochs = hidden, activation, batch_size, epochs
        self.lr, self.optimizer, self.l1, self.l2, self.shuffle = lr, optimizer, l1, l2, shuffle
        self.scale, self.early_stopping, self.val_fraction = scale, early_stopping, val_fraction
        self.seed, self.dtype = seed, dtype

    def _config(self) -> TrainConfig:
        return TrainConfig(hidden=self.hidden, activation=self.activation, batch_size=self.batch_size,
                           epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, l1=self.l1, l2=self.l2,
                           shuffle=self.shuffle, scale=self.scale, early_stopping=self.early_stopping,
                           val_fraction=self.val_fraction, seed=self.seed, dtype=self.dtype, task=self._task)

    def _encode(self, y, fit=False):  # overridden by the classifier
        return y

    def fit(self, X, y=None):
        """Fit on arrays ``X`` (rows, features) and ``y``, or on a source path (``y`` unused)."""
        self.trainer_ = Trainer(self._config())
        if isinstance(X, (str, os.PathLike)):
            self.trainer_.fit(X, log=None)
            self.n_features_in_ = self.trainer_.net.n_in
            self._after_fit(None)
            return self
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=self._task == "regression",
                             multi_output=self._task == "regression")
        self._check_targets(y)
        self.trainer_.fit((X, self._encode(y, fit=True)), log=None)
        self._after_fit(y)
        return self

    def partial_fit(self, X, y, classes=None):
        """One pass of minibatch updates over ``X``, ``y`` (``classes`` required on the first call)."""
        first = not hasattr(self, "trainer_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first, y_numeric=self._task == "regression",
                             multi_output=self._task == "regression")
        self._check_targets(y)
        if first:
            self.trainer_ = Trainer(self._config())
            self._start_partial(y, classes)
        codes = self._encode(y, fit=False)
        self.trainer_.partial_fit(X, codes, classes=self._code_classes())
        return self

    def _after_fit(self, y):
        pass

    def _check_targets(self, y):
        pass

    def _start_partial(self, y, classes):
        pass

    def _code_classes(self):
        return None

    def _outputs(self, X):
        check_is_fitted(self, "trainer_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X, self.trainer_


class StreamClassifier(ClassifierMixin, _StreamEstimator):
    """A two-layer network classifier trained by streamtrain.

    >>> from sklearn.datasets import load_breast_cancer
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> StreamClassifier(hidden=10, epochs=20, l2=0.01).fit(X, y).score(X, y) > 0.95
    True
    """

    _task = "auto"

    def _check_targets(self, y):
        from sklearn.utils.multiclass import check_classification_targets

        check_classification_targets(y)

    def _encode(self, y, fit=False):
        if fit:
            self.classes_ = np.unique(y)
        idx = np.searchsorted(self.classes_, y)
        if np.any(idx >= len(self.classes_)) or np.any(self.classes_[np.minimum(idx, len(self.classes_) - 1)] != y):
            raise ValueError("y contains labels not seen in fit / not in classes")
        return idx

    def _start_partial(self, y, classes):
        if classes is None:
            raise ValueError("classes must be given on the first call to partial_fit")
        self.classes_ = np.unique(classes)

    def _code_classes(self):
        return list(range(len(self.classes_)))

    def _after_fit(self, y):
        if y is None:
            self.classes_ = np.asarray(self.trainer_.classes)

    def predict_proba(self, X):
        """Class probabilities ``(rows, n_classes)``, columns in the order of ``classes_``."""
        X, t = self._outputs(X)
        if len(self.classes_) == 1:
            return np.ones((len(X), 1))
        return t.predict_proba(X)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


class StreamRegressor(RegressorMixin, _StreamEstimator):
    """A two-layer network regressor trained by streamtrain (one or several outputs)."""

    _task = "regression"

    def __init__(self, hidden=64, activation="tanh", batch_size=32, epochs=10, lr=0.01, optimizer="sgd",
                 l1=0.0, l2=0.0, shuffle="window", scale="standard", early_stopping=0, val_fraction=0.0,
                 seed=0, dtype="float64"):
        super().__init__(hidden, activation, batch_size, epochs, lr, optimizer, l1, l2, shuffle, scale,
                         early_stopping, val_fraction, seed, dtype)

    def predict(self, X):
        X, t = self._outputs(X)
        return t.predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # several regression targets are supported
        return tags
