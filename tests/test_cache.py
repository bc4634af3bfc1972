"""The decoded local copy (``cache_dir``): written once, read in place, bitwise the batches of
decoding, never stale, bounded, and refused with a message where it cannot help."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from streamtrain import TrainConfig, Trainer
from streamtrain.readers import open_dataset
from streamtrain.readers.decoded import DecodedCopy, decoded_copy
from streamtrain.synthetic import make_data

from .test_trainer import RecordRows, StopAt


def _frame(rows: int = 3000, seed: int = 0, nan_rows=()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 5))
    X[list(nan_rows), 2] = np.nan
    df = pd.DataFrame(X, columns=[f"c{i}" for i in range(5)])
    df["y"] = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return df


@pytest.fixture(params=["gzip.h5", "zstd.zarr", "pandas.parquet"])
def compressed(request, tmp_path):
    kind = request.param
    if kind == "pandas.parquet":
        path = tmp_path / kind
        _frame().to_parquet(path, row_group_size=400)
    else:
        path = tmp_path / kind
        make_data(path, rows=3000, features=5, chunk_rows=400, seed=1,
                  compression="gzip" if kind.endswith(".h5") else "zstd")
    return path


def _fit(path, tmp_path, name, *, stop=None, resume=False, log=None, **cfg):
    t, rows = Trainer(TrainConfig(hidden=6, epochs=3, batch_size=32, optimizer="adam", lr=0.01, window_mb=0.05,
                                  **cfg)), RecordRows()
    hooks = [rows] + ([StopAt(stop)] if stop else [])
    t.fit(path, checkpoint_dir=tmp_path / name, callbacks=hooks, resume=resume, log=log)
    return t, rows.rows


def test_the_copy_gives_the_batches_of_decoding_bitwise(compressed, tmp_path):
    ref, ref_rows = _fit(compressed, tmp_path, "ref")
    said = []
    cached, cached_rows = _fit(compressed, tmp_path, "cached", cache_dir=str(tmp_path / "cache"), log=said.append)
    assert any("decoding" in s and "once into" in s for s in said)
    for k in ref.net.params:
        np.testing.assert_array_equal(cached.net.params[k], ref.net.params[k])
    assert all(np.array_equal(a, b) for a, b in zip(cached_rows, ref_rows)) and len(cached_rows) == len(ref_rows)
    assert [h["train_loss"] for h in cached.history] == [h["train_loss"] for h in ref.history]
    # a later run reads the copy (no second copy), with the same result
    said.clear()
    again, _ = _fit(compressed, tmp_path, "again", cache_dir=str(tmp_path / "cache"), log=said.append)
    assert any("from its decoded copy" in s for s in said) and len(list((tmp_path / "cache").iterdir())) == 1
    for k in ref.net.params:
        np.testing.assert_array_equal(again.net.params[k], ref.net.params[k])
    # rows gathered in any order, bitwise those of the source
    source = open_dataset(compressed)
    copy = decoded_copy(open_dataset(compressed), tmp_path / "cache", 1.0)
    assert isinstance(copy, DecodedCopy) and copy.capabilities.in_place and not copy.capabilities.decodes_chunks
    rows = np.random.default_rng(0).permutation(3000)[:700]
    for a, b in zip(source.gather(rows), copy.gather(rows)):
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
    assert copy.fingerprint() == source.fingerprint()
    source.close()
    copy.close()


def test_a_resumed_run_on_the_copy_is_the_uninterrupted_run(tmp_path):
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path, row_group_size=300)
    ref, _ = _fit(path, tmp_path, "ref", val_fraction=0.2)
    _fit(path, tmp_path, "run", stop=100, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    done, _ = _fit(path, tmp_path, "run", resume=True, cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    for k in ref.net.params:
        np.testing.assert_array_equal(done.net.params[k], ref.net.params[k])
    assert [h["val_loss"] for h in done.history] == [h["val_loss"] for h in ref.history]


def test_a_changed_source_is_never_served_from_a_stale_copy(tmp_path):
    path = tmp_path / "d.parquet"
    _frame(seed=0).to_parquet(path, row_group_size=500)
    _fit(path, tmp_path, "first", cache_dir=str(tmp_path / "cache"))
    _frame(seed=1).to_parquet(path, row_group_size=500)  # rewritten in place, same shape
    ref, _ = _fit(path, tmp_path, "ref")
    said = []
    cached, _ = _fit(path, tmp_path, "second", cache_dir=str(tmp_path / "cache"), log=said.append)
    assert any("once into" in s for s in said) and len(list((tmp_path / "cache").iterdir())) == 2
    for k in ref.net.params:
        np.testing.assert_array_equal(cached.net.params[k], ref.net.params[k])


def test_a_damaged_copy_is_rebuilt(tmp_path):
    path = tmp_path / "d.zarr"
    make_data(path, rows=2000, features=4, chunk_rows=250, compression="zstd")
    decoded_copy(open_dataset(path), tmp_path / "cache", 1.0).close()
    (copy,) = (tmp_path / "cache").iterdir()
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    said = []
    again = decoded_copy(open_dataset(path), tmp_path / "cache", 1.0, said.append)
    assert isinstance(again, DecodedCopy) and "once into" in said[0]
    src = open_dataset(path)
    rows = np.arange(2000)
    assert np.array_equal(again.gather(rows)[0], src.gather(rows)[0])
    again.close()
    src.close()


def test_over_the_bound_it_decodes_and_says_so(tmp_path):
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path)
    said = []
    ds = decoded_copy(open_dataset(path), tmp_path / "cache", 0.00001, said.append)
    assert not isinstance(ds, DecodedCopy) and "over --cache-max-gb 1e-05" in said[0]
    assert not list((tmp_path / "cache").iterdir())
    # uncompressed HDF5 is read in place already: no copy
    make_data(tmp_path / "plain.h5", rows=500, features=3)
    plain = open_dataset(tmp_path / "plain.h5")
    assert decoded_copy(plain, tmp_path / "cache", 1.0) is plain


def test_too_little_free_disk_decodes_and_says_so(tmp_path, monkeypatch):
    # A disk this full cannot be made here without mounting a small file system, so the free
    # space the copy sees is patched (the one mock in this file).
    import shutil

    from streamtrain.readers import decoded

    path = tmp_path / "d.parquet"
    _frame().to_parquet(path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(decoded.shutil, "disk_usage", lambda _: usage._replace(free=2**29))
    said = []
    ds = decoded_copy(open_dataset(path), tmp_path / "cache", 1.0, said.append)
    assert not isinstance(ds, DecodedCopy)
    assert "0.50 GB free; decoding it every epoch" in said[0] and str(tmp_path / "cache") in said[0]
    assert not list((tmp_path / "cache").iterdir())


def test_rows_with_nan_are_skipped_alike(tmp_path):
    import h5py

    path = tmp_path / "d.h5"
    df = _frame(nan_rows=(5, 700, 2999))
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=df.iloc[:, :5].to_numpy(np.float32), chunks=(400, 5), compression="gzip")
        f.create_dataset("y", data=df["y"].to_numpy(), chunks=(400,), compression="gzip")
    ref, _ = _fit(path, tmp_path, "ref", skip_nonfinite=True)
    cached, _ = _fit(path, tmp_path, "cached", skip_nonfinite=True, cache_dir=str(tmp_path / "cache"))
    for k in ref.net.params:
        np.testing.assert_array_equal(cached.net.params[k], ref.net.params[k])
    # under "error", making the copy stops at the first NaN, naming the source's row
    with pytest.raises(Exception, match=r"d\.h5.*row 5"):
        _fit(path, tmp_path, "strict", cache_dir=str(tmp_path / "cache2"))
    assert not os.listdir(tmp_path / "cache2")  # the partial copy is removed


def test_the_cli_takes_cache_dir(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    make_data(tmp_path / "d.h5", rows=2000, features=4, chunk_rows=250, compression="gzip")
    bin_ = Path(sys.executable).with_name("streamtrain")
    out = subprocess.run([str(bin_), "train", str(tmp_path / "d.h5"), "--epochs", "1", "--checkpoint-dir",
                          str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "once into" in out.stderr
    out = subprocess.run([str(bin_), "train", str(tmp_path / "d.h5"), "--epochs", "2", "--checkpoint-dir",
                          str(tmp_path / "run"), "--resume", "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "from its decoded copy" in out.stderr


class _Machine:
    """A process's view of a job (rank, its index on its machine) that records the cache
    directory's files when it waits at the barrier."""

    def __init__(self, rank, local_rank, cache):
        self.rank, self.local_rank, self.size, self.cache, self.at_barrier = rank, local_rank, 4, cache, None

    def barrier(self):
        self.at_barrier = sorted(p.name for p in self.cache.iterdir()) if self.cache.exists() else []


@pytest.mark.parametrize("rank,local_rank", [(0, 0), (2, 0), (1, 1), (3, 1)])
def test_each_machine_s_first_process_decodes_its_copy_and_the_others_wait(tmp_path, rank, local_rank):
    # (machines without a shared disk: the first process of each, not rank 0 alone, decodes the
    # copy on its own disk before the barrier; the others open it after, never decoding it again)
    from streamtrain.train.setup import _decoded

    path = tmp_path / "d.h5"
    make_data(path, rows=2000, features=4, chunk_rows=250, compression="gzip")
    disk = tmp_path / f"disk-{rank}" / "cache"
    if local_rank:  # its machine's first process has made the copy by the time it waits
        decoded_copy(open_dataset(path), disk, 1.0).close()
    comm, said = _Machine(rank, local_rank, disk), []
    cfg = TrainConfig(cache_dir=str(disk))
    ds = _decoded(cfg, comm, open_dataset(path), said.append)
    assert isinstance(ds, DecodedCopy) and len(comm.at_barrier) == 1  # one copy, there before the wait
    assert ("once into" in " ".join(said)) == (rank == 0)  # made by this one; rank 0 alone says so
    ds.close()
