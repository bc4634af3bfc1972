from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
FORMATS = (".h5", ".zarr", ".parquet")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    return b.data.astype(np.float32), b.target.astype(np.int32)


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    b = load_digits()
    return b.data.astype(np.float32), b.target.astype(np.int32)
