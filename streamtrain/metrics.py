"""Streaming evaluation metrics: accumulate batch by batch, summarise once."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ClassificationMetrics", "RegressionMetrics", "metrics_for"]


class ClassificationMetrics:
    """Mean loss, accuracy, confusion matrix and per-class precision / recall / F1."""

    def __init__(self, classes: list):
        self.classes = list(classes)
        k = len(self.classes)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.loss_sum = 0.0
        self.n = 0

    def update(self, loss: float, target: np.ndarray, output: np.ndarray) -> None:
        """Add a batch: its mean loss, class indices ``(rows,)`` and probabilities ``(rows, n_out)``."""
        pred = (output[:, 0] > 0.5).astype(np.int64) if output.shape[1] == 1 else output.argmax(axis=1)
        k = len(self.classes)
        self.confusion += np.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        self.loss_sum += loss * len(target)
        self.n += len(target)

    def result(self) -> dict[str, Any]:
        c = self.confusion
        tp = np.diag(c).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(c.sum(0) > 0, tp / c.sum(0), 0.0)
            recall = np.where(c.sum(1) > 0, tp / c.sum(1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return {
            "n": self.n,
            "loss": self.loss_sum / max(self.n, 1),
            "accuracy": float(tp.sum() / max(self.n, 1)),
            "classes": self.classes,
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "confusion_matrix": c.tolist(),
        }


class RegressionMetrics:
    """Mean loss, MSE, MAE and R^2 (over all outputs), from running sums."""

    def __init__(self):
        self.n = 0
        self.loss_sum = self.se = self.ae = self.y_sum = self.y_sq = 0.0

    def update(self, loss: float, target: np.ndarray, output: np.ndarray) -> None:
        t = target.reshape(output.shape).astype(np.float64)
        r = output - t
        self.loss_sum += loss * len(t)
        self.n += len(t)
        self.se += float(np.sum(r * r))
        self.ae += float(np.abs(r).sum())
        self.y_sum += float(t.sum())
        self.y_sq += float(np.sum(t * t))
        self._width = t.shape[1]

    def result(self) -> dict[str, Any]:
        m = max(self.n * getattr(self, "_width", 1), 1)
        total = self.y_sq - self.y_sum**2 / m
        return {"n": self.n, "loss": self.loss_sum / max(self.n, 1), "mse": self.se / m,
                "mae": self.ae / m, "r2": 1.0 - self.se / total if total > 0 else 0.0}


def metrics_for(task: str, classes: list):
    """The accumulator that fits the task."""
    return RegressionMetrics() if task == "regression" else ClassificationMetrics(classes)
