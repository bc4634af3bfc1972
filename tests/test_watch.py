"""The service's live page in a real browser: headless Chromium (Debian's ``chromium``, which
``scripts/test.sh`` installs where it can) opens ``GET /`` of a running ``streamtrain serve``
while a producer posts rows, runs the page's script, and the test reads the page's DOM as the
browser left it (``--dump-dom``) and keeps a screenshot (``watch.png`` beside the test's files,
and in ``$STREAMTRAIN_ARTIFACTS`` where that is set). Skipped, saying why, without Chromium."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from . import test_serve
from .test_serve import BIN, FEATURES, pieces, post_all, wait_for

served = test_serve.served  # (the fixture: a ``streamtrain serve`` process, closed after the test)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (scripts/test.sh installs Debian's "
                             "chromium package where apt-get can)")


def _browser(url: str, *what: str, wait_ms: int = 4000, cwd: Path | None = None) -> str:
    """Chromium, headless, opening ``url`` and giving its scripts ``wait_ms`` of their time;
    ``what``: ``--dump-dom`` (the DOM, printed) or ``--screenshot=PATH``."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-dev-shm-usage", "--window-size=1280,1000", f"--virtual-time-budget={wait_ms}", *what, url]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


class _Elements(html.parser.HTMLParser):
    """The DOM Chromium printed: each element with an id, its attributes and its text."""

    def __init__(self, dom: str):
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.lines: list[dict] = []  # each polyline's attributes
        self.rows: list[list[str]] = []  # the refused inputs' table
        self.tables: dict[str, list[list[str]]] = {}  # each table with an id: its body's rows of cells
        self._open: list[dict] = []
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        node = {"tag": tag, "attrs": a, "text": ""}
        if "id" in a:
            self.by_id[a["id"]] = node
        if tag == "polyline":
            self.lines.append(a)
        if tag == "polyline":
            a["_chart"] = next((n["attrs"]["id"] for n in reversed(self._open) if n["tag"] == "svg"), None)
        if tag in ("line", "polyline") and "class" in a:
            node["chart"] = next((n["attrs"]["id"] for n in reversed(self._open) if n["tag"] == "svg"), None)
            self.by_id.setdefault(f"{node['chart']}.{a['class']}", node)
        if tag == "tr" and self._open:
            table = next((n["attrs"].get("id") for n in reversed(self._open) if n["tag"] == "table"), None)
            body = any(n["tag"] == "tbody" for n in self._open)
            if table == "rejected" or self._open[-1]["attrs"].get("id") == "rejected":
                self.rows.append([])
            if table is not None and body:
                self.tables.setdefault(table, []).append([])
                self._table = table
        if tag == "td":
            self._cell = []
        self._open.append(node)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            cell = "".join(self._cell)
            if any(n["attrs"].get("id") == "rejected" for n in self._open) and self.rows:
                self.rows[-1].append(cell)
            elif getattr(self, "_table", None) in self.tables:
                self.tables[self._table][-1].append(cell)
            self._cell = None
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for node in self._open:
            if "id" in node["attrs"]:
                node["text"] += data
        if self._cell is not None:
            self._cell.append(data)

    def text(self, id_: str) -> str:
        return " ".join(self.by_id[id_]["text"].split())

    def points(self, chart: str) -> int:
        return int(self.by_id[chart]["attrs"]["data-points"])

    def points_of(self, chart: str) -> dict[str, int]:
        """Each line of a chart drawn on the server (the report): its name and points."""
        return {a["data-series"]: int(a["data-points"]) for a in self.lines
                if a.get("_chart") == chart and "data-series" in a}

    def has_class(self, chart: str, name: str) -> bool:
        return f"{chart}.{name}" in self.by_id


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.slow
@browser
def test_the_live_page_draws_the_service_learning(served, tmp_path):
    val = _held_out(tmp_path / "val.parquet")
    svc = served("http", "--val", val, "--val-every", "1").start()
    stream = pieces(1200, seed=5)  # (about 15 s of posting: the producer writes on while the page is opened twice)
    producer = threading.Thread(target=post_all, args=(svc.url, stream), kwargs={"pause": 0.01}, daemon=True)
    producer.start()
    # (the page draws what the service sampled: a few seconds of points with rows scored in them)
    wait_for(lambda: sum(p["loss"] is not None for p in httpx.get(svc.url + "/watch.json").json()["points"]) >= 3,
             60, "three points with rows scored")
    # a refused request: shown with its reason
    bad = httpx.post(svc.url + "/learn", json=[{"f0": 1.0}])
    assert bad.status_code == 400
    page = httpx.get(svc.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere

    first = _Elements(_browser(svc.url + "/", "--dump-dom"))
    assert first.text("state") == "training" and first.text("source") == "(http)"
    assert first.points("chart-loss") >= 2 and first.points("chart-rate") >= 1
    assert _number(first.text("rows-trained")) > 0 and _number(first.text("version")) >= 1
    assert {"loss", "prequential_loss", "accuracy", "prequential_accuracy", "rows_per_s", "lag",
            "queue_rows", "val_loss", "val_accuracy"} <= {a["data-key"] for a in first.lines}
    # the held-out file's curve and its latest loss
    assert all(len(a["points"].split()) >= 2 for a in first.lines if a["data-key"] in ("val_loss", "val_accuracy"))
    assert first.text("val-path") == val.name and 0 < _number(first.text("val-loss")) < 5
    assert all(len(a["points"].split()) >= 1 for a in first.lines if a["data-key"] == "prequential_loss")
    assert any("POST /learn" in r[1] and "y" in r[2] for r in first.rows), first.rows
    time.sleep(3)  # the producer writes on; a page opened later has more points, and more rows trained
    later = _Elements(_browser(svc.url + "/", "--dump-dom"))
    assert later.points("chart-loss") > first.points("chart-loss")
    assert _number(later.text("rows-trained")) > _number(first.text("rows-trained"))
    # the points the page drew are the service's own: its latest rows trained within a second of /healthz's
    assert _number(later.text("rows-trained")) <= svc.status()["rows_trained"]

    shot = tmp_path / "watch.png"
    _browser(svc.url + "/", f"--screenshot={shot}", cwd=tmp_path)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("STREAMTRAIN_ARTIFACTS"):
        Path(os.environ["STREAMTRAIN_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["STREAMTRAIN_ARTIFACTS"]) / "watch.png")
    producer.join(120)
    assert svc.stop() == 0


@pytest.mark.slow
@browser
def test_guarded_reads_need_the_token_which_the_page_takes_from_its_address(served, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    svc = served("http", "--token-file", tmp_path / "token", "--guard-reads").start()
    assert httpx.get(svc.url + "/watch.json").status_code == 401
    assert httpx.get(svc.url + "/metrics").status_code == 401
    assert httpx.get(svc.url + "/watch.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert httpx.get(svc.url + "/healthz").status_code == 200  # (probes stay open)
    post = httpx.post(svc.url + "/learn", json=pieces(1)[0], headers={"Authorization": "Bearer s3cret"})
    assert post.status_code == 202
    wait_for(lambda: svc.status()["rows_received"] > 0, 30, "rows received")
    without = _Elements(_browser(svc.url + "/", "--dump-dom", wait_ms=2500))
    assert "needs the service's token" in without.text("state") and without.points("chart-loss") == 0
    with_token = _Elements(_browser(svc.url + "/#token=s3cret", "--dump-dom", wait_ms=2500))
    assert with_token.text("state") == "training" and _number(with_token.text("rows-trained")) >= 0
    assert svc.stop() == 0


@pytest.mark.slow
def test_guard_reads_without_a_token_is_one_line(tmp_path):
    from .test_serve import BIN, SETTINGS

    res = subprocess.run([str(BIN), "serve", "--source", "http", "--checkpoint-dir", str(tmp_path / "s"),
                          "--port", "0", "--guard-reads", *SETTINGS], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--guard-reads needs --token-file" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_watch_json_refuses_a_bad_since(served):
    svc = served("http").start()
    for bad in ("-1", "\u00b2", "1e3"):  # (a superscript two is a digit to str.isdigit)
        r = httpx.get(svc.url + "/watch.json", params={"since": bad})
        assert r.status_code == 400 and "since" in r.json()["error"], bad
    body = httpx.get(svc.url + "/watch.json").json()
    assert body["task"] == "binary" and body["points"] and body["points"][-1]["seq"] >= 1
    assert set(FEATURES)  # (the stream's features are the module's)
    assert svc.stop() == 0


def test_the_sampler_asks_the_source_for_its_lag_every_few_seconds_and_rates_between_points(monkeypatch):
    # (a stand-in service: the sampler reads its status, its learner's counters and its source's
    # lag; Redis 6 answers a lag by sending up to 100 entries, which cost the training thread
    # when asked every second)
    from types import SimpleNamespace

    from streamtrain.serve import watch as w

    asked = []
    learner = SimpleNamespace(lock=threading.Lock(), rows_trained=0, loss_sum=0.0, scored=0, correct=0,
                              model=SimpleNamespace(task="binary"))
    status = {"rows_trained": 0, "rows_received": 0, "rows_rejected": 0, "queue_rows": 0, "model_version": 1,
              "checkpoint_age_seconds": None, "training": True, "error": None, "accepting": True, "intake_error": None,
              "prequential": {"loss": None, "accuracy": None}}
    service = SimpleNamespace(learner=learner, status=lambda: dict(status),
                              source=SimpleNamespace(name="redis", lag=lambda: asked.append(1) or 7.0))
    clock = [1000.0]
    monkeypatch.setattr(w.time, "time", lambda: clock[0])
    watch = w.Watch(service)
    for second in range(12):
        learner.rows_trained += 500
        learner.loss_sum, learner.scored, learner.correct = learner.loss_sum + 250.0, learner.scored + 500, \
            learner.correct + 400
        status["prequential"] = {"loss": learner.loss_sum / learner.scored, "accuracy": 0.8}
        watch.sample()
        clock[0] += 1.0
    assert len(asked) == 3  # at 0, 5 and 10 s
    points = watch.since(0)["points"]
    assert [p["seq"] for p in points] == list(range(1, 13)) and all(p["lag"] == 7.0 for p in points)
    assert points[0]["rows_per_s"] is None and all(p["rows_per_s"] == 500.0 for p in points[1:])
    assert all(p["loss"] == 0.5 and p["accuracy"] == 0.8 for p in points[1:])
    assert [p["seq"] for p in watch.since(10)["points"]] == [11, 12]
    assert len(watch.since(99)["points"]) == 12  # a page older than a restarted service: every point


def _held_out(path: Path) -> Path:
    """A held-out file of the test stream's kind of rows (another seed)."""
    pd.DataFrame([row for piece in pieces(60, seed=9) for row in piece]).to_parquet(path)
    return path


def test_a_held_out_file_is_scored_as_the_model_learns(served, tmp_path):
    # Its loss in /healthz, /watch.json and /metrics is the one `evaluate` gives the same model.
    val = _held_out(tmp_path / "val.parquet")
    svc = served("http", "--val", val, "--val-every", "0.3").start()
    stream = pieces(150, seed=5)

    def settled():
        a = svc.status()
        time.sleep(0.5)
        b = svc.status()
        scored = b["validation"]["last"]
        return (a["updates"] == b["updates"] == b["model_version"] and scored
                and scored["model_version"] == b["model_version"] and b)

    # Two halves, each waited out: the model between them is scored however fast the service trains (on a
    # loaded machine the whole stream could otherwise be trained before the first scoring).
    post_all(svc.url, stream[:75])
    svc.wait_received(sum(map(len, stream[:75])))
    first = wait_for(settled, 60, "the half-way model scored")["validation"]
    wait_for(lambda: any(p["val_loss"] == first["last"]["loss"]
                         for p in httpx.get(svc.url + "/watch.json").json()["points"]), 30, "a point with its score")
    post_all(svc.url, stream[75:], prefix="rest")  # keys of their own: not the first half again
    svc.wait_received(sum(map(len, stream)))
    # the stream has ended: the last model, published, is scored once (it changes no more)
    last = wait_for(settled, 60, "the last model scored")["validation"]
    assert last["last"]["model_version"] > first["last"]["model_version"]
    assert last["path"] == str(val) and last["error"] is None and last["last"]["rows"] == len(pd.read_parquet(val))
    points = httpx.get(svc.url + "/watch.json").json()
    assert points["validation"] == str(val)
    scored = [p["val_loss"] for p in points["points"] if p["val_loss"] is not None]
    assert len(set(scored)) >= 2  # scored again as the model learned
    metrics = httpx.get(svc.url + "/metrics").text
    gauge = next(line for line in metrics.splitlines() if line.startswith("streamtrain_validation_loss "))
    assert float(gauge.split()[1]) == last["last"]["loss"]
    assert svc.stop() == 0
    res = subprocess.run([str(BIN), "evaluate", str(svc.dir), str(val), "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert abs(found["loss"] - last["last"]["loss"]) <= 1e-6 * abs(found["loss"])
    assert found["accuracy"] == last["last"]["accuracy"]


def test_a_held_out_file_without_the_label_is_refused_at_start(tmp_path):
    val = tmp_path / "nolabel.parquet"
    pd.DataFrame([{k: v for k, v in row.items() if k != "y"} for row in pieces(5)[0]]).to_parquet(val)
    res = subprocess.run([str(BIN), "serve", "--source", "http", "--checkpoint-dir", str(tmp_path / "svc"), "--port",
                          "0", *test_serve.SETTINGS, "--val", str(val)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(val) in lines[-1] and "label" in lines[-1], res.stderr


def test_a_regression_service_scores_its_held_out_file_by_r2(served, tmp_path):
    val = _held_out(tmp_path / "val.parquet")
    settings = [a for a in test_serve.SETTINGS if a not in ("--classes", "0,1")] + ["--task", "regression"]
    svc = served("http", "--val", val, "--val-every", "0.3", settings=settings).start()
    post_all(svc.url, pieces(60, seed=5))
    scored = wait_for(lambda: (v := svc.status()["validation"]["last"]) and v["model_version"] > 0 and v, 60,
                      "a scoring of a trained model")
    assert scored["accuracy"] is None and scored["r2"] is not None and scored["loss"] > 0
    metrics = httpx.get(svc.url + "/metrics").text
    assert "streamtrain_validation_r2 " in metrics and "streamtrain_validation_accuracy" not in metrics
    page = httpx.get(svc.url + "/watch.json").json()
    assert page["task"] == "regression" and any(p["val_loss"] is not None for p in page["points"])
    assert svc.stop() == 0
