"""Every error message that names an option gives advice that works: each case below makes the
error happen through the real command, then follows the advice exactly and checks that it succeeds.
(Others are followed where their feature is tested: --features in test_predict.py, --overwrite and
a --checkpoint-dir apart from the data in test_outputs.py, --skip-nonfinite in test_untrusted.py,
--allow-missing-chunks in test_bad_input.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import DATA

BIN = Path(sys.executable).with_name("streamtrain")
H5 = DATA / "breast_cancer.h5"


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("advice")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "outcome": (X[:, 0] > 0).astype(int)}).to_parquet(d / "outcome.parquet")
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": X[:, 0] * 0.5 + 0.1}).to_parquet(d / "real.parquet")
    assert run("train", H5, "--epochs", 1, "--hidden", 3, "--checkpoint-dir", d / "run", "--quiet").returncode == 0
    return d


# (id, failing arguments, what the one error line says, the arguments with its advice followed);
# "{d}" is the fixture's directory, "{n}" a fresh directory per case
CASES = [
    ("label", ["train", "{d}/outcome.parquet", "--epochs", "1"], "name it with --label",
     ["train", "{d}/outcome.parquet", "--epochs", "1", "--label", "outcome"]),
    ("task", ["train", "{d}/real.parquet", "--epochs", "1", "--task", "binary"], "use --task regression",
     ["train", "{d}/real.parquet", "--epochs", "1", "--task", "regression"]),
    ("resume", ["train", H5, "--epochs", "2", "--hidden", "3", "--checkpoint-dir", "{n}/run"],
     "pass --resume to continue it", ["train", H5, "--epochs", "2", "--checkpoint-dir", "{n}/run", "--resume"]),
    ("overwrite", ["train", H5, "--epochs", "1", "--checkpoint-dir", "{n}/run"], "or --overwrite to replace it",
     ["train", H5, "--epochs", "1", "--checkpoint-dir", "{n}/run", "--overwrite"]),
    ("another-dir", ["train", H5, "--epochs", "1", "--checkpoint-dir", "{n}/run"], "or use another --checkpoint-dir",
     ["train", H5, "--epochs", "1", "--checkpoint-dir", "{n}/other"]),
    ("force", ["train", H5, "--epochs", "2", "--lr", "0.5", "--checkpoint-dir", "{n}/run", "--resume"],
     "pass --force to resume anyway",
     ["train", H5, "--epochs", "2", "--lr", "0.5", "--checkpoint-dir", "{n}/run", "--resume", "--force"]),
    ("new-model", ["train", H5, "--epochs", "2", "--hidden", "7", "--checkpoint-dir", "{n}/run", "--resume"],
     "use another --checkpoint-dir for a new model",
     ["train", H5, "--epochs", "2", "--hidden", "7", "--checkpoint-dir", "{n}/new"]),
    ("validation", ["train", H5, "--epochs", "2", "--early-stopping", "1"], "(--val or --val-fraction)",
     ["train", H5, "--epochs", "2", "--early-stopping", "1", "--val-fraction", "0.2"]),
    ("lr", ["train", "{d}/real.parquet", "--epochs", "1", "--optimizer", "sgd", "--lr", "1000000"],
     "lower the learning rate (--lr)", ["train", "{d}/real.parquet", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.01"]),
    ("window", ["train", H5, "--epochs", "1", "--window-mb", "1048576"], "lower it",
     ["train", H5, "--epochs", "1", "--window-mb", "64"]),
]


@pytest.mark.parametrize("args, says, followed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_advice_of_an_error_works_when_followed(d, tmp_path, args, says, followed):
    import shutil

    shutil.copytree(d / "run", tmp_path / "run")
    fill = {"d": d, "n": tmp_path}
    res = run(*[str(a).format(**fill) for a in args])
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr, res.stderr  # 1: training failed
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], res.stderr
    res = run(*[str(a).format(**fill) for a in followed])
    assert res.returncode == 0, res.stderr
