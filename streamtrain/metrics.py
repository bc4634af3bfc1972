"""Streaming evaluation metrics: accumulate batch by batch, summarise once."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ClassificationMetrics", "RegressionMetrics", "metrics_for"]


# Binary scores are binned by their log-odds for the ROC AUC: 2^16 bins over [-30, 30] resolve
# 1e-3 in log-odds, so only scores that close count as ties (half a pair each).
AUC_BINS, AUC_LOGIT = 1 << 16, 30.0


class ClassificationMetrics:
    """Mean loss (the log loss), accuracy, confusion matrix, per-class precision / recall / F1 and
    support with their macro and weighted averages; for two classes the ROC AUC and curve as well."""

    def __init__(self, classes: list):
        self.classes = list(classes)
        k = len(self.classes)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.loss_sum = 0.0
        self.n = 0
        self.scores = np.zeros((2, AUC_BINS), dtype=np.int64) if k == 2 else None  # [negatives, positives]

    def update(self, loss: float, target: np.ndarray, output: np.ndarray) -> None:
        """Add a batch: its mean loss, class indices ``(rows,)`` and probabilities ``(rows, n_out)``."""
        pred = (output[:, 0] > 0.5).astype(np.int64) if output.shape[1] == 1 else output.argmax(axis=1)
        target = np.asarray(target).astype(np.int64, copy=False)  # int8 * bins overflows
        k = len(self.classes)
        self.confusion += np.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        self.loss_sum += loss * len(target)
        self.n += len(target)
        if self.scores is not None:
            p = output[:, 0] if output.shape[1] == 1 else output[:, 1]
            with np.errstate(divide="ignore"):
                logit = np.clip(np.log(p) - np.log1p(-p), -AUC_LOGIT, AUC_LOGIT)
            b = ((logit + AUC_LOGIT) * ((AUC_BINS - 1) / (2 * AUC_LOGIT))).astype(np.int64)
            self.scores += np.bincount(target * AUC_BINS + b, minlength=2 * AUC_BINS).reshape(2, AUC_BINS)

    def reduce(self, comm) -> None:
        """Sum this accumulator over every process (each evaluated its share of the rows)."""
        if comm.size == 1:
            return
        k = self.confusion.size
        parts = [self.confusion.ravel(), [self.loss_sum, self.n]]
        if self.scores is not None:
            parts.append(self.scores.ravel())
        buf = comm.allreduce(np.concatenate(parts).astype(np.float64))
        self.confusion = np.rint(buf[:k]).astype(np.int64).reshape(self.confusion.shape)
        self.loss_sum, self.n = float(buf[k]), int(round(buf[k + 1]))
        if self.scores is not None:
            self.scores = np.rint(buf[k + 2:]).astype(np.int64).reshape(self.scores.shape)

    def _auc(self) -> float | None:
        neg, pos = self.scores
        if not neg.sum() or not pos.sum():
            return None
        below = np.cumsum(neg) - neg  # negatives scored lower than each bin
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    def _roc(self, points: int = 200) -> dict[str, list[float]] | None:
        """The ROC curve from the binned scores: false and true positive rates as the threshold
        falls from the highest score bin to the lowest, from (0, 0) to (1, 1); at most ``points``
        points past the first (evenly spaced in rank over the bins that hold a score)."""
        neg, pos = self.scores
        if not neg.sum() or not pos.sum():
            return None
        held = np.flatnonzero(neg + pos)[::-1]  # highest first
        fpr = np.cumsum(neg[held]) / neg.sum()
        tpr = np.cumsum(pos[held]) / pos.sum()
        keep = np.unique(np.linspace(0, len(held) - 1, min(points, len(held))).round().astype(np.int64))
        return {"fpr": [0.0, *fpr[keep].tolist()], "tpr": [0.0, *tpr[keep].tolist()]}

    def result(self) -> dict[str, Any]:
        c = self.confusion
        tp = np.diag(c).astype(np.float64)
        support = c.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(c.sum(0) > 0, tp / c.sum(0), 0.0)
            recall = np.where(support > 0, tp / support, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        weights = support / max(support.sum(), 1)
        # the macro average over the classes in the labels or the predictions (scikit-learn's
        # default): a class absent from both would count as a 0 that says nothing of the model
        seen = (support > 0) | (c.sum(0) > 0)
        seen = seen if seen.any() else np.ones_like(seen)
        out = {
            "n": self.n,
            "loss": self.loss_sum / max(self.n, 1),
            "log_loss": self.loss_sum / max(self.n, 1),
            "accuracy": float(tp.sum() / max(self.n, 1)),
            "classes": self.classes,
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
            "macro": {"precision": float(precision[seen].mean()), "recall": float(recall[seen].mean()),
                      "f1": float(f1[seen].mean())},
            "weighted": {"precision": float(precision @ weights), "recall": float(recall @ weights),
                         "f1": float(f1 @ weights)},
            "confusion_matrix": c.tolist(),
        }
        if self.scores is not None:
            out["roc_auc"] = self._auc()
            out["roc_curve"] = self._roc()
        return out


class RegressionMetrics:
    """Mean loss (half the squared error summed over the outputs: what training minimises), MSE,
    MAE and R^2 (over all outputs), from running sums."""

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

    def reduce(self, comm) -> None:
        """Sum this accumulator over every process (each evaluated its share of the rows)."""
        if comm.size == 1:
            return
        width = max(comm.allgather(getattr(self, "_width", 0)))  # ranks without rows know none
        buf = comm.allreduce(np.array([self.n, self.loss_sum, self.se, self.ae, self.y_sum, self.y_sq], np.float64))
        self.n = int(round(buf[0]))
        self.loss_sum, self.se, self.ae, self.y_sum, self.y_sq = map(float, buf[1:])
        self._width = width or 1

    def result(self) -> dict[str, Any]:
        m = max(self.n * getattr(self, "_width", 1), 1)
        total = self.y_sq - self.y_sum**2 / m
        return {"n": self.n, "loss": self.loss_sum / max(self.n, 1), "mse": self.se / m,
                "mae": self.ae / m, "r2": 1.0 - self.se / total if total > 0 else 0.0}


def metrics_for(task: str, classes: list):
    """The accumulator that fits the task."""
    return RegressionMetrics() if task == "regression" else ClassificationMetrics(classes)
