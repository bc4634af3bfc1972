"""Remote Zarr and Parquet over s3://, against a moto S3 server this test starts on 127.0.0.1."""

from __future__ import annotations

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
