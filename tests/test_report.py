"""``streamtrain report``: a run as one self-contained HTML page, its figures those of the run's
``metrics.jsonl`` and of ``evaluate``; read back with an HTML parser here, and in a real browser
in ``test_watch.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamtrain.synthetic import make_data

from .test_watch import _browser, _Elements, browser

BIN = Path(sys.executable).with_name("streamtrain")


def _cli(*args, check=True):
    res = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    where = tmp_path_factory.mktemp("report")
    make_data(where / "d.h5", rows=3000, features=6, seed=1)
    _cli("train", where / "d.h5", "--epochs", "6", "--val-fraction", "0.2", "--early-stopping", "2",
         "--checkpoint-dir", where / "run", "--quiet")
    return where


def test_the_report_holds_the_curves_the_settings_and_evaluate_s_figures(run, tmp_path):
    out = tmp_path / "r.html"
    res = _cli("report", run / "run", run / "d.h5", "--split", "val", "--out", out)
    assert res.stdout.strip() == f"wrote {out}"
    page = _Elements(out.read_text())
    history = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert page.points_of("chart-loss") == {"training": len(history), "validation": len(history)}
    best = min(history, key=lambda h: h["val_loss"])["epoch"]
    assert page.text("best-epoch") == str(best) and page.has_class("chart-loss", "best")
    assert [row[0] for row in page.tables["epochs"]] == [str(h["epoch"]) for h in history]
    evaluated = json.loads(_cli("evaluate", run / "run", run / "d.h5", "--split", "val", "--json").stdout)
    figures = page.tables["figures"][0]
    assert [float(v) for v in figures] == pytest.approx([evaluated["accuracy"], evaluated["log_loss"],
                                                         evaluated["roc_auc"]], rel=1e-3)
    assert page.tables["confusion"] == [[str(c), *map(str, row)] for c, row in zip(evaluated["classes"],
                                                                                  evaluated["confusion_matrix"])]
    assert [r[4] for r in page.tables["per-class"]] == [str(n) for n in evaluated["support"]]
    assert page.points_of("chart-roc")["ROC"] == len(evaluated["roc_curve"]["fpr"]) > 10
    settings = dict(page.tables["settings"])
    assert settings["epochs"] == "6" and settings["val_fraction"] == "0.2"
    assert dict(page.tables["fingerprint"])["n_rows"] == "3000"
    text = out.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")


def test_without_data_the_report_has_no_evaluation_and_bad_requests_are_one_line(run, tmp_path):
    out = tmp_path / "r.html"
    _cli("report", run / "run", "--out", out)
    page = _Elements(out.read_text())
    assert "figures" not in page.tables and "chart-roc" not in page.by_id and "epochs" in page.tables
    again = _cli("report", run / "run", "--out", out, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    assert _cli("report", run / "run", "--out", out, "--overwrite").returncode == 0
    no_val = tmp_path / "plain"
    _cli("train", run / "d.h5", "--epochs", "1", "--checkpoint-dir", no_val, "--quiet")
    res = _cli("report", no_val, run / "d.h5", "--split", "val", "--out", tmp_path / "x.html", check=False)
    assert res.returncode == 2 and "--val-fraction" in res.stderr and not (tmp_path / "x.html").exists()
    into_run = _cli("report", run / "run", "--out", run / "run" / "metrics.jsonl", "--overwrite", check=False)
    assert into_run.returncode == 2 and "Traceback" not in into_run.stderr  # a run's own file is never replaced


@pytest.mark.slow
@browser
def test_the_report_in_a_browser(run, tmp_path):
    out = tmp_path / "r.html"
    _cli("report", run / "run", run / "d.h5", "--out", out)
    seen = _Elements(_browser(out.as_uri(), "--dump-dom", wait_ms=500))
    assert seen.points_of("chart-loss")["training"] >= 2 and seen.points_of("chart-roc")["ROC"] > 10
    assert len(seen.tables["confusion"]) == 2
    _browser(out.as_uri(), f"--screenshot={tmp_path / 'report.png'}", wait_ms=500, cwd=tmp_path)
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
