"""Synthetic datasets of any size, labelled by a fixed random teacher network.

Rows are generated and written one chunk at a time, so memory stays flat
whatever ``rows`` is: this is how users, tests and benchmarks get data larger
than RAM.
"""

from __future__ import annotations

import os

import numpy as np

from .config import MAX_FEATURES
from .errors import DataError
from .io.writers import open_writer
from .readers import detect_format
from .readers.layout import check_chunk_size

__all__ = ["Teacher", "make_data", "TASKS"]

TASKS = ("binary", "multiclass", "regression")


class Teacher:
    """A fixed random two-layer tanh network that labels standard-normal inputs.

    Noise is drawn from the teacher's own output distribution (logistic for
    binary, Gumbel-max for multi-class, Gaussian for regression), so the task
    is learnable but its Bayes accuracy is below 1.
    """

    def __init__(self, n_features: int, task: str = "binary", n_classes: int = 2,
                 seed: int = 0, hidden: int = 16, noise: float = 0.5):
        if task not in TASKS:
            raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        if task == "multiclass" and n_classes < 2:
            raise DataError("multiclass needs --classes >= 2")
        rng = np.random.default_rng([seed, 0x7EAC4E5])
        self.task, self.noise = task, float(noise)
        self.n_out = n_classes if task == "multiclass" else 1
        self.n_classes = n_classes if task == "multiclass" else 2
        # float32 throughout, so no chunk-sized float64 temporaries are made.
        self.W1 = (rng.standard_normal((n_features, hidden)) / np.sqrt(n_features)).astype(np.float32)
        self.b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
        self.W2 = (rng.standard_normal((hidden, self.n_out)) * (3.0 / np.sqrt(hidden * 0.4))).astype(np.float32)
        # Features are stored with varied scales and offsets so standardisation matters.
        self.scale = np.exp(rng.uniform(-2.0, 2.0, n_features)).astype(np.float32)
        self.offset = rng.uniform(-5.0, 5.0, n_features).astype(np.float32)

    @property
    def label_dtype(self) -> str:
        return "float32" if self.task == "regression" else "int32"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` rows: features ``(n, n_features)`` float32 and their labels ``(n,)``."""
        Z = rng.standard_normal((n, self.W1.shape[0]), dtype=np.float32)
        z = np.tanh(Z @ self.W1 + self.b1) @ self.W2
        if self.task == "binary":
            y = (z[:, 0] + self.noise * rng.logistic(size=n) > 0).astype(np.int32)
        elif self.task == "multiclass":
            y = np.argmax(z + self.noise * rng.gumbel(size=z.shape), axis=1).astype(np.int32)
        else:
            y = (z[:, 0] + self.noise * rng.standard_normal(n)).astype(np.float32)
        Z *= self.scale  # in place: Z becomes the stored features
        Z += self.offset
        return Z, y


def make_data(out: str | os.PathLike, rows: int, features: int, task: str = "binary",
              classes: int = 2, chunk_rows: int = 16384, seed: int = 0, noise: float = 0.5,
              compression: str | None = "default", overwrite: bool = False, progress=None) -> dict:
    """Write a synthetic dataset to ``out`` (.h5, .zarr or .parquet), chunk by chunk.

    Returns a summary dict (path, rows, features, task, chunks). The same
    arguments always produce the same data. ``progress(rows)`` hears of each chunk written.

    >>> make_data("/tmp/st_doc.parquet", rows=1000, features=8, overwrite=True)["rows"]
    1000
    """
    detect_format(out)  # only formats streamtrain reads back (not CSV)
    if rows < 1 or features < 1:
        raise DataError(f"{out}: --rows and --features must be at least 1")
    if chunk_rows < 1:
        raise DataError(f"{out}: --chunk-rows must be at least 1")
    if features > MAX_FEATURES:
        raise DataError(f"{out}: at most {MAX_FEATURES} features")
    check_chunk_size(min(chunk_rows, rows) * features * 8, os.fspath(out), "--chunk-rows x --features")
    teacher = Teacher(features, task, classes, seed, noise=noise)
    names = [f"f{j}" for j in range(features)]
    n_chunks = -(-rows // chunk_rows)
    with open_writer(out, rows, names, "y", teacher.label_dtype, chunk_rows, compression,
                     overwrite=overwrite) as w:
        for i in range(n_chunks):
            # One generator per chunk: chunk i's rows do not depend on how many came before.
            rng = np.random.default_rng([seed, i])
            n = min(chunk_rows, rows - i * chunk_rows)
            w.write(*teacher.sample(n, rng))
            if progress is not None:
                progress(n)
    return {"path": os.fspath(out), "rows": rows, "features": features, "task": task,
            "classes": teacher.n_classes if task != "regression" else None,
            "chunks": n_chunks, "chunk_rows": chunk_rows}
