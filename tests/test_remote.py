"""Remote Zarr and Parquet over s3://, against a moto S3 server this test starts on 127.0.0.1."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from streamtrain import TrainConfig, Trainer, open_dataset

from .conftest import DATA

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import os

    import s3fs

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                             "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1")
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("bucket")
    fs.put(str(DATA / "digits.parquet"), "bucket/digits.parquet")
    fs.put(str(DATA / "digits.zarr"), "bucket/digits.zarr", recursive=True)
    fs.put(str(DATA / "breast_cancer.parquet"), "bucket/dir/part-0.parquet")
    yield options
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.mark.parametrize("name", ["digits.parquet", "digits.zarr"])
def test_remote_matches_local(s3, name):
    local = open_dataset(DATA / name)
    remote = open_dataset(f"s3://bucket/{name}", storage_options=s3)
    assert remote.n_rows == local.n_rows and remote.n_chunks == local.n_chunks
    rows = np.sort(np.random.default_rng(0).choice(local.n_rows, 50, replace=False))
    for a, b in zip(remote.read(rows), local.read(rows)):
        np.testing.assert_array_equal(a, b)


def test_remote_directory_dataset_and_training_with_environment_credentials(s3):
    ds = open_dataset("s3://bucket/dir/")  # endpoint and keys from AWS_* variables
    assert ds.n_rows == 569 and ds.label_name == "target"
    history = Trainer(TrainConfig(hidden=4, epochs=2)).fit("s3://bucket/digits.zarr", log=None)
    assert len(history) == 2


def test_missing_remote_object_is_a_clean_error(s3):
    from streamtrain import DataError

    with pytest.raises(DataError, match="s3://bucket/nope.parquet"):
        open_dataset("s3://bucket/nope.parquet", storage_options=s3)


# -- checkpoints in object storage (--checkpoint-dir s3://...) ------------------------------------

def _cli(*args, env=None):
    """``streamtrain ARGS`` in a process of its own (the AWS_* variables of the fixture inherited)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([str(Path(sys.executable).with_name("streamtrain")), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _objects(prefix: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(prefix, detail=False))


_RUN = ["--hidden", "6", "--dtype", "float64", "--batch-size", "32", "--optimizer", "adam", "--seed", "3", "--quiet"]


def _newest(where):
    from streamtrain.io.resolve import resolve_checkpoint
    from streamtrain.train.schema import TRAINER

    _, arrays, meta = resolve_checkpoint(str(where), TRAINER)
    return arrays, meta


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_run_in_object_storage_resumes_bitwise_and_keeps_its_newest_checkpoints(s3, tmp_path):
    data = DATA / "breast_cancer.h5"
    for epochs, more in (("2", []), ("4", ["--resume"])):  # the reference: the same steps, in a local directory
        alone = _cli("train", data, *_RUN, "--epochs", epochs, "--checkpoint-dir", tmp_path / "one", *more)
        assert alone.returncode == 0, alone.stderr
    first = _cli("train", data, *_RUN, "--epochs", "2", "--keep", "2", "--checkpoint-dir", "s3://bucket/runs/a")
    assert first.returncode == 0, first.stderr
    assert _objects("bucket/runs/a") == ["ckpt-000000000018.npz", "ckpt-000000000036.npz",
                                         "manifest-000000000018.json", "manifest-000000000036.json", "metrics.jsonl"]
    more = _cli("train", data, *_RUN[:-1], "--epochs", "4", "--keep", "2", "--checkpoint-dir", "s3://bucket/runs/a",
                "--resume")
    assert more.returncode == 0, more.stderr
    assert "resuming from s3://bucket/runs/a/ckpt-000000000036.npz (epoch 3, row 0" in more.stderr
    got, meta = _newest("s3://bucket/runs/a")
    ref, ref_meta = _newest(tmp_path / "one")
    assert meta["state"]["global_step"] == ref_meta["state"]["global_step"] == 72
    _assert_same(got, ref)
    assert _objects("bucket/runs/a") == ["ckpt-000000000054.npz", "ckpt-000000000072.npz",
                                         "manifest-000000000054.json", "manifest-000000000072.json", "metrics.jsonl"]
    from streamtrain.io.rundir import read_history

    assert [r["epoch"] for r in read_history("s3://bucket/runs/a")] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in read_history("s3://bucket/runs/a")] == \
        [r["train_loss"] for r in read_history(tmp_path / "one")]
    # evaluate, predict and report read it where it is
    here = _cli("evaluate", tmp_path / "one", data, "--json")
    there = _cli("evaluate", "s3://bucket/runs/a", data, "--json")
    assert here.returncode == there.returncode == 0, there.stderr
    assert json.loads(here.stdout) == json.loads(there.stdout)
    out = _cli("predict", "s3://bucket/runs/a/ckpt-000000000072.npz", data, "--out", tmp_path / "p.csv")
    assert out.returncode == 0 and (tmp_path / "p.csv").read_text().count("\n") == 570, out.stderr
    page = _cli("report", "s3://bucket/runs/a", "--out", tmp_path / "r.html")
    assert page.returncode == 0 and "run a" in (tmp_path / "r.html").read_text(), page.stderr


def test_a_kill_during_an_upload_leaves_the_previous_checkpoint_the_newest(s3, tmp_path):
    data = DATA / "breast_cancer.h5"
    alone = _cli("train", data, *_RUN, "--epochs", "3", "--checkpoint-dir", tmp_path / "one")
    assert alone.returncode == 0, alone.stderr
    url = "s3://bucket/runs/killed"
    # killed (as by kill -9) once the second checkpoint's object is uploaded, before its manifest
    killed = _cli("train", data, *_RUN, "--epochs", "3", "--checkpoint-dir", url,
                  env={"STREAMTRAIN_CRASH_AT": "after_upload:2"})
    assert killed.returncode == 137
    assert _objects("bucket/runs/killed") == ["ckpt-000000000018.npz", "ckpt-000000000036.npz",
                                              "manifest-000000000018.json", "metrics.jsonl"]
    assert _newest(url)[1]["state"]["global_step"] == 18  # the object without a manifest does not count
    again = _cli("train", data, *_RUN[:-1], "--epochs", "3", "--checkpoint-dir", url, "--resume")
    assert again.returncode == 0, again.stderr
    assert "resuming from s3://bucket/runs/killed/ckpt-000000000018.npz" in again.stderr
    _assert_same(_newest(url)[0], _newest(tmp_path / "one")[0])
    assert "manifest-000000000054.json" in _objects("bucket/runs/killed")


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumed(s3, tmp_path):
    import s3fs

    data = DATA / "breast_cancer.h5"
    url = "s3://bucket/runs/damaged"
    best = ["--val-fraction", "0.2", "--keep-best"]
    assert _cli("train", data, *_RUN, *best, "--epochs", "3", "--keep", "3", "--checkpoint-dir", url).returncode == 0
    fs = s3fs.S3FileSystem()
    for step in (30, 45):  # the two newest: the same size, so the manifests' checks pass, the checksums do not
        key = f"bucket/runs/damaged/ckpt-{step:012d}.npz"
        body = bytearray(fs.cat_file(key))
        body[len(body) // 2] ^= 0xFF
        fs.pipe_file(key, bytes(body))
    r = _cli("train", data, *_RUN[:-1], *best, "--epochs", "4", "--checkpoint-dir", url, "--resume")
    assert r.returncode == 0, r.stderr
    assert "warning: s3://bucket/runs/damaged/ckpt-000000000045.npz: not a valid streamtrain checkpoint" in r.stderr
    assert "its manifest moved aside to manifest-000000000030.json.invalid" in r.stderr
    assert "resuming from s3://bucket/runs/damaged/ckpt-000000000015.npz" in r.stderr
    names = _objects("bucket/runs/damaged")
    assert {"manifest-000000000045.json.invalid", "best.npz", "manifest-000000000060.json"} <= set(names), names
    assert [r["epoch"] for r in json_lines(url)] == [1, 2, 3, 4]


def test_the_store_failing_on_resume_sets_nothing_aside(s3, tmp_path, monkeypatch):
    # A timeout, or no room for the download, is not the checkpoint's fault: nothing is renamed
    # (a renamed manifest's checkpoint would be deleted by the next rotation)
    import errno

    from streamtrain import CheckpointError
    from streamtrain.io.remote_run import RemoteRunDirectory
    from streamtrain.train.schema import TRAINER

    url = "s3://bucket/runs/flaky"
    assert _cli("train", DATA / "breast_cancer.h5", *_RUN, "--epochs", "2", "--checkpoint-dir", url).returncode == 0
    before = _objects("bucket/runs/flaky")
    run = RemoteRunDirectory(url)
    with run:
        def no_room(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(run.store.fs, "get_file", no_room)
        with pytest.raises(CheckpointError, match=r"ckpt-000000000036.npz: cannot download \(OSError: .*No space"):
            run.resume_point(TRAINER)
        assert not list(run.path.glob("*.npz*"))  # nothing half-downloaded left in the staging directory
    assert _objects("bucket/runs/flaky") == before
    assert not run.path.exists()


def test_checkpoints_of_a_large_state_written_by_a_forked_writer_are_uploaded_whole(s3, tmp_path):
    # STREAMTRAIN_FORK_SNAPSHOT_MB=0: every checkpoint written by a forked child from the live arrays,
    # then uploaded by the trainer's process; each equals the checkpoint of a run in a directory
    data = DATA / "breast_cancer.h5"
    args = [*_RUN, "--hidden", "64", "--batch-size", "16", "--epochs", "3", "--keep", "10"]
    env = {"STREAMTRAIN_FORK_SNAPSHOT_MB": "0"}
    assert _cli("train", data, *args, "--checkpoint-dir", tmp_path / "one", env=env).returncode == 0
    r = _cli("train", data, *args, "--checkpoint-dir", "s3://bucket/runs/forked", env=env)
    assert r.returncode == 0, r.stderr
    from streamtrain.io.checkpoint import load_checkpoint
    from streamtrain.io.resolve import list_checkpoints

    local = list_checkpoints(tmp_path / "one")
    assert len(local) == 3
    for path in local:
        ref, _ = load_checkpoint(path)
        got, _ = _newest(f"s3://bucket/runs/forked/{path.name}")
        _assert_same(got, ref)


def test_object_storage_refusals_are_one_line_and_lose_nothing(s3, tmp_path):
    data = DATA / "breast_cancer.h5"
    url = "s3://bucket/runs/taken"
    assert _cli("train", data, *_RUN, "--epochs", "1", "--checkpoint-dir", url).returncode == 0
    before = _objects("bucket/runs/taken")
    again = _cli("train", data, *_RUN, "--epochs", "1", "--checkpoint-dir", url)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert f"{url}: holds another run's checkpoints; pass --resume" in again.stderr
    assert _objects("bucket/runs/taken") == before
    replaced = _cli("train", data, *_RUN, "--epochs", "2", "--checkpoint-dir", url, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert [r["epoch"] for r in json_lines(url)] == [1, 2]
    # no such bucket: said before any training, with what to check
    nowhere = _cli("train", data, *_RUN, "--checkpoint-dir", "s3://no-such-bucket/run")
    assert nowhere.returncode == 2 and nowhere.stderr.count("\n") == 1, nowhere.stderr
    assert "s3://no-such-bucket/run: cannot write checkpoints there" in nowhere.stderr
    assert "check that the bucket exists" in nowhere.stderr
    # a URL that names no bucket, or a store that keeps nothing; the data inside the run's prefix
    for where, words in (("s3://", "give a bucket and a prefix for the run"),
                         ("memory://run/a", "memory:// keeps nothing once this process ends")):
        r = _cli("train", data, *_RUN, "--checkpoint-dir", where)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    inside = _cli("train", "s3://bucket/digits.parquet", *_RUN, "--checkpoint-dir", "s3://bucket/digits.parquet/run")
    assert inside.returncode == 2, inside.stderr
    assert "s3://bucket/digits.parquet/run: the checkpoint directory is inside the input s3://bucket/digits.parquet" \
        in inside.stderr
    # the service keeps its directory on a local disk
    svc = _cli("serve", "--source", "http", "--checkpoint-dir", "s3://bucket/svc", "--features", "a,b")
    assert svc.returncode == 2 and "the service keeps its checkpoints in a local directory" in svc.stderr


def json_lines(url):
    from streamtrain.io.rundir import read_history

    return read_history(url)


def test_staging_directories_that_killed_runs_left_are_removed_and_live_ones_kept(s3, tmp_path):
    import fcntl
    import os
    import tempfile
    from pathlib import Path

    from streamtrain.io.remote_run import STAGING_MARK, STAGING_PREFIX

    stale = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    (stale / ".lock").touch()
    (stale / STAGING_MARK).write_text("12345\n")
    (stale / "ckpt-000000000018.npz").write_bytes(b"x" * 1000)
    # a directory of that name that is not staging (a local run's, unlocked, with no mark) is kept
    other = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    (other / ".lock").touch()
    (other / "best.npz").write_bytes(b"y" * 10)
    live = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    fd = os.open(live / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running trainer holds it
    try:
        r = _cli("train", DATA / "breast_cancer.h5", *_RUN, "--epochs", "1", "--checkpoint-dir", "s3://bucket/runs/st")
        assert r.returncode == 0, r.stderr
        assert not stale.exists() and live.exists() and (other / "best.npz").exists()
    finally:
        os.close(fd)
        import shutil

        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)


def test_inspect_describes_a_run_in_object_storage_and_data_there_as_data(s3, tmp_path):
    url = "s3://bucket/runs/inspected"
    assert _cli("train", DATA / "breast_cancer.h5", *_RUN, "--epochs", "2", "--checkpoint-dir", url).returncode == 0
    run = _cli("inspect", url, "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["checkpoint"] == f"{url}/ckpt-000000000036.npz" and [r["epoch"] for r in info["history"]] == [1, 2]
    here = _cli("train", DATA / "breast_cancer.h5", *_RUN, "--epochs", "2", "--checkpoint-dir", tmp_path / "one")
    assert here.returncode == 0
    assert info["params_sha256"] == json.loads(_cli("inspect", tmp_path / "one", "--json").stdout)["params_sha256"]
    data = _cli("inspect", "s3://bucket/digits.parquet", "--json")
    assert data.returncode == 0 and "checkpoint" not in json.loads(data.stdout), data.stderr


def test_a_checkpoint_saved_again_at_its_step_and_cut_short_before_its_manifest_is_resumed(s3, tmp_path):
    """With --keep 1 the newest checkpoint is the only one: saved again at the same step (its
    metadata changed, so its size), and killed before the new manifest, it must still count."""
    import s3fs

    from streamtrain.io.checkpoint import load_checkpoint, save_checkpoint
    from streamtrain.train.schema import TRAINER

    data = DATA / "breast_cancer.h5"
    url, key = "s3://bucket/runs/again", "bucket/runs/again/ckpt-000000000036.npz"
    assert _cli("train", data, *_RUN, "--epochs", "2", "--keep", "1", "--checkpoint-dir", url).returncode == 0
    fs = s3fs.S3FileSystem()
    fs.get_file(key, str(tmp_path / "c.npz"))
    arrays, meta = load_checkpoint(tmp_path / "c.npz", TRAINER)
    meta["config"]["epochs"] = 1000  # the same step, more metadata: another size
    save_checkpoint(tmp_path / "again.npz", arrays, meta)
    assert (tmp_path / "again.npz").stat().st_size != fs.size(key)
    fs.put_file(str(tmp_path / "again.npz"), key)  # the manifest still names the old size
    r = _cli("train", data, *_RUN[:-1], "--epochs", "3", "--keep", "1", "--checkpoint-dir", url, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming from s3://bucket/runs/again/ckpt-000000000036.npz" in r.stderr and ".invalid" not in r.stderr
    assert _objects("bucket/runs/again") == ["ckpt-000000000054.npz", "manifest-000000000054.json", "metrics.jsonl"]
