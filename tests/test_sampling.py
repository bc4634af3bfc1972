"""Shuffle plans and the Sampler: coverage, determinism, resumability; the prefetching Loader."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain import ArrayDataset, Loader, Sampler
from streamtrain.readers.base import uniform_bounds
from streamtrain.sampling import SHUFFLES, epoch_order

MODES = sorted(SHUFFLES)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 700), chunk=st.integers(1, 200), batch=st.integers(1, 800),
       window=st.integers(1, 400), mode=st.sampled_from(MODES), drop_last=st.booleans())
def test_every_row_once_per_epoch(n, chunk, batch, window, mode, drop_last):
    s = Sampler(uniform_bounds(n, chunk), batch, mode, seed=5, drop_last=drop_last, window_rows=window)
    batches = list(s.iter_epoch())
    assert len(batches) == len(s)
    assert all(len(b) == batch for b in batches[:-1])
    assert all(np.all(np.diff(b) > 0) for b in batches)  # sorted reads
    rows = np.concatenate(batches) if batches else np.array([], int)
    if drop_last:
        assert len(rows) == n - n % batch and len(np.unique(rows)) == len(rows)
    else:
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))


def test_last_partial_batch_is_kept_by_default():
    s = Sampler(uniform_bounds(1050, 64), 100, "global")
    sizes = [len(b) for b in s.iter_epoch()]
    assert len(sizes) == 11 and sizes[-1] == 50
    s.drop_last = True
    assert [len(b) for b in s.iter_epoch()] == [100] * 10


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_from_seed_and_epoch(mode):
    b = uniform_bounds(500, 37)
    a1, a2 = epoch_order(mode, b, 1, 0, 100), epoch_order(mode, b, 1, 0, 100)
    np.testing.assert_array_equal(a1, a2)
    if mode != "none":
        assert not np.array_equal(a1, epoch_order(mode, b, 1, 1, 100))
        assert not np.array_equal(a1, epoch_order(mode, b, 2, 0, 100))


def test_window_mode_needs_one_window_of_chunks_at_a_time():
    bounds = uniform_bounds(1000, 50)
    order = epoch_order("window", bounds, 0, 0, 200)
    chunk = np.searchsorted(bounds, order, side="right") - 1
    # Each window of 200 rows draws on exactly 4 chunks, and no chunk appears in two windows.
    windows = [set(chunk[i:i + 200]) for i in range(0, 1000, 200)]
    assert all(len(w) == 4 for w in windows)
    assert len(set().union(*windows)) == 20
    # Rows of a chunk are spread, not consecutive.
    assert np.mean(np.diff(order) == 1) < 0.1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 32, 77])
def test_resume_mid_epoch_continues_the_same_batches(mode, batch):
    bounds = uniform_bounds(600, 64)
    full = Sampler(bounds, batch, mode, seed=9, window_rows=150)
    full.epoch = 2
    expected = list(full.iter_epoch())
    s = Sampler(bounds, batch, mode, seed=9, window_rows=150)
    s.epoch = 2
    for b in list(s.iter_epoch())[:5]:
        s.advance(len(b))
    resumed = Sampler(bounds, batch, mode, seed=9, window_rows=150)
    resumed.load_state_dict(s.state_dict())
    got = list(resumed.iter_epoch())
    assert len(got) == len(expected) - 5
    for a, b in zip(got, expected[5:]):
        np.testing.assert_array_equal(a, b)


def test_state_refuses_a_different_sampler():
    s = Sampler(uniform_bounds(100, 10), 8, "global")
    with pytest.raises(ValueError, match="batch_size"):
        Sampler(uniform_bounds(100, 10), 16, "global").load_state_dict(s.state_dict())


def test_loader_yields_the_sampler_rows_and_stops_its_thread():
    X = np.arange(300 * 2, dtype=np.float32).reshape(300, 2)
    ds = ArrayDataset(X, np.arange(300), chunk_rows=40)
    loader = Loader(ds, Sampler(ds.bounds, 16, "window", seed=1, window_rows=80))
    seen = []
    for rows, Xb, yb in loader.iter_epoch():
        np.testing.assert_array_equal(Xb, X[rows])
        np.testing.assert_array_equal(yb, rows)
        seen.extend(rows)
    assert sorted(seen) == list(range(300))
    it = loader.iter_epoch()
    next(it)
    it.close()  # consumer stops early
    assert not [t for t in threading.enumerate() if t.name == "streamtrain-loader"]


def test_loader_reraises_reader_errors():
    class Broken(ArrayDataset):
        def read(self, rows):
            raise OSError("disk on fire")

    ds = Broken(np.zeros((50, 2)), np.zeros(50), chunk_rows=10)
    with pytest.raises(OSError, match="disk on fire"):
        list(Loader(ds, Sampler(ds.bounds, 8, "none")).iter_epoch())
    assert not [t for t in threading.enumerate() if t.name == "streamtrain-loader"]
