"""The statistics pass's compiled column moments (``data/moments.py``) against numpy's two-pass
form in float64, in every layout a block arrives in, and stable where one pass would not be."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain.data.moments import column_moments
from streamtrain.data.scaling import DataStats


def _reference(X):
    Xd = X.astype(np.float64)
    mean = Xd.mean(axis=0)
    return mean, ((Xd - mean) ** 2).sum(axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "strided", "one row"])
def test_column_moments_equal_numpys_two_passes_in_every_layout(dtype, layout):
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((3001, 37)) * rng.uniform(0.1, 50, 37) + rng.uniform(-1e3, 1e3, 37)).astype(dtype)
    X = {"C": X, "F": np.asfortranarray(X), "strided": X[::3, ::2], "one row": X[:1]}[layout]
    mean, m2 = column_moments(X)
    ref_mean, ref_m2 = _reference(X)
    assert mean.dtype == m2.dtype == np.float64 and mean.shape == m2.shape == (X.shape[1],)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(m2, ref_m2, rtol=1e-9, atol=1e-9 * np.abs(ref_mean).max())


def test_column_moments_of_integers_and_a_large_offset_stay_exact():
    ints = np.arange(12, dtype=np.int16).reshape(6, 2)
    np.testing.assert_allclose(column_moments(ints)[1], _reference(ints)[1])
    # one pass (sum of squares less n * mean**2) loses every digit here: 1e9 + small deviations
    X = 1e9 + np.tile(np.array([[-1.0], [0.0], [1.0]]), (1000, 3))
    for block in (X, np.asfortranarray(X)):
        mean, m2 = column_moments(block)
        np.testing.assert_array_equal(mean, 1e9)
        np.testing.assert_array_equal(m2, 2000.0)


def test_datastats_merged_over_blocks_equal_the_whole():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 2.0, (10_000, 9)).astype(np.float32)
    stats = DataStats()
    for a in range(0, len(X), 999):
        block = X[a:a + 999]
        stats.update_features(np.asfortranarray(block) if a % 2 else block)
    ref_mean, ref_m2 = _reference(X)
    assert stats.n == len(X)
    np.testing.assert_allclose(stats.mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(stats.m2, ref_m2, rtol=1e-10)


def test_a_constant_column_is_found_over_a_million_float64_rows_and_ignored_where_the_pass_was_whole():
    # (its sums' rounding grows with the rows: 0.1s and 3.7s over 1M rows had standard deviations
    # of 3e-13 and 1.6e-11, scaled by factors of 3e12 and 6e10 where the rule was std <= 1e-12 |mean|)
    from streamtrain.data.scaling import Scaler

    stats = DataStats()
    for _ in range(4):
        stats.update_features(np.column_stack([np.full((250_000, 2), [0.1, 3.7]), np.arange(250_000) * 1e-3]))
    assert (np.sqrt(stats.var[:2]) > 0).all()  # (not exactly 0)
    whole = Scaler.from_stats("standard", stats, np.float64, constant=0.0)
    assert whole.scale[:2].tolist() == [0.0, 0.0] and whole.scale[2] > 0
    window = Scaler.from_stats("standard", stats, np.float64)  # (a stream's first rows: left unscaled)
    assert window.scale[:2].tolist() == [1.0, 1.0]
