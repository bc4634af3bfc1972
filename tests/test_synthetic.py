"""make-data: synthetic datasets written chunk by chunk, deterministic, learnable, in flat memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from streamtrain import DataError, make_data, open_dataset
from streamtrain.synthetic import Teacher

from .conftest import FORMATS


@pytest.mark.parametrize("suffix", FORMATS)
def test_writes_every_format_with_chunk_layout(tmp_path, suffix):
    out = tmp_path / f"d{suffix}"
    info = make_data(out, rows=1050, features=7, chunk_rows=100, seed=3)
    assert info["chunks"] == 11
    with open_dataset(out) as ds:
        assert (ds.n_rows, ds.n_features, ds.n_chunks) == (1050, 7, 11)
        assert ds.feature_names == [f"f{j}" for j in range(7)]
        assert ds.chunk_sizes.tolist() == [100] * 10 + [50]
        X, y = ds.read(np.arange(1050))
    assert X.dtype == np.float32 and y.dtype == np.int32
    assert set(np.unique(y)) == {0, 1}


def test_same_arguments_same_bytes_in_every_format(tmp_path):
    arrays = []
    for suffix in FORMATS:
        make_data(tmp_path / f"a{suffix}", rows=500, features=5, chunk_rows=64, seed=11)
        with open_dataset(tmp_path / f"a{suffix}") as ds:
            arrays.append(ds.read(np.arange(500)))
    for X, y in arrays[1:]:
        np.testing.assert_array_equal(X, arrays[0][0])
        np.testing.assert_array_equal(y, arrays[0][1])
    make_data(tmp_path / "b.h5", rows=500, features=5, chunk_rows=64, seed=12)
    with open_dataset(tmp_path / "b.h5") as ds:
        assert not np.array_equal(ds.read(np.arange(500))[0], arrays[0][0])


def test_chunks_do_not_depend_on_the_total_row_count(tmp_path):
    # Chunk i is generated from (seed, i) alone, so a longer file starts with the shorter one.
    make_data(tmp_path / "short.h5", rows=300, features=4, chunk_rows=100)
    make_data(tmp_path / "long.h5", rows=1000, features=4, chunk_rows=100)
    with open_dataset(tmp_path / "short.h5") as a, open_dataset(tmp_path / "long.h5") as b:
        np.testing.assert_array_equal(a.read(np.arange(300))[0], b.read(np.arange(300))[0])


@pytest.mark.parametrize("task,classes", [("binary", 2), ("multiclass", 5)])
def test_labels_are_learnable_but_noisy(task, classes):
    # The teacher's own decision beats chance by far, yet label noise keeps it below 100%.
    t = Teacher(16, task, classes, seed=0)
    X, y = t.sample(20000, np.random.default_rng(0))
    Z = (X - t.offset) / t.scale
    z = np.tanh(Z @ t.W1 + t.b1) @ t.W2
    pred = (z[:, 0] > 0).astype(int) if task == "binary" else z.argmax(1)
    acc = np.mean(pred == y)
    assert 1.5 / classes < acc < 0.99
    counts = np.bincount(y, minlength=classes) / len(y)
    assert counts.min() > 0.15 / classes  # no class vanishes


def test_regression_targets_are_floats(tmp_path):
    make_data(tmp_path / "r.parquet", rows=200, features=3, task="regression")
    with open_dataset(tmp_path / "r.parquet") as ds:
        y = ds.read(np.arange(200))[1]
    assert y.dtype == np.float32 and len(np.unique(y)) == 200


def test_refuses_to_overwrite_and_cleans_up_on_failure(tmp_path):
    out = tmp_path / "x.h5"
    make_data(out, rows=10, features=2)
    before = out.read_bytes()
    with pytest.raises(DataError, match="already exists"):
        make_data(out, rows=20, features=2)
    assert out.read_bytes() == before
    with pytest.raises(DataError, match="unknown task"):
        make_data(tmp_path / "y.h5", rows=10, features=2, task="ranking")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]  # no temporary left behind
    make_data(out, rows=20, features=2, overwrite=True)
    assert open_dataset(out).n_rows == 20


@pytest.mark.slow
def test_memory_stays_flat_as_rows_grow(tmp_path):
    """Peak RSS of make-data for 64 MB and 512 MB of features differs by far less than the data."""
    # VmHWM, not getrusage: ru_maxrss survives exec and would include this (large) pytest process.
    code = (
        "import sys, re; from streamtrain.synthetic import make_data;"
        "make_data(sys.argv[1], rows=int(sys.argv[2]), features=64);"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    peaks = {}
    for rows in (250_000, 2_000_000):
        out = tmp_path / f"m{rows}.h5"
        res = subprocess.run([sys.executable, "-c", code, str(out), str(rows)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        peaks[rows] = int(res.stdout) / 1024  # MiB
        out.unlink()
    assert peaks[2_000_000] < 300
    assert peaks[2_000_000] - peaks[250_000] < 40, peaks  # 448 MiB more data, (almost) no more memory
