"""Shuffle plans and the Sampler: coverage, determinism, resumability; the prefetching Loader."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain import ArrayDataset, Loader, Sampler
from streamtrain.data.sampling import SHUFFLES, epoch_order
from streamtrain.readers.layout import uniform_bounds

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


def _running() -> list:
    """streamtrain's threads still running, but the process's lasting helper (``lanes.SECOND``, the
    second half of lazy Adam and of the split step: started once, by whichever test of this worker
    ran it first)."""
    return [t for t in threading.enumerate() if t.name.startswith("streamtrain-") and t.name != "streamtrain-lane"]


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


@pytest.mark.parametrize("mode", MODES + ["replacement", "sharded"])
@pytest.mark.parametrize("batch", [1, 32, 77])
def test_resume_mid_epoch_continues_the_same_batches(mode, batch):
    bounds = uniform_bounds(600, 64)
    kw = {"replacement": True} if mode == "replacement" else {"rank": 1, "world_size": 3} if mode == "sharded" else {}
    mode = mode if mode in MODES else "window"
    full = Sampler(bounds, batch, mode, seed=9, window_rows=150, **kw)
    full.epoch = 2
    expected = list(full.iter_epoch())
    s = Sampler(bounds, batch, mode, seed=9, window_rows=150, **kw)
    s.epoch = 2
    k = min(5, len(expected) - 1)
    for b in list(s.iter_epoch())[:k]:
        s.advance(len(b))
    resumed = Sampler(bounds, batch, mode, seed=9, window_rows=150, **kw)
    resumed.load_state_dict(s.state_dict())
    got = list(resumed.iter_epoch())
    assert len(got) == len(expected) - k
    for a, b in zip(got, expected[k:]):
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
    assert not _running()


def test_loader_reraises_reader_errors():
    class Broken(ArrayDataset):
        def read(self, rows):
            raise OSError("disk on fire")

        view = lambda self, a, b: self.read(np.arange(a, b))

    ds = Broken(np.zeros((50, 2)), np.zeros(50), chunk_rows=10)
    with pytest.raises(OSError, match="disk on fire"):
        list(Loader(ds, Sampler(ds.bounds, 8, "none")).iter_epoch())
    assert not _running()


def test_global_shuffle_positions_are_uniform():
    """Over many epochs each row lands in each position equally often (chi-square)."""
    from scipy.stats import chisquare

    n, epochs = 12, 6000
    counts = np.zeros((n, n))
    for e in range(epochs):
        order = epoch_order("global", uniform_bounds(n, 4), seed=3, epoch=e, window_rows=0)
        counts[order, np.arange(n)] += 1
    for row in range(n):
        assert chisquare(counts[row]).pvalue > 1e-4, counts[row]
    # and not just the marginals: successive rows are not stuck together
    follows = sum(epoch_order("global", uniform_bounds(n, 4), 3, e, 0).tolist().index(5) + 1 ==
                  epoch_order("global", uniform_bounds(n, 4), 3, e, 0).tolist().index(6) for e in range(600))
    assert abs(follows / 600 - 1 / n) < 0.05


def test_global_shuffle_of_ten_billion_rows_needs_no_index_memory():
    import tracemalloc

    tracemalloc.start()
    s = Sampler(uniform_bounds(10**10, 1 << 20), 256, "global", seed=1)
    batch = next(s.iter_epoch())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, peak  # a block of positions, not 80 GB of indices
    assert len(batch) == 256 and batch.max() < 10**10 and len(np.unique(batch)) == 256


def test_window_shuffle_spreads_each_chunk_over_many_batches():
    bounds = uniform_bounds(4000, 100)
    s = Sampler(bounds, 10, "window", seed=0, window_rows=800)
    batches_of_chunk = {}
    for k, b in enumerate(s.iter_epoch()):
        for c in np.unique(b // 100):
            batches_of_chunk.setdefault(int(c), set()).add(k)
    assert min(len(v) for v in batches_of_chunk.values()) >= 5  # 100 rows of a chunk across >= 5 batches of 10


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), world=st.integers(1, 5), batch=st.integers(1, 64), mode=st.sampled_from(MODES))
def test_shards_are_disjoint_equal_and_cover_the_epoch(n, world, batch, mode):
    bounds = uniform_bounds(n, 37)
    shares = []
    for rank in range(world):
        s = Sampler(bounds, batch, mode, seed=4, window_rows=90, rank=rank, world_size=world)
        batches = list(s.iter_epoch())
        shares.append(np.concatenate(batches) if batches else np.array([], int))
    sizes = {len(x) for x in shares}
    assert sizes == {n // world}
    allrows = np.concatenate(shares)
    assert len(np.unique(allrows)) == len(allrows)  # disjoint
    if world == 1:
        assert len(allrows) == n


def test_replacement_draws_iid_batches():
    s = Sampler(uniform_bounds(1000, 100), 64, "global", seed=2, replacement=True)
    batches = list(s.iter_epoch())
    assert len(batches) == 16 and sum(map(len, batches)) == 1000
    rows = np.concatenate(batches)
    assert rows.min() >= 0 and rows.max() < 1000
    assert len(np.unique(rows)) < 1000  # with replacement some rows repeat (about 63% unique)
    s.next_epoch()
    assert not np.array_equal(np.concatenate(list(s.iter_epoch())), rows)


def test_loader_is_safe_across_fork(tmp_path):
    import multiprocessing as mp

    from streamtrain import make_data, open_dataset

    make_data(tmp_path / "f.h5", rows=2000, features=4, chunk_rows=256)
    ds = open_dataset(tmp_path / "f.h5")
    expected = ds.read(np.arange(0, 2000, 7))[0]  # parent has an open h5py handle now
    global _FORKED
    _FORKED = ds
    for method in ("fork", "spawn"):  # fork inherits the dataset; spawn pickles it
        with mp.get_context(method).Pool(2) as pool:
            results = pool.map(_read_in_child, [(ds if method == "spawn" else None, np.arange(0, 2000, 7))] * 2)
        for got in results:
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ds.read(np.arange(0, 2000, 7))[0], expected)  # parent handle still fine


_FORKED = None


def _read_in_child(args):
    ds, rows = args
    return (ds or _FORKED).read(rows)[0]


def test_loader_stops_cleanly_on_ctrl_c_and_closes_files(tmp_path):
    import os

    from streamtrain import make_data, open_dataset

    make_data(tmp_path / "k.parquet", rows=5000, features=4, chunk_rows=500)
    fds_before = len(os.listdir("/proc/self/fd"))
    ds = open_dataset(tmp_path / "k.parquet")
    loader = Loader(ds, Sampler(ds.bounds, 50, "global"))
    with pytest.raises(KeyboardInterrupt):
        for k, _ in enumerate(loader.iter_epoch()):
            if k == 3:
                raise KeyboardInterrupt
    assert not _running()
    ds.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before


@pytest.mark.parametrize("suffix", [".h5", "-plain.h5", ".zarr", ".parquet"])
@pytest.mark.parametrize("mode", MODES)
def test_loader_batches_match_the_sampler_and_window_reads_each_chunk_once(tmp_path, suffix, mode):
    from streamtrain import make_data, open_dataset
    from streamtrain.data.loader import window_rows_for

    path = tmp_path / f"w{suffix}"  # -plain.h5: uncompressed, gathered in place from a file map
    codec = "none" if suffix == "-plain.h5" else "gzip" if suffix == ".h5" else "default"
    make_data(path, rows=20000, features=8, chunk_rows=1000, compression=codec)
    ds = open_dataset(path)
    everything = ds.read(np.arange(20000))
    ds.close()
    ds = open_dataset(path, cache_bytes=1 << 20)
    sampler = Sampler(ds.bounds, 64, mode, seed=3, window_rows=window_rows_for(200_000, ds))
    expected = list(Sampler(ds.bounds, 64, mode, seed=3, window_rows=sampler.window_rows).iter_epoch())
    got = list(Loader(ds, sampler).iter_epoch())
    assert len(got) == len(expected)
    for (rows, X, y), want in zip(got, expected):
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(X, everything[0][rows])
        np.testing.assert_array_equal(y, everything[1][rows])
    if mode != "global":
        assert ds.stats["chunks_read"] == ds.n_chunks  # sequential I/O: every chunk decoded once
    assert not _running()


@pytest.mark.parametrize("mode", MODES)
def test_file_map_is_told_the_chunks_to_come(tmp_path, mode, monkeypatch):
    """Data gathered in place from a file map asks the OS to read ahead: each window's chunks
    (window shuffle) or the next chunks (storage order) once, in the order they will be used."""
    from streamtrain import make_data, open_dataset

    make_data(tmp_path / "m.h5", rows=20000, features=4, chunk_rows=1000, compression="none")
    ds = open_dataset(tmp_path / "m.h5")
    monkeypatch.setattr("streamtrain.data.loader.GROUP_ROWS", 500)  # several groups per window
    hinted, released = [], []
    ds.prefetch = hinted.append
    ds.release = lambda: released.append(len(hinted))
    sampler = Sampler(ds.bounds, 64, mode, seed=1, window_rows=3000)
    assert sum(len(r) for r, _, _ in Loader(ds, sampler).iter_epoch()) == 20000
    expected = sampler.plan().windows.chunks.tolist() if mode == "window" else list(range(20)) if mode == "none" else []
    assert hinted == expected
    # Window shuffle: the pages of the windows served so far leave the process as each new one starts.
    assert len(released) == (len(sampler.plan().windows) - 1 if mode == "window" else 0)
    ds.close()


@pytest.mark.parametrize("source", ["gzip.h5", "plain.h5", "memory"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("whole_groups", [False, True])
def test_scaling_in_the_gathered_rows_gives_the_same_bits(tmp_path, source, mode, whole_groups, monkeypatch):
    """Loader(scale=(mean, factor)) scales the rows in the arrays it gathered them into (in place),
    or into a new array where they are views of the data: the batches equal those scaled
    afterwards, groups within one window and across two alike."""
    from streamtrain import make_data, open_dataset

    monkeypatch.setattr("streamtrain.data.loader.GROUP_ROWS", 256)  # most groups inside one window, some across
    if source == "memory":
        ds = ArrayDataset(np.random.default_rng(1).standard_normal((3000, 6)) * 3 + 1, np.arange(3000) % 2,
                          chunk_rows=300)
    else:
        make_data(tmp_path / source, rows=3000, features=6, chunk_rows=300,
                  compression="gzip" if source == "gzip.h5" else "none")
        ds = open_dataset(tmp_path / source)
    rng = np.random.default_rng(2)
    mean, factor = rng.standard_normal(6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)

    def after(X, y):
        out = X - mean
        out *= factor
        return out, y

    def batches(**how):
        sampler = Sampler(ds.bounds, 64, mode, seed=5, window_rows=900)
        return list(Loader(ds, sampler, decoder="thread", whole_groups=whole_groups, **how).iter_epoch())

    fused, plain = batches(scale=(mean, factor)), batches(transform=after)
    assert len(fused) == len(plain) > 1
    for (r1, X1, y1), (r2, X2, y2) in zip(fused, plain):
        np.testing.assert_array_equal(r1, r2)
        assert X1.dtype == X2.dtype == np.float32 and X1.tobytes() == X2.tobytes()
        np.testing.assert_array_equal(y1, y2)


def test_loader_applies_transform_to_whole_groups_in_batch_order():
    X = np.arange(600, dtype=np.float32).reshape(300, 2)
    ds = ArrayDataset(X, np.arange(300), chunk_rows=40)
    calls = []

    def transform(Xg, yg):
        calls.append(len(Xg))
        return Xg * 2, yg + 1000

    for mode in MODES:
        calls.clear()
        loader = Loader(ds, Sampler(ds.bounds, 16, mode, seed=3, window_rows=80), transform=transform)
        for rows, Xb, yb in loader.iter_epoch():
            np.testing.assert_array_equal(Xb, X[rows] * 2)
            np.testing.assert_array_equal(yb, rows + 1000)
        assert sum(calls) == 300 and len(calls) < 300 // 16  # per group of batches, not per batch


def test_in_memory_rows_in_storage_order_are_views_not_copies():
    X = np.random.default_rng(0).standard_normal((500, 3)).astype(np.float32)
    ds = ArrayDataset(X, np.zeros(500), chunk_rows=64)
    for rows, Xb, _ in Loader(ds, Sampler(ds.bounds, 50, "none")).iter_epoch():
        assert np.shares_memory(Xb, X)
        np.testing.assert_array_equal(Xb, X[rows])
    X[7, 1] = np.nan  # a skipped row: the copying path drops it
    ds = ArrayDataset(X, np.zeros(500), chunk_rows=64)
    ds.nonfinite = "skip"
    got = [Xb for _, Xb, _ in Loader(ds, Sampler(ds.bounds, 50, "none")).iter_epoch()]
    assert sum(map(len, got)) == 499 and not np.isnan(np.concatenate(got)).any()


def test_sharing_cores_limits_blas_and_the_switch_interval_while_the_loader_works(tmp_path):
    import sys

    from threadpoolctl import threadpool_info

    from streamtrain import open_dataset
    from streamtrain.synthetic import make_data

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before, interval = blas_threads(), sys.getswitchinterval()
    make_data(tmp_path / "s.h5", rows=500, features=3, chunk_rows=100)
    with open_dataset(tmp_path / "s.h5") as ds:
        with Loader(ds, Sampler(ds.bounds, 10, "none")).sharing_cores():
            assert all(n <= max(1, len(os.sched_getaffinity(0)) - 1) for n in blas_threads())
            assert sys.getswitchinterval() < interval
    assert blas_threads() == before and sys.getswitchinterval() == interval
    mem = ArrayDataset(np.zeros((10, 2)), np.zeros(10))
    with Loader(mem, Sampler(mem.bounds, 5, "none")).sharing_cores():  # views as they are: nothing changes
        assert blas_threads() == before and sys.getswitchinterval() == interval
    with Loader(mem, Sampler(mem.bounds, 5, "window")).sharing_cores():  # shuffled rows are gathered
        assert sys.getswitchinterval() < interval
    assert blas_threads() == before and sys.getswitchinterval() == interval


def _assert_same_batches(got, want):
    """The same ``(rows, X, y)`` batches, in the same order, to the bit."""
    assert len(got) == len(want)
    for (r1, X1, y1), (r2, X2, y2) in zip(got, want):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(X1, X2)
        np.testing.assert_array_equal(y1, y2)


def _decoder_children():
    """Live window-decoding worker processes started by this process."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (OSError, ValueError):
            continue
        if ppid == os.getpid() and b"streamtrain.data._worker" in cmd:
            out.append(int(pid))
    return out


@pytest.mark.parametrize("suffix", [".h5", ".zarr", ".parquet"])
def test_process_decoder_serves_the_same_batches_and_stops_with_the_loader(tmp_path, suffix):
    from streamtrain import make_data, open_dataset

    path = tmp_path / f"p{suffix}"
    make_data(path, rows=6000, features=5, chunk_rows=500, compression="gzip" if suffix == ".h5" else "default")
    everything = open_dataset(path).read(np.arange(6000))
    ds = open_dataset(path, cache_bytes=1 << 20)
    sampler = Sampler(ds.bounds, 64, "window", seed=3, window_rows=1200)
    with Loader(ds, sampler, decoder="process") as loader:
        for epoch in range(2):  # one worker serves every epoch
            got = list(loader.iter_epoch())
            rows = np.concatenate([r for r, _, _ in got])
            assert sorted(rows.tolist()) == list(range(6000))
            for r, X, y in got:
                np.testing.assert_array_equal(X, everything[0][r])
                np.testing.assert_array_equal(y, everything[1][r])
            assert loader._process is not None and len(_decoder_children()) == len(loader._process.workers) == 2
            sampler.next_epoch()
        assert ds.stats["chunks_read"] == 2 * ds.n_chunks  # each chunk decoded once per epoch
        thread_rows = [r for r, _, _ in Loader(ds, Sampler(ds.bounds, 64, "window", seed=3, window_rows=1200),
                                              decoder="thread").iter_epoch()]
        sampler.epoch = 0
        process_rows = [r for r, _, _ in loader.iter_epoch()]
        assert all(np.array_equal(a, b) for a, b in zip(thread_rows, process_rows))
    assert not _decoder_children() and not _running()


def test_process_decoder_early_stop_errors_and_skipped_rows(tmp_path):
    import h5py

    from streamtrain import open_dataset
    from streamtrain.errors import DataError

    X = np.random.default_rng(0).standard_normal((3000, 4)).astype(np.float32)
    X[2222, 1] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(300, 4))
        f.create_dataset("y", data=np.arange(3000))
    ds = open_dataset(tmp_path / "nan.h5")
    with Loader(ds, Sampler(ds.bounds, 32, "window", window_rows=600), decoder="process") as loader:
        with pytest.raises(DataError, match=r"nan\.h5: NaN or Inf in row 2222"):
            list(loader.iter_epoch())
    assert not _running()

    ds = open_dataset(tmp_path / "nan.h5", nonfinite="skip")
    for decoder in ("thread", "process"):  # several windows in one group of batches
        loader = Loader(ds, Sampler(ds.bounds, 32, "window", window_rows=600), decoder=decoder)
        got = list(loader.iter_epoch())
        ys = np.concatenate([y for _, _, y in got])
        assert len(ys) == 2999 and 2222 not in ys and not np.isnan(np.concatenate([x for _, x, _ in got])).any()
    it = loader.iter_epoch()  # a new epoch, abandoned after one batch
    next(it)
    it.close()
    loader.close()
    assert not _decoder_children() and not _running()


@pytest.mark.parametrize("workers", [1, 3])
def test_windows_split_between_decoding_workers_give_the_same_batches(tmp_path, workers):
    """Each window's chunks are split between the workers (uneven runs, some windows of one chunk,
    NaN rows skipped in several): the batches are those the decoding thread gives."""
    import h5py

    from streamtrain import open_dataset
    from streamtrain.data.decoder import DecoderProcess
    from streamtrain.data.sources import slot_rows

    rng = np.random.default_rng(4)
    X = rng.standard_normal((3000, 3)).astype(np.float32)
    X[[5, 777, 1500, 2999]] = np.nan
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(170, 3), compression="gzip")
        f.create_dataset("y", data=np.arange(3000) % 3, chunks=(170,), compression="gzip")

    def batches(decoder, process=None):
        ds = open_dataset(tmp_path / "n.h5", nonfinite="skip")
        sampler = Sampler(ds.bounds, 50, "window", seed=2, window_rows=700)
        if process:
            process = DecoderProcess(ds, slot_rows(ds, sampler.window_rows), workers=workers)
            assert len(process.workers) == workers
        with Loader(ds, sampler, decoder=decoder, process=process) as loader:
            return list(loader.iter_epoch())

    want, got = batches("thread"), batches("process", True)
    _assert_same_batches(got, want)
    assert sum(len(X) for _, X, _ in got) == 2996
    assert not _decoder_children()


def test_decoding_workers_run_below_the_trainers_priority(tmp_path):
    from streamtrain import make_data, open_dataset
    from streamtrain.data.decoder import NICENESS
    from streamtrain.data.loader import start_decoder

    make_data(tmp_path / "g.h5", rows=1000, features=3, chunk_rows=100, compression="gzip")
    with open_dataset(tmp_path / "g.h5") as ds:
        process = start_decoder(ds, Sampler(ds.bounds, 10, "window", window_rows=300), decoder="process")
        process.wait_ready()
        stats = [open(f"/proc/{w.proc.pid}/stat").read() for w in process.workers]
        process.close()
    assert [int(line.rsplit(")", 1)[1].split()[16]) for line in stats] == [min(19, os.nice(0) + NICENESS)] * 2


def test_process_decoder_is_used_only_where_it_can_be(tmp_path):
    from streamtrain import make_data, open_dataset
    from streamtrain.data.sources import wants_process

    make_data(tmp_path / "s.h5", rows=1000, features=4, chunk_rows=100, compression="gzip")
    ds = open_dataset(tmp_path / "s.h5")
    assert ds.reopen["source"] == str(tmp_path / "s.h5")
    assert wants_process(ds, Sampler(ds.bounds, 10, "window", world_size=1), "process")
    make_data(tmp_path / "u.h5", rows=1000, features=4, chunk_rows=100)
    plain = open_dataset(tmp_path / "u.h5")  # uncompressed: gathered in place from the page cache
    assert plain.capabilities.in_place and not wants_process(plain, Sampler(plain.bounds, 10, "window", world_size=1), "process")
    assert not wants_process(ds, Sampler(ds.bounds, 10, "window", world_size=1), "auto")  # small data: start-up would cost more than it saves
    assert not wants_process(ds, Sampler(ds.bounds, 10, "global", world_size=1), "process") and not wants_process(ds, Sampler(ds.bounds, 10, "window", world_size=2), "process")
    mem = ArrayDataset(np.zeros((10, 2)), np.zeros(10))
    assert mem.reopen is None and not wants_process(mem, Sampler(mem.bounds, 10, "window", world_size=1), "process")
    with pytest.raises(ValueError, match="unknown decoder"):
        Loader(ds, Sampler(ds.bounds, 10, "window"), decoder="fork")


def test_hold_out_split_is_decoded_by_workers_like_by_the_thread(tmp_path):
    """--val-fraction training data (a hash split of the file) reopens in the decoding workers."""
    from streamtrain import make_data, open_dataset
    from streamtrain.data.sources import wants_process
    from streamtrain.readers.subset import HoldoutSplit

    make_data(tmp_path / "v.zarr", rows=5000, features=4, chunk_rows=400)
    train = HoldoutSplit(HoldoutSplit(open_dataset(tmp_path / "v.zarr"), 0.3, seed=2), 0.1, seed=5)
    assert train.reopen["splits"] == [{"fraction": 0.3, "seed": 2, "part": "train"},
                                      {"fraction": 0.1, "seed": 5, "part": "train"}]
    assert wants_process(train, Sampler(train.bounds, 10, "window", world_size=1), "process")

    def batches(decoder):
        with Loader(train, Sampler(train.bounds, 32, "window", seed=1, window_rows=900), decoder=decoder) as loader:
            return list(loader.iter_epoch())

    got, want = batches("process"), batches("thread")
    _assert_same_batches(got, want)
    assert sum(len(r) for r, _, _ in got) == train.n_rows
    assert not _decoder_children()


def test_process_decoder_reports_a_file_it_cannot_reopen(tmp_path):
    from streamtrain import make_data, open_dataset
    from streamtrain.errors import DataError

    make_data(tmp_path / "gone.h5", rows=600, features=3, chunk_rows=100, compression="gzip")
    ds = open_dataset(tmp_path / "gone.h5")
    (tmp_path / "gone.h5").rename(tmp_path / "moved.h5")  # the parent opened it; the worker cannot
    with Loader(ds, Sampler(ds.bounds, 10, "window", window_rows=200), decoder="process") as loader:
        with pytest.raises(DataError, match=r"gone\.h5: no such file"):
            list(loader.iter_epoch())
    assert not _decoder_children()


def test_global_shuffle_order_is_pinned_across_versions():
    """Checkpoints resume by recomputing the order: the permutation must never change between releases."""
    from streamtrain.data.sampling import FeistelPermutation

    perm = FeistelPermutation(1_000_000, [0, 0, 1])
    assert perm(np.arange(5)).tolist() == [625457, 872054, 372041, 553759, 328593]
    assert epoch_order("global", np.array([0, 7, 10]), seed=3, epoch=2, window_rows=4).tolist() == \
        FeistelPermutation(10, [3, 2, 1])(np.arange(10)).tolist()


def test_holdout_split_of_any_seed_is_pinned_and_warns_nothing():
    """The seed's hash term once overflowed as a numpy scalar (a RuntimeWarning for every seed but 0);
    the split itself must stay what it was, so that resumed runs see the same rows."""
    import warnings

    from streamtrain.readers.subset import holdout_mask

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert holdout_mask(np.arange(8), 0.3, 2).astype(int).tolist() == [1, 0, 0, 0, 0, 1, 1, 0]
        assert holdout_mask(np.arange(8), 0.3, 0).astype(int).tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
        assert int(holdout_mask(np.arange(100_000), 0.3, 12345).sum()) == 29863


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), world=st.integers(1, 5), batch=st.integers(1, 40), mode=st.sampled_from(MODES),
       drop_last=st.booleans())
def test_shared_batches_are_the_one_process_batches_split_by_rank(n, world, batch, mode, drop_last):
    bounds = uniform_bounds(n, 37)
    alone = list(Sampler(bounds, batch, mode, seed=4, window_rows=90, drop_last=drop_last).iter_epoch())
    ranks = [list(Sampler(bounds, batch, mode, seed=4, window_rows=90, drop_last=drop_last, rank=r, world_size=world,
                          shard="batches").iter_epoch()) for r in range(world)]
    assert all(len(r) == len(alone) for r in ranks)  # every process takes part in every step
    for i, whole in enumerate(alone):
        np.testing.assert_array_equal(np.sort(np.concatenate([r[i] for r in ranks])), whole)


def test_shared_batches_resume_at_another_world_size():
    bounds = uniform_bounds(1000, 64)
    two = Sampler(bounds, 30, "window", seed=1, window_rows=200, rank=1, world_size=2, shard="batches")
    it = two.iter_epoch()
    for _ in range(7):
        next(it)
        two.advance_batch(15)  # the rows this rank got; the position counts the global batch
    assert two.position == 210
    alone = Sampler(bounds, 30, "window", seed=1, window_rows=200)
    three = Sampler(bounds, 30, "window", seed=1, window_rows=200, rank=2, world_size=3, shard="batches")
    alone.load_state_dict(two.state_dict())
    three.load_state_dict(two.state_dict())
    np.testing.assert_array_equal(next(three.iter_epoch()), next(alone.iter_epoch())[2::3])


def test_statistics_of_parts_merge_to_those_of_the_whole(tmp_path):
    from streamtrain import open_dataset
    from streamtrain.data.scaling import DataStats, scan
    from streamtrain.synthetic import make_data

    make_data(tmp_path / "m.h5", rows=1000, features=5, chunk_rows=70, seed=2)
    with open_dataset(tmp_path / "m.h5") as ds:
        whole = scan(ds)
        for world in (2, 3, 16):  # 16: some processes get no chunk at all
            merged = DataStats.from_json(scan(ds, part=(0, world)).to_json())
            for r in range(1, world):
                merged.merge(DataStats.from_json(scan(ds, part=(r, world)).to_json()))
            assert merged.n == whole.n
            np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
            np.testing.assert_allclose(merged.var, whole.var, rtol=1e-10)
            assert merged.to_json()["classes"] == whole.to_json()["classes"]


def test_processes_on_one_machine_share_its_cores(monkeypatch):
    from streamtrain import _cores
    from streamtrain.data import decoder

    monkeypatch.setattr(_cores, "quota_cpus", lambda: None)
    monkeypatch.setattr(_cores, "affinity_cores", lambda: 16)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [decoder.cores_of_one(k) for k in (1, 2, 4, 32)] == [16, 8, 4, 1]
    monkeypatch.setattr(_cores, "affinity_cores", lambda: 2)  # a launcher bound this process to 2 cores
    assert decoder.cores_of_one(8) == 2
    # a container's CPU limit is shared by its processes (not a binding of each)
    monkeypatch.setattr(_cores, "affinity_cores", lambda: 16)
    monkeypatch.setattr(_cores, "quota_cpus", lambda: 8.0)
    assert [decoder.cores_of_one(k) for k in (1, 2, 4, 32)] == [8, 4, 2, 1]


def test_a_cgroup_s_cpu_limit_caps_the_cores_a_process_keeps_busy(tmp_path, monkeypatch):
    # A container limited to 1.5 CPUs on a machine of more: its affinity lists them all, its
    # cgroup allows one whole core's time. (The cgroup files are written here as the kernel writes
    # them: a limit cannot be set on this machine's cgroups from a test.)
    import itertools

    from streamtrain import _cores

    cases = itertools.count()

    def cgroups(text: str, files: dict) -> float | None:
        where = tmp_path / str(next(cases))
        (where / "fs").mkdir(parents=True)
        (where / "self").write_text(text)
        for name, value in files.items():
            (where / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
            (where / "fs" / name).write_text(value)
        return _cores.quota_cpus(str(where / "self"), str(where / "fs"))

    # v2: the limit of the process's own cgroup or of one above it, the least
    assert cgroups("0::/box/job\n", {"box/job/cpu.max": "max 100000\n", "box/cpu.max": "150000 100000\n"}) == 1.5
    assert cgroups("0::/box/job\n", {"box/job/cpu.max": "50000 100000\n"}) == 0.5
    assert cgroups("0::/box/job\n", {"box/job/cpu.max": "max 100000\n"}) is None
    assert cgroups("0::/../other\n", {"other/cpu.max": "50000 100000\n"}) is None  # (outside this view)
    # v1, cpu and cpuacct mounted together, a container's cgroup namespace showing its own as /
    v1 = {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert cgroups("9:memory:/\n4:cpu,cpuacct:/\n", v1) == 2.0
    assert cgroups("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                                          "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}) is None
    # a hybrid system (as this one): cpu alone, cpuacct apart, and a unified line with no cpu.max
    hybrid = "12:cpuacct:/\n11:cpu:/job\n0::/job\n"
    assert cgroups(hybrid, {"cpu/job/cpu.cfs_quota_us": "100000\n", "cpu/job/cpu.cfs_period_us": "100000\n",
                            "unified/job/cpu.max": "max 100000\n"}) == 1.0
    assert _cores.quota_cpus(str(tmp_path / "none")) is None  # (no /proc/self/cgroup: not Linux)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(_cores, "quota_cpus", lambda: 1.5)
    assert _cores.usable_cores() == 1  # (so the step is given one lane, and the loader one worker)
    monkeypatch.setattr(_cores, "quota_cpus", lambda: None)
    assert _cores.usable_cores() == 16


def test_the_world_is_read_from_the_launchers_environment():
    from streamtrain.train.distributed import detect_world

    assert detect_world({}) is None
    assert detect_world({"PMI_RANK": "3", "PMI_SIZE": "4"}) == (3, 4)  # MPICH's hydra, Intel MPI
    assert detect_world({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}) == (1, 2)
    assert detect_world({"SLURM_PROCID": "5", "SLURM_NTASKS": "64"}) == (5, 64)
