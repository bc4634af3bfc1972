"""scikit-learn compatible estimators: StreamClassifier and StreamRegressor.

They fit on arrays (validated as scikit-learn does), on data frames holding strings,
categories, dates or missing values (encoded as ``Trainer.fit`` encodes a table), or on a source
path (streamed, never loaded whole), predict on the same kind, and support ``partial_fit`` and ``sample_weight``. Fitted
attributes follow ``MLPClassifier``'s. scikit-learn is imported only here.
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
from .readers.memory import LABEL as _LABEL
from .readers.memory import as_arrow
from .readers.memory import table_to_encode as _table_to_encode
from .readers.memory import with_label as _with_label
from .train.trainer import Trainer

__all__ = ["StreamClassifier", "StreamRegressor", "expected_failed_checks"]

# scikit-learn's common checks that these estimators fail by design, with the reason; scikit-learn
# (1.6+) has no tag for this, so it is given to check_estimator / parametrize_with_checks, as
# scikit-learn's own test suite gives its SGD estimators' (PER_ESTIMATOR_XFAIL_CHECKS).
_WEIGHT_IS_NOT_REPETITION = (
    "minibatch SGD weighs a row's loss by its weight within its batch (sum(w * loss) / rows): a weight "
    "of k is not the same run as k copies of the row, which change the batches and the epoch's length")
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": _WEIGHT_IS_NOT_REPETITION,
    "check_sample_weight_equivalence_on_sparse_data": _WEIGHT_IS_NOT_REPETITION,
}


def expected_failed_checks(estimator=None) -> dict[str, str]:
    """scikit-learn checks the estimators fail by design, ``{check name: reason}``.

    >>> from sklearn.utils.estimator_checks import check_estimator
    >>> from streamtrain import StreamClassifier
    >>> est = StreamClassifier()
    >>> results = check_estimator(est, expected_failed_checks=expected_failed_checks(est), on_fail=None)
    >>> [r["check_name"] for r in results if r["status"] == "failed"]
    []
    """
    return dict(EXPECTED_FAILED_CHECKS)


def _weights(sample_weight, X):
    """``sample_weight`` checked as scikit-learn checks it (None stays None)."""
    if sample_weight is None:
        return None
    from sklearn.utils.validation import _check_sample_weight

    w = _check_sample_weight(sample_weight, X, dtype=np.float64)
    if not np.any(w):
        raise ValueError("sample_weight holds only zeros: nothing would be learnt")
    return w


def _is_path(X) -> bool:
    return isinstance(X, (str, os.PathLike))



class _StreamEstimator(BaseEstimator):
    _task = "auto"

    def __init__(self, hidden=64, activation="sigmoid", batch_size=32, epochs=10, lr=None, optimizer="sgd",
                 l1=0.0, l2=0.0, shuffle="window", scale="standard", early_stopping=0, val_fraction=0.0,
                 seed=0, dtype="float32", lr_schedule="constant", power_t=0.5, verbose=0):
        self.hidden, self.activation, self.batch_size, self.epochs = hidden, activation, batch_size, epochs
        self.lr, self.optimizer, self.l1, self.l2, self.shuffle = lr, optimizer, l1, l2, shuffle
        self.scale, self.early_stopping, self.val_fraction = scale, early_stopping, val_fraction
        self.seed, self.dtype, self.lr_schedule, self.power_t, self.verbose = seed, dtype, lr_schedule, power_t, verbose

    def _config(self) -> TrainConfig:
        extra = {"power_t": self.power_t} if self.lr_schedule == "invscaling" else {}
        return TrainConfig(hidden=self.hidden, activation=self.activation, batch_size=self.batch_size,
                           epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, l1=self.l1, l2=self.l2,
                           shuffle=self.shuffle, scale=self.scale, early_stopping=self.early_stopping,
                           val_fraction=self.val_fraction, seed=self.seed, dtype=self.dtype, task=self._task,
                           lr_schedule=self.lr_schedule, class_weight=self._class_weight_spec(), **extra)

    def _class_weight_spec(self) -> str:
        return ""

    def _log(self):
        return print if self.verbose else None

    def _encode(self, y, fit=False):  # overridden by the classifier
        return y

    def fit(self, X, y=None, sample_weight=None):
        """Train a new model for ``epochs`` epochs (each call starts afresh).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or str or path-like
            The rows, or a data file (HDF5, Zarr, Parquet: ``open_dataset`` finds its features
            and label) read chunk by chunk, never whole.
        y : array-like of shape (n_samples,), or (n_samples, n_outputs) for a regressor; or None
            The targets of the rows; unused with a file.
        sample_weight : array-like of shape (n_samples,), or str, optional
            Each row's weight in its batch's loss; with a file, the name of its weight column.

        Returns
        -------
        self
        """
        table = _table_to_encode(X)
        self._table = table is not None
        if _is_path(X) or self._table:
            self._encoded = False
            self.trainer_ = Trainer(self._config())
            if self._table:  # strings, categories, dates or missing values: the trainer encodes them
                history = self.trainer_.fit(_with_label(table, y, sample_weight), label=_LABEL, log=self._log())
                self.n_features_in_, self.feature_names_in_ = table.num_columns, np.asarray(table.column_names, object)
            else:
                history = self.trainer_.fit(X, weight=sample_weight, log=self._log())
                self.n_features_in_ = self.trainer_.net.n_in
            self._after_fit(None)
        else:
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=self._task == "regression",
                                 multi_output=self._task == "regression")
            self._check_targets(y)
            sample_weight = _weights(sample_weight, X)
            codes = self._encode(y, fit=True)
            self.trainer_ = Trainer(self._config())
            history = self.trainer_.fit((X, codes), weight=sample_weight, log=self._log())
            self._after_fit(y)
        self.loss_curve_ = [h["train_loss"] for h in history]
        self.n_iter_ = len(history)
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Update the model with one pass over ``X``, ``y``, in order, in batches of ``batch_size``.

        The first call sets the model up: its scaling statistics come from this first block.
        A cosine ``lr_schedule`` needs a run's length, which ``partial_fit`` has not.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The rows.
        y : array-like of shape (n_samples,), or (n_samples, n_outputs) for a regressor
            Their targets.
        classes : array-like of shape (n_classes,), optional
            Every label that will ever occur: required on a classifier's first call.
        sample_weight : array-like of shape (n_samples,), optional
            Each row's weight in its batch's loss.

        Returns
        -------
        self
        """
        first = not hasattr(self, "trainer_")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], reset=first,
                             y_numeric=self._task == "regression", multi_output=self._task == "regression")
        self._check_targets(y)
        if first:
            self._start_partial(y, classes)
            self.trainer_ = Trainer(self._config())
            self.loss_curve_, self.n_iter_ = [], 0
        codes = self._encode(y, fit=False)
        self.trainer_.partial_fit(X, codes, classes=self._code_classes(), sample_weight=_weights(sample_weight, X))
        self.loss_curve_.append(self.trainer_.last_loss)
        self.n_iter_ += 1
        return self

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weights input -> hidden ``(n_features, hidden)``, hidden -> output ``(hidden, n_outputs)``."""
        check_is_fitted(self, "trainer_")
        return [self.trainer_.net.params["W1"], self.trainer_.net.params["W2"]]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The biases of the hidden layer ``(hidden,)`` and of the output layer ``(n_outputs,)``."""
        check_is_fitted(self, "trainer_")
        return [self.trainer_.net.params["b1"], self.trainer_.net.params["b2"]]

    def _after_fit(self, y):
        pass

    def _check_targets(self, y):
        pass

    def _start_partial(self, y, classes):
        pass

    def _code_classes(self):
        return None

    def _source(self, X):
        """What the trainer predicts on: a path (streamed), or the validated array."""
        check_is_fitted(self, "trainer_")
        if getattr(self, "_table", False) and not _is_path(X):
            table = as_arrow(X)
            if table is None or table.column_names != list(self.feature_names_in_):
                raise ValueError(f"X must be a data frame of the columns fit saw: {list(self.feature_names_in_)}")
            return table
        return X if _is_path(X) else validate_data(self, X, reset=False, dtype=[np.float64, np.float32])


class StreamClassifier(ClassifierMixin, _StreamEstimator):
    """A two-layer network classifier trained by streamtrain, on arrays or on a data file streamed
    chunk by chunk (binary: one sigmoid output; multiclass: softmax).

    Parameters
    ----------
    hidden : int, default=64
        Units of the hidden layer.
    activation : {"sigmoid", "tanh", "relu"}, default="sigmoid"
        The hidden layer's activation.
    batch_size : int, default=32
        Rows per update (1: online learning).
    epochs : int, default=10
        Passes over the data.
    lr : float or None, default=None
        The learning rate; None: the optimiser's (0.1 for sgd, momentum, nesterov; 0.003 adam).
    optimizer : {"sgd", "momentum", "nesterov", "adam"}, default="sgd"
        The optimiser, with its default hyperparameters.
    l1, l2 : float, default=0.0
        L1 and L2 penalties on the weights.
    shuffle : {"window", "global", "none"}, default="window"
        window: chunks in shuffled order, rows shuffled within windows; global: all rows; none.
    scale : {"standard", "none", "batch-center"}, default="standard"
        Feature scaling (standard: mean and variance from a pass over the training data).
    early_stopping : int, default=0
        Epochs without a lower validation loss before stopping with the best (needs val_fraction).
    val_fraction : float, default=0.0
        The fraction of the rows held out for validation (by a hash of the row number).
    seed : int, default=0
        Seed of the shuffle, the initial weights and the hold-out.
    dtype : {"float32", "float64"}, default="float32"
        Floating-point type of the model and the features.
    lr_schedule : {"constant", "invscaling", "step", "exponential", "cosine"}, default="constant"
        How the learning rate changes with the step t (invscaling: ``lr / t**power_t``).
    power_t : float, default=0.5
        The exponent of the invscaling schedule.
    verbose : int, default=0
        Print the training's progress (a line per epoch).
    class_weight : None, "balanced" or dict {label: weight}, default=None
        Weigh each class's rows, as scikit-learn's ``class_weight`` (others 1).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted: ``predict_proba``'s columns.
    n_features_in_ : int
        The number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        The features' names, where ``X`` was a DataFrame with string column names.
    loss_curve_ : list of float
        The training loss of each epoch (``fit``), or of each ``partial_fit`` call (per row).
    n_iter_ : int
        The epochs ``fit`` ran (early stopping may end sooner), or the ``partial_fit`` calls.
    coefs_ : list of ndarray
        ``[(n_features, hidden), (hidden, n_outputs)]``, for scaled features (n_outputs 1 for 2 classes).
    intercepts_ : list of ndarray
        ``[(hidden,), (n_outputs,)]`` biases.
    trainer_ : Trainer
        The trainer that holds the model (its ``save`` writes a checkpoint).

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> StreamClassifier(hidden=10, epochs=20, l2=0.01).fit(X, y).score(X, y) > 0.95
    True
    """

    _task = "auto"

    def __init__(self, hidden=64, activation="sigmoid", batch_size=32, epochs=10, lr=None, optimizer="sgd",
                 l1=0.0, l2=0.0, shuffle="window", scale="standard", early_stopping=0, val_fraction=0.0,
                 seed=0, dtype="float32", lr_schedule="constant", power_t=0.5, verbose=0, class_weight=None):
        super().__init__(hidden, activation, batch_size, epochs, lr, optimizer, l1, l2, shuffle, scale,
                         early_stopping, val_fraction, seed, dtype, lr_schedule, power_t, verbose)
        self.class_weight = class_weight

    def _class_weight_spec(self) -> str:
        cw = self.class_weight
        if cw is None or cw == "balanced":
            return cw or ""
        classes = list(getattr(self, "classes_", []))
        # the trainer sees class indices (fit on arrays) or the labels themselves (fit on a path)
        index = {c: i for i, c in enumerate(classes)} if hasattr(self, "_encoded") and self._encoded else None
        return ",".join(f"{index[k] if index is not None else k}={float(v)}" for k, v in cw.items())

    def _check_targets(self, y):
        from sklearn.utils.multiclass import check_classification_targets

        check_classification_targets(y)

    def _encode(self, y, fit=False):
        if fit:
            self.classes_ = np.unique(y)
            self._encoded = True
        idx = np.searchsorted(self.classes_, y)
        if np.any(idx >= len(self.classes_)) or np.any(self.classes_[np.minimum(idx, len(self.classes_) - 1)] != y):
            raise ValueError("y contains labels not seen in fit / not in classes")
        return idx

    def _start_partial(self, y, classes):
        if classes is None:
            raise ValueError("classes must be given on the first call to partial_fit")
        self.classes_ = np.unique(classes)
        self._encoded = True

    def _code_classes(self):
        return list(range(len(self.classes_)))

    def _after_fit(self, y):
        if y is None:
            self.classes_ = np.asarray(self.trainer_.classes)
            self._encoded = False

    def predict_proba(self, X):
        """Class probabilities of each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or str or path-like
            Rows, or a data file read chunk by chunk (its features selected as in training).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Each row's probabilities, columns in the order of ``classes_``.
        """
        source = self._source(X)
        if len(self.classes_) == 1:
            return np.ones((len(source) if not _is_path(source) else self.trainer_.predict(source).shape[0], 1))
        return self.trainer_.predict_proba(source)

    def predict(self, X):
        """The most probable class of each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or str or path-like
            Rows, or a data file read chunk by chunk.

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


class StreamRegressor(RegressorMixin, _StreamEstimator):
    """A two-layer network regressor trained by streamtrain (one or several outputs, a linear
    output layer, half the squared error), on arrays or on a data file streamed chunk by chunk.

    Parameters
    ----------
    activation : {"sigmoid", "tanh", "relu"}, default="tanh"
        The hidden layer's activation.
    lr : float or None, default=0.01
        The learning rate; None: the optimiser's default.
    hidden, batch_size, epochs, optimizer, l1, l2, shuffle, scale, ...
        The others are ``StreamClassifier``'s (but ``class_weight``), with the same defaults.

    Attributes
    ----------
    n_features_in_, feature_names_in_, loss_curve_, n_iter_, coefs_, intercepts_, trainer_
        As ``StreamClassifier``'s (``n_outputs``: the number of targets).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((300, 3))
    >>> reg = StreamRegressor(hidden=8, epochs=20, lr=0.05).fit(X, X @ [1.0, -2.0, 0.5])
    >>> reg.predict(X[:4]).shape, reg.score(X, X @ [1.0, -2.0, 0.5]) > 0.9
    ((4,), True)
    """

    _task = "regression"

    def __init__(self, hidden=64, activation="tanh", batch_size=32, epochs=10, lr=0.01, optimizer="sgd",
                 l1=0.0, l2=0.0, shuffle="window", scale="standard", early_stopping=0, val_fraction=0.0,
                 seed=0, dtype="float32", lr_schedule="constant", power_t=0.5, verbose=0):
        super().__init__(hidden, activation, batch_size, epochs, lr, optimizer, l1, l2, shuffle, scale,
                         early_stopping, val_fraction, seed, dtype, lr_schedule, power_t, verbose)

    def predict(self, X):
        """Predicted values (float64, as scikit-learn's regressors give; computed in ``dtype``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or str or path-like
            Rows, or a data file read chunk by chunk.

        Returns
        -------
        ndarray of float64, shape (n_samples,) or (n_samples, n_outputs)
            One column per target the model was fitted on (a single target: 1-D).
        """
        source = self._source(X)  # (checks the estimator is fitted)
        return self.trainer_.predict(source).astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # several regression targets are supported
        return tags
