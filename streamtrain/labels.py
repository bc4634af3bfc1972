"""The task and its classes: raw labels in, what the network is trained on out, and back."""

from __future__ import annotations

import numpy as np

from .data.scaling import DataStats
from .errors import DataError

__all__ = ["Labels", "infer_task", "given_classes", "MAX_AUTO_CLASSES"]

# Integral labels with more distinct values than this are taken as a regression target.
MAX_AUTO_CLASSES = 100


def infer_task(stats: DataStats) -> str:
    """binary / multiclass / regression, from what the labels look like."""
    if stats.label_ndim == 2:
        return "multiclass" if stats.onehot and stats.label_width > 2 else "regression"
    if not stats.label_integral or len(stats.classes) > MAX_AUTO_CLASSES:
        return "regression"
    return "binary" if len(stats.classes) <= 2 else "multiclass"


class Labels:
    """``task`` and ``classes`` (sorted label values; empty for regression), and ``n_out``, the
    network's outputs. ``targets`` encodes raw labels as class indices (or float values),
    ``decode`` maps class indices back to label values.

    >>> Labels("multiclass", [3, 5, 7]).targets(np.array([7, 3]))
    array([2, 0])
    """

    def __init__(self, task: str, classes: list, n_out: int | None = None):
        self.task, self.classes = task, list(classes)
        self.n_out = n_out if n_out is not None else (1 if task == "binary" else len(self.classes))
        self._identity = self.classes == list(range(len(self.classes)))
        # Classes that are strings or booleans (a class label's own values) arrive as their indices: the
        # reader's encoding found them, so the labels read are 0..K-1 (NaN where missing).
        self._indices = any(isinstance(c, (str, bool)) for c in self.classes)
        self._table = np.asarray(self.classes) if self.classes else None
        # (classes in the order --classes gave, not sorted: looked up through their sorted order)
        self._order = np.argsort(self._table, kind="stable") if self.classes else None

    @classmethod
    def from_stats(cls, stats: DataStats, task: str, label_name: str, where: str, log=None,
                   classes: list | None = None) -> "Labels":
        """The task (``"auto"``: inferred) and classes the label summary ``stats`` shows; ``classes``:
        a class label's own values (strings, categories), found by the reader's encoding."""
        if classes is not None:
            return cls._of_classes(list(classes), task, label_name, where, log)
        chosen = infer_task(stats) if task == "auto" else task
        if task == "auto" and log:
            log(f"task: {chosen} (chosen from label {label_name!r}; set --task to override)")
        if chosen == "regression":
            return cls(chosen, [], stats.label_width)
        if stats.label_ndim == 2:  # one-hot: the columns are the classes
            if not stats.onehot:
                raise DataError(f"{where}: 2-D label {label_name!r} is not one-hot; use --task regression")
            return cls(chosen, list(range(stats.label_width)), stats.label_width)
        if not stats.label_integral:
            raise DataError(f"{where}: label {label_name!r} has non-integral values; use --task regression")
        # (whole numbers read as floats are the label's own integers: classes 1, 2, not 1.0, 2.0)
        classes = [int(c) if isinstance(c, (float, np.floating)) and float(c).is_integer() else c
                   for c in sorted(stats.classes)]
        if chosen == "binary" and len(classes) > 2:
            raise DataError(f"{where}: binary task but label has {len(classes)} classes")
        return cls(chosen, classes)

    @classmethod
    def _of_classes(cls, classes: list, task: str, label_name: str, where: str, log) -> "Labels":
        chosen = task if task != "auto" else ("binary" if len(classes) <= 2 else "multiclass")
        if task == "auto" and log:
            log(f"task: {chosen} (label {label_name!r} has {len(classes)} classes; set --task to override)")
        if chosen == "regression":
            raise DataError(f"{where}: label {label_name!r} holds classes ({', '.join(map(repr, classes[:4]))}"
                            f"{', ...' if len(classes) > 4 else ''}), not numbers: it cannot be a regression target")
        if chosen == "binary" and len(classes) > 2:
            raise DataError(f"{where}: binary task but label {label_name!r} has {len(classes)} classes")
        return cls(chosen, classes)

    def class_weights(self, spec: str, stats: DataStats, where: str) -> list[float] | None:
        """Each class index's loss weight from a ``class_weight`` setting ("balanced": n / (classes x
        rows of the class); or weights by class value), or None (all 1)."""
        from .config import class_weights

        chosen = class_weights(spec)
        if chosen is None:
            return None
        if self.task == "regression":
            raise DataError(f"{where}: class_weight applies to classification, and the task is regression")
        classes = self.classes if len(self.classes) > 1 else [0, 1]
        if chosen == "balanced":
            # the statistics pass counted the labels read: class indices where the classes are strings
            keys = range(len(classes)) if self._indices else classes
            counts = [stats.counts.get(k, 0) for k in keys]
            total = sum(counts)
            return [total / (len(classes) * c) if c else 0.0 for c in counts]
        unknown = set(chosen) - {str(c) for c in classes}
        if unknown:
            raise DataError(f"{where}: class_weight names {sorted(unknown)[0]!r}, not one of the classes {classes}")
        return [chosen.get(str(c), 1.0) for c in classes]

    def targets(self, y: np.ndarray, where: str = "") -> np.ndarray:
        """Labels as the network wants them: class indices, or float values for regression."""
        if self.task == "regression":
            return y
        if self._indices and y.dtype.kind in "iuf":
            # Numbers for classes that are strings: their indices already (a reader's encoding
            # found them, range-checked there); raw strings (the service's rows) are looked up.
            return y.astype(np.int64)
        if y.ndim == 2:  # one-hot rows -> class indices
            return y.argmax(axis=1)
        if self._identity and y.dtype.kind in "iub":
            # Classes 0..K-1 are their own indices: a range check replaces the lookup.
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                bad = y[(y < 0) | (y >= len(self.classes))][0].item()
                raise DataError(f"{where}: label value {bad!r} is not one of the classes seen in training {self.classes}")
            # Class indices are int64 whatever the file stored: int8 or bool targets overflow in
            # the metrics (target * bins) and the kernels would compile once per label dtype.
            return y.astype(np.int64, copy=False)
        idx = self._order[np.minimum(np.searchsorted(self._table, y, sorter=self._order), len(self.classes) - 1)]
        if not np.array_equal(self._table[idx], y):
            bad = y[self._table[idx] != y][0].item()
            raise DataError(f"{where}: label value {bad!r} is not one of the classes seen in training {self.classes}")
        return idx

    def decode(self, idx: np.ndarray) -> np.ndarray:
        """Label values of class indices."""
        return self._table[idx]


def given_classes(given: list[str], stats: DataStats, label_name: str, where: str) -> list:
    """``--classes`` of a numeric label: numbers, in the order given; every value seen among them."""
    out = []
    for tok in given:
        try:
            v = float(tok)
        except ValueError:
            raise DataError(f"{where}: --classes {tok!r} is not a number, and label {label_name!r} holds "
                            "numbers") from None
        out.append(int(v) if v.is_integer() else v)
    outside = sorted(set(stats.classes) - set(out))
    if outside:
        raise DataError(f"{where}: label {label_name!r} holds {outside[0]!r}, which is not one of --classes "
                        f"{','.join(given)} (add it, or leave --classes out to take the label's values)")
    return out
