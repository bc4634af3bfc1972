"""The shipped data/ files hold exactly scikit-learn's bundled datasets, in all three formats."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from streamtrain import open_dataset

from .conftest import DATA, FORMATS


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
def test_shipped_files_match_scikit_learn(name, suffix, request):
    X_ref, y_ref = request.getfixturevalue(name)
    with open_dataset(DATA / f"{name}{suffix}") as ds:
        assert ds.n_chunks > 1  # small, but chunked: the chunked code paths run on it
        X, y = ds.read(np.arange(ds.n_rows))
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_layout_is_as_data_readme_says():
    with h5py.File(DATA / "breast_cancer.h5", "r") as f:
        assert f["X"].shape == (569, 30) and f["y"].shape == (569,)
        assert f["X"].attrs["feature_names"][0] == "mean radius"
    g = zarr.open_group(str(DATA / "digits.zarr"), mode="r")
    assert g["X"].shape == (1797, 64) and g.metadata.zarr_format == 3
    schema = pq.read_schema(DATA / "digits.parquet")
    assert schema.names[0] == "pixel_0_0" and schema.names[-1] == "target"
    readme = (DATA / "README.md").read_text()
    for word in ("breast_cancer", "digits", "CC BY 4.0", "make_sample_data.py", "feature_names", "target"):
        assert word in readme


@pytest.mark.slow
def test_regeneration_reproduces_the_shipped_arrays(tmp_path, root):
    res = subprocess.run([sys.executable, str(root / "scripts" / "make_sample_data.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in ("breast_cancer", "digits"):
        for suffix in FORMATS:
            with open_dataset(DATA / f"{name}{suffix}") as a, open_dataset(tmp_path / f"{name}{suffix}") as b:
                assert a.describe() | {"path": None} == b.describe() | {"path": None}
                np.testing.assert_array_equal(a.read(np.arange(a.n_rows))[0], b.read(np.arange(b.n_rows))[0])
