"""One rule for everything a command writes: an output never replaces an existing file without
--overwrite, and never (even with it) a file of a run or an input of the same command; a checkpoint
directory is never the data's place. Each refusal is one line, exit 2, and nothing changes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamtrain import DataError, Trainer

BIN = Path(sys.executable).with_name("streamtrain")


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def refused(res, *words):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    X = np.random.default_rng(0).standard_normal((300, 3)).astype(np.float32)
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": (X[:, 0] > 0).astype(int)}).to_parquet(
        d / "data.parquet")
    Trainer(hidden=3, epochs=2).fit(d / "data.parquet", checkpoint_dir=d / "run", log=None)
    return d


def test_plot_never_replaces_a_runs_files(run_dir):
    d = run_dir
    before = digest(d / "run")
    ckpt = sorted((d / "run").glob("ckpt-*.npz"))[-1]
    for target, why in ((ckpt, "is the input"), (d / "run" / "metrics.jsonl", "a file of the run"),
                        (d / "run" / "ckpt-000000000999.npz", "a file of the run")):
        for extra in ([], ["--overwrite"]):
            refused(run("plot", d / "run", "--out", target, *extra), str(target), why)
    assert digest(d / "run") == before
    assert run("evaluate", d / "run", d / "data.parquet").returncode == 0
    # a new file beside the run's is fine
    assert run("plot", d / "run", "--out", d / "run" / "curves.png").returncode == 0


def test_an_existing_output_needs_overwrite(run_dir, tmp_path):
    d = run_dir
    out = tmp_path / "curves.png"
    out.write_bytes(b"mine")
    refused(run("plot", d / "run", "--out", out), "already exists; remove it or pass --overwrite")
    assert out.read_bytes() == b"mine"
    assert run("plot", d / "run", "--out", out, "--overwrite").returncode == 0  # the advice works
    assert out.read_bytes()[:4] == b"\x89PNG"
    csv = tmp_path / "p.csv"
    csv.write_text("mine")
    refused(run("predict", d / "run", d / "data.parquet", "--out", csv), "already exists")
    assert csv.read_text() == "mine"
    pq = tmp_path / "d.parquet"
    pq.write_text("mine")
    refused(run("make-data", pq, "--rows", 10, "--features", 2), "already exists")
    assert pq.read_text() == "mine"
    assert run("predict", d / "run", d / "data.parquet", "--out", csv, "--overwrite").returncode == 0


def test_an_output_is_never_an_input_of_the_same_command(run_dir, tmp_path):
    d = run_dir
    copy = tmp_path / "data.parquet"
    copy.write_bytes((d / "data.parquet").read_bytes())
    before = digest(copy)
    refused(run("predict", d / "run", copy, "--out", copy, "--overwrite"), "is the input", "write it elsewhere")
    ckpt = sorted((d / "run").glob("ckpt-*.npz"))[-1]
    refused(run("predict", ckpt, copy, "--out", ckpt, "--overwrite"), str(ckpt))
    assert digest(copy) == before
    # the library refuses alike
    t = Trainer.load(d / "run")
    with pytest.raises(DataError, match="is the input"):
        t.write_predictions(copy, copy, overwrite=True)


@pytest.mark.parametrize("layout", ["file", "directory"])
def test_a_checkpoint_directory_apart_from_the_data(layout, run_dir, tmp_path):
    d = run_dir
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if layout == "file":
        data = data_dir / "d.parquet"
        (data).write_bytes((d / "data.parquet").read_bytes())
        cases = [(data_dir, "holds"), (tmp_path, "holds")]
    else:
        data = data_dir
        (data_dir / "part-0.parquet").write_bytes((d / "data.parquet").read_bytes())
        cases = [(data_dir, "is"), (data_dir / "runs", "is inside")]
    before = digest(data_dir)
    for ckpt_dir, how in cases:
        line = refused(run("train", data, "--epochs", 1, "--checkpoint-dir", ckpt_dir),
                       f"the checkpoint directory {how} the input", "apart from the data")
        assert "--checkpoint-dir" in line
    assert digest(data_dir) == before and not (data_dir / "runs").exists()
    # the advice works: another directory
    assert run("train", data, "--epochs", 1, "--checkpoint-dir", tmp_path.parent / f"{tmp_path.name}-run").returncode == 0
