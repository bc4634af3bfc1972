"""A read-only place (a model store mounted read-only, a directory without write permission):
what only reads works there, what must write says so in one line and exits 2, and nothing that
was there changes.

As root the place is a real read-only file system: a bind mount remounted read-only in a private
mount namespace (``unshare -m``), so only the command inside it sees it read-only. As another
user it is a directory without write permission."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamtrain import make_data

BIN = Path(sys.executable).with_name("streamtrain")
ROOT = os.geteuid() == 0


def _run(place: Path, *args, timeout=120) -> subprocess.CompletedProcess:
    """``streamtrain ARGS`` with ``place`` read-only to it."""
    cmd = [str(BIN), *map(str, args)]
    if ROOT:
        mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
        cmd = ["unshare", "-m", "sh", "-c", mount, str(place), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A read-only directory holding a finished run (``run``) and a gzip HDF5 file (``d.h5``)."""
    d = tmp_path_factory.mktemp("ro")
    if ROOT:
        # Root writes through permissions: only a read-only mount stops it, which needs unshare
        # (util-linux) and the right to mount in a namespace of one's own (a container may not grant it).
        probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" '
                                '&& ! touch "$0/probe" 2>/dev/null', str(d)], capture_output=True, text=True) \
            if shutil.which("unshare") else None
        if probe is None or probe.returncode != 0:
            why = "no unshare" if probe is None else probe.stderr.strip() or f"exit {probe.returncode}"
            pytest.skip(f"as root, a read-only place needs a read-only bind mount, not possible here ({why})")
    make_data(d / "d.h5", rows=3000, features=6, chunk_rows=500, seed=1, compression="gzip")
    r = subprocess.run([str(BIN), "train", str(d / "d.h5"), "--hidden", "4", "--epochs", "2", "--quiet",
                        "--checkpoint-dir", str(d / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (d / "cache").mkdir()
    before = {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    if not ROOT:
        for p in [d, *d.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
    probe = _run(d, "make-data", d / "probe.h5", "--rows", "10", "--features", "2")
    assert probe.returncode == 2, f"{d} is not read-only to the command: {probe.stderr}"
    yield d
    assert {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} == before  # nothing changed
    if not ROOT:
        for p in [d, *d.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


REASON = "Read-only file system" if ROOT else "Permission denied"


def _one_line(r, *parts, after: str = ""):
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(after), r.stderr
    error = r.stderr.split("\n", 1)[1] if after else r.stderr
    assert error.count("\n") == 1 and error.startswith("error: ") and "Traceback" not in error, r.stderr
    for part in parts:
        assert str(part) in r.stderr, r.stderr


def test_what_only_reads_works(place, tmp_path):
    run, data = place / "run", place / "d.h5"
    inspect = _run(place, "inspect", run)
    assert inspect.returncode == 0 and "ckpt-" in inspect.stdout, inspect.stderr
    evaluate = _run(place, "evaluate", run, data, "--json")
    assert evaluate.returncode == 0, evaluate.stderr
    assert 0 < json.loads(evaluate.stdout)["accuracy"] <= 1
    assert _run(place, "predict", run, data, "--out", tmp_path / "p.csv").returncode == 0
    assert _run(place, "plot", run, "--out", tmp_path / "p.png").returncode == 0
    # the same predictions as from a writable copy of the run
    shutil.copytree(run, tmp_path / "copy")
    assert _run(place, "predict", tmp_path / "copy", data, "--out", tmp_path / "q.csv").returncode == 0
    p, q = (pd.read_csv(tmp_path / name).to_numpy() for name in ("p.csv", "q.csv"))
    np.testing.assert_array_equal(p, q)
    # training from the read-only data into a writable place
    r = _run(place, "train", data, "--hidden", "3", "--epochs", "1", "--quiet", "--checkpoint-dir", tmp_path / "ck")
    assert r.returncode == 0, r.stderr


def test_resuming_a_read_only_run_is_one_line(place):
    r = _run(place, "train", place / "d.h5", "--hidden", "4", "--epochs", "3", "--checkpoint-dir", place / "run",
             "--resume")
    _one_line(r, place / "run", "checkpoint directory", REASON)


def test_outputs_into_a_read_only_place_are_one_line(place):
    _one_line(_run(place, "train", place / "d.h5", "--checkpoint-dir", place / "new"), place / "new", REASON)
    _one_line(_run(place, "predict", place / "run", place / "d.h5", "--out", place / "p.csv"),
              f"{place / 'p.csv'}: cannot write ({REASON})")
    _one_line(_run(place, "make-data", place / "x.h5", "--rows", "10", "--features", "3"),
              f"{place / 'x.h5'}: cannot write ({REASON})")
    _one_line(_run(place, "plot", place / "run", "--out", place / "p.png"), place / "p.png", REASON)
    _one_line(_run(place, "serve", "--source", "http", "--checkpoint-dir", place / "svc", "--port", "0",
                   "--features", "f0,f1", "--classes", "0,1"),
              place / "svc", "checkpoint directory", REASON,
              after="serving on http://127.0.0.1:")  # it listens at once and loads meanwhile


def test_a_read_only_cache_directory_is_one_line(place, tmp_path):
    args = ["train", place / "d.h5", "--hidden", "3", "--epochs", "1", "--quiet", "--checkpoint-dir", tmp_path / "ck"]
    _one_line(_run(place, *args, "--cache-dir", place / "cache"),
              f"{place / 'cache'}: cannot write the decoded copy of {place / 'd.h5'} ({REASON})")
    _one_line(_run(place, *args, "--overwrite", "--cache-dir", place / "cache" / "sub"),
              f"{place / 'cache' / 'sub'}: cannot use it as the cache directory ({REASON})")
