"""Using a trained model: evaluate and predict, streaming over any source.

A mixin of ``Trainer``: it relies on the trainer's network, scaler, task, classes and the
feature selection recorded in training.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from .errors import DataError, TrainingError
from .metrics import metrics_for
from .readers import detect_format, open_dataset
from .readers.base import Dataset

__all__ = ["ModelUse"]


class ModelUse:
    """Evaluation and prediction methods of ``Trainer``."""

    def _check_ready(self):
        if self.net is None:
            raise TrainingError("the model is not trained yet: call fit() or load a checkpoint")

    def open_like_training(self, source) -> Dataset:
        """Open ``source`` with the feature and label selection used in training, and check it fits."""
        if isinstance(source, Dataset):
            ds = source
        elif isinstance(source, (str, os.PathLike)) and detect_format(source) != self.fingerprint.get("format"):
            # Another format stores the same columns differently: select by name, detect the label.
            ds = open_dataset(source, self.feature_names, None, **self._read_options(self.net.dtype))
        else:
            ds = open_dataset(source, self.selection, self.label_name, **self._read_options(self.net.dtype))
        if ds.n_features != self.net.n_in:
            raise DataError(f"{ds.path}: has {ds.n_features} features, the model expects {self.net.n_in}")
        if ds.format != "memory" and list(ds.feature_names) != self.feature_names:
            diff = next(f"{a!r} vs {b!r}" for a, b in zip(ds.feature_names, self.feature_names) if a != b)
            raise DataError(f"{ds.path}: feature names differ from the model's ({diff})")
        return ds

    def iter_outputs(self, source) -> Iterator[tuple[Dataset, np.ndarray, np.ndarray | None]]:
        """Per chunk: the dataset, network outputs ``(rows, n_out)`` and raw labels (or None)."""
        self._check_ready()
        ds = self.open_like_training(source)
        for X, y in ds.iter_chunks():
            yield ds, self.net.predict_output(self.scaler.transform(X)), y

    def evaluate(self, source) -> dict[str, Any]:
        """Loss and metrics (accuracy, per-class P/R/F1, confusion; or MSE, MAE, R^2), computed streaming."""
        self._check_ready()
        ds = self.open_like_training(source)
        if ds.label_name is None:
            raise DataError(f"{ds.path}: no label to evaluate against")
        acc = metrics_for(self.task, self.classes)
        for X, y in ds.iter_chunks():
            Xs = self.scaler.transform(X)
            t = self.targets(y, ds.path)
            z = self.net.forward(Xs)[1]
            loss, _ = self.net._task.loss_delta(z, t)
            acc.update(loss, t, self.net._task.output(z))
        return {"path": ds.path, "task": self.task, **acc.result()}

    def write_predictions(self, source, out: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
        """Stream predictions for every row of ``source`` to ``out`` (.parquet, .h5, .zarr, .csv), chunk by
        chunk and atomically. Classification: columns ``p_<class>`` and ``prediction``; regression:
        ``prediction`` (or ``prediction_<j>`` for several outputs)."""
        from .io.writers import open_writer

        self._check_ready()
        ds = self.open_like_training(source)
        if self.task == "regression":
            names = ["prediction"] if self.net.n_out == 1 else [f"prediction_{j}" for j in range(self.net.n_out)]
            label, label_dtype = None, None
        else:
            names = [f"p_{c}" for c in self.classes]
            label = "prediction"
            label_dtype = np.asarray(self.classes).dtype
        n = 0
        with open_writer(out, ds.n_rows, names, label, label_dtype, chunk_rows=int(ds.chunk_sizes.max()),
                         overwrite=overwrite) as w:
            for _, output, _ in self.iter_outputs(ds):
                if self.task == "regression":
                    w.write(output.astype(np.float32), None)
                else:
                    proba = np.hstack([1 - output, output]) if self.task == "binary" else output
                    w.write(proba.astype(np.float32), np.asarray(self.classes)[proba.argmax(axis=1)])
                n += len(output)
        return {"path": os.fspath(out), "rows": n, "columns": names + ([label] if label else [])}

    def predict_proba(self, source) -> np.ndarray:
        """Class probabilities ``(rows, n_classes)`` (in memory: for small data)."""
        out = np.concatenate([o for _, o, _ in self.iter_outputs(source)])
        return np.hstack([1 - out, out]) if self.task == "binary" else out

    def predict(self, source) -> np.ndarray:
        """Predicted labels (classification) or values (regression) (in memory: for small data)."""
        out = np.concatenate([o for _, o, _ in self.iter_outputs(source)])
        if self.task == "regression":
            return out[:, 0] if out.shape[1] == 1 else out
        idx = (out[:, 0] > 0.5).astype(int) if self.task == "binary" else out.argmax(axis=1)
        return np.asarray(self.classes)[idx]
