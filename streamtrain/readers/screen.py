"""The NaN/Inf screen: which rows of a block hold non-finite values, found cheaply."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = ["bad_rows"]


def unlabelled_rows(X: np.ndarray, y: np.ndarray | None, bad: np.ndarray) -> int:
    """How many of the rows ``bad`` marks lack only their label (NaN), their features all finite."""
    if y is None or y.dtype.kind != "f":
        return 0
    only_label = bad & ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
    if X.dtype.kind == "f":
        only_label &= np.isfinite(X).all(axis=1)
    return int(np.count_nonzero(only_label))


def bad_rows(X: np.ndarray, y: np.ndarray | None, rows: int | np.ndarray, policy: str,
             path: str, missing_labels: str = "error", names: list[str] | None = None,
             nan_missing: bool = False, label_option: str = "--missing-label skip") -> np.ndarray | None:
    """Mask of the rows of ``X`` (and ``y``) holding NaN/Inf, or None if there are none; under
    ``policy="error"`` the first such row is an error naming it (``"refuse"``: the same, for a
    model's predictions, where no option skips rows).

    ``rows``: the row number of each row of ``X``, or of its first row where they follow on.
    ``missing_labels="skip"``: a row whose label alone is NaN (a missing label of an encoded
    table) is skipped whatever the policy. ``names``: the features' names, to name the column;
    ``nan_missing``: a column of a store whose NaN is a missing value (HDF5, Zarr tables), for
    which the error also says how to have it imputed. ``label_option``: what leaves a row whose
    label alone is missing out, for the error about it.
    """
    # A cheap screen finds NaN/Inf; only then is the row located exactly.
    with np.errstate(over="ignore", invalid="ignore"):
        # min and max propagate NaN and show +-Inf; single-threaded, unlike a BLAS dot whose
        # spinning worker threads slow the reader on a 2-core machine.
        suspect = (X.dtype.kind == "f" and X.size and not (np.isfinite(X.min()) and np.isfinite(X.max()))) or (
            y is not None and y.dtype.kind == "f" and not np.isfinite(y.sum()))
    if not suspect:
        return None
    bad = ~np.isfinite(X).all(axis=1) if X.dtype.kind == "f" else np.zeros(len(X), bool)
    unlabelled = np.zeros(len(X), bool)
    if y is not None and y.dtype.kind == "f":
        bad_y = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        if missing_labels == "skip":
            unlabelled = bad_y & ~bad
        else:
            bad |= bad_y
    if not bad.any():
        return unlabelled if unlabelled.any() else None
    if policy in ("error", "refuse"):
        at = int(np.argmax(bad))
        row = rows + at if isinstance(rows, int) else int(rows[at])
        inf = X.dtype == np.float32 and np.isinf(X[at]).any()
        beyond = " (or a value beyond float32's range, which reads as Inf)" if inf else ""
        cols = np.nonzero(~np.isfinite(X[at]))[0] if X.dtype.kind == "f" else []
        name = names[int(cols[0])] if len(cols) and names is not None and int(cols[0]) < len(names) else None
        where = f", column {name!r}" if name else ""
        impute = (f", or treat NaN as missing (imputed, with an indicator): --numeric {name}"
                  if nan_missing and name and np.isnan(X[at, int(cols[0])]) else "")
        if not len(cols) and y is not None and y.dtype.kind == "f" and np.isnan(y.reshape(len(y), -1)[at]).any():
            # (its features are fine: the label is what is missing, which --skip-nonfinite would hide)
            raise DataError(f"{path}: row {row} has no label (missing or NaN); fill it in, or leave such rows "
                            f"out with {label_option}")
        if policy == "refuse":  # (a model's predictions and evaluations: no option skips rows there)
            raise DataError(f"{path}: NaN or Inf in row {row}{where}{beyond}; a prediction is made for every row "
                            "read: clean the data first")
        raise DataError(f"{path}: NaN or Inf in row {row}{where}{beyond}; clean the data or skip such rows "
                        f"(--skip-nonfinite, nonfinite='skip'){impute}")
    return bad | unlabelled
