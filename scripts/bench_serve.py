"""The ``serve`` section of the benchmark: ``streamtrain serve`` on loopback, fed by each source.

For each source (HTTP, Redis Streams, NATS JetStream, a landing directory) a producer writes the
same rows (64 float32 features, a binary label) as Arrow IPC pieces of 1,000 rows (Parquet files of
50,000 rows for the directory) as fast as the service takes them; the figure is rows trained per
second from the first piece sent to the last row trained (network 64 -> 64 sigmoid -> 1, batch 256,
checkpoints every 10 s). During the HTTP run a second client asks ``/predict`` for one row in a
loop: its latency percentiles are those of predictions while training. The service's RSS and
its lag (rows received and not yet trained; the source's own backlog) are sampled throughout.
A soak run then feeds HTTP at a fixed rate for ``soak_s`` seconds and records RSS over time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).with_name("streamtrain")
FEATURES = [f"f{i}" for i in range(64)]
PIECE = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _arrow(X: np.ndarray, y: np.ndarray | None) -> bytes:
    import pyarrow as pa

    cols = {f: X[:, i] for i, f in enumerate(FEATURES)}
    if y is not None:
        cols["y"] = y
    table = pa.table(cols)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _json(X: np.ndarray, y: np.ndarray) -> bytes:
    """Rows as a JSON body, as a client writes them: a list of objects, a key per column."""
    import json

    return json.dumps([{**dict(zip(FEATURES, map(float, row))), "y": int(label)} for row, label in zip(X, y)]).encode()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _Service:
    def __init__(self, source: str, workdir: Path, command: list[str] | None = None, env: dict | None = None,
                 extra: list[str] = ()):
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*(command or [str(BIN)]), "serve", "--source", source, "--checkpoint-dir", str(workdir / "svc"),
                                      "--port", str(self.port), "--features", ",".join(FEATURES), "--label", "y",
                                      "--classes", "0,1", "--hidden", "64", "--batch-size", "256",
                                      "--queue-mb", "64", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env)
        self.client = httpx.Client(timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.client.get(self.url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"serve --source {source} did not start")

    def status(self) -> dict:
        return self.client.get(self.url + "/healthz").json()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.client.close()


def _feed(source: str, url: str, bodies, window: int = 16) -> None:
    """A producer of encoded Arrow entries (any iterable: encoded as they are sent, or before):
    Redis ``XADD``s pipelined ``window`` at a time, NATS JetStream publishes with up to ``window``
    acknowledgements outstanding (``window`` 1: each waited for in turn)."""
    if source == "redis":
        import redis

        c = redis.Redis.from_url(url)
        pipe = c.pipeline(transaction=False)
        for body in bodies:
            pipe.xadd("bench", {"arrow": body})
            if len(pipe) >= window:
                pipe.execute()
        pipe.execute()
        c.close()
        return

    async def go():
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=window)
        for body in bodies:
            await js.publish_async("bench.in", body)
        await js.publish_async_completed()
        await nc.close()

    asyncio.run(go())


def _produce(source: str, url: str, workdir: Path, X: np.ndarray, y: np.ndarray, service: _Service | None) -> None:
    pieces = [(X[a:a + PIECE], y[a:a + PIECE]) for a in range(0, len(X), PIECE)]
    if source == "http":
        _post_all(service, (_arrow(Xp, yp) for Xp, yp in pieces), "application/vnd.apache.arrow.stream")
    elif source in ("redis", "nats"):  # (each entry encoded, sent and acknowledged in turn)
        _feed(source, url, (_arrow(Xp, yp) for Xp, yp in pieces), window=1)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for i, a in enumerate(range(0, len(X), 50_000)):
            table = pa.table({**{f: X[a:a + 50_000, j] for j, f in enumerate(FEATURES)}, "y": y[a:a + 50_000]})
            tmp = workdir / "landing" / f".part-{i:04d}.parquet"
            pq.write_table(table, tmp)
            os.rename(tmp, workdir / "landing" / f"part-{i:04d}.parquet")


def _post_all(service: "_Service", bodies, kind: str, connections: int = 1) -> None:
    """POST each body to /learn as fast as the service takes them (429: again, a moment later),
    over ``connections`` connections at once (a thread each, the bodies dealt out in turn). The
    standard library's ``http.client`` posts, one kept-alive connection per thread: the producer
    shares the service's cores, and httpx took about twice its CPU per post (a producer the
    service does not control; this one is as light as a Python client gets)."""
    import http.client
    import urllib.parse

    address = urllib.parse.urlsplit(service.url)
    bodies, failures = list(bodies), []

    def post(share):
        try:
            conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
            try:
                for body in share:
                    while True:
                        conn.request("POST", "/learn", body=body, headers={"content-type": kind})
                        r = conn.getresponse()
                        text = r.read()
                        if r.status != 429:
                            break
                        time.sleep(0.01)
                    assert r.status == 202, text
            finally:
                conn.close()
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=post, args=(bodies[k::connections],)) for k in range(connections)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failures:
        raise failures[0]


def _broker(kind: str, workdir: Path):
    """A Redis or NATS server on a free loopback port; ``(process, url)``."""
    port = _free_port()
    if kind == "redis":
        import redis

        proc = subprocess.Popen([str(Path(sys.executable).with_name("redis-server")), "--port", str(port), "--bind",
                                 "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(300):
            try:
                if redis.Redis.from_url(url).ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        return proc, url
    proc = subprocess.Popen([str(Path(sys.executable).with_name("nats-server")), "-js", "-a", "127.0.0.1", "-p",
                             str(port), "-sd", str(workdir / "nats")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"

    async def stream():
        import nats

        async def quiet(e):  # (refused until the server listens: tried again below)
            pass

        nc = await nats.connect(url, max_reconnect_attempts=1, error_cb=quiet)
        await nc.jetstream().add_stream(name="BENCH", subjects=["bench.in"])
        await nc.close()

    for _ in range(300):
        try:
            asyncio.run(stream())
            break
        except Exception:
            time.sleep(0.05)
    return proc, url


def _one(source: str, X: np.ndarray, y: np.ndarray, workdir: Path, command: list[str] | None = None,
         env: dict | None = None, extra: list[str] = ()) -> dict:
    """One source's run (see the module's docstring); ``command``, ``env``: the streamtrain to run
    (scripts/ab.py runs two revisions' services); ``extra``: more of serve's options."""
    broker, url, spec = None, None, "http"
    if source in ("redis", "nats"):
        broker, url = _broker(source, workdir)
        spec = f"{url}?stream=bench" if source == "redis" else f"{url}?stream=BENCH"
    elif source == "directory":
        (workdir / "landing").mkdir()
        spec = f"dir:{workdir / 'landing'}"
    svc = _Service(spec, workdir, command, env, extra)
    try:
        latencies, lags, rss = [], [], []
        done = threading.Event()

        def predict_loop():
            import httpx

            body = _arrow(X[:1], None)
            with httpx.Client(timeout=30) as c:
                while not done.is_set():
                    t = time.perf_counter()
                    c.post(svc.url + "/predict", content=body,
                           headers={"content-type": "application/vnd.apache.arrow.stream"})
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.005)

        predictor = threading.Thread(target=predict_loop) if source == "http" else None
        started = time.perf_counter()
        producer = threading.Thread(target=_produce, args=(source, url, workdir, X, y, svc))
        producer.start()
        if predictor:
            predictor.start()
        n = len(X)
        while True:
            s = svc.status()
            lags.append(s["rows_received"] - s["rows_trained"])
            rss.append(_rss(svc.proc.pid))
            if s["rows_trained"] >= n - n % 256 or not s["training"]:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        done.set()
        producer.join()
        if predictor:
            predictor.join()
        out = {"source": source, "rows": n, "seconds": seconds, "rows_per_s": s["rows_trained"] / seconds,
               "max_rows_waiting": int(max(lags)), "peak_rss_bytes": max(rss)}
        if latencies:
            lat = np.array(latencies)
            out.update(predict_p50_s=float(np.percentile(lat, 50)), predict_p99_s=float(np.percentile(lat, 99)),
                       predicts=len(lat))
        return out
    finally:
        svc.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(30)


def prefilled(source: str, X: np.ndarray, y: np.ndarray, command: list[str] | None = None,
              env: dict | None = None, extra: list[str] = (), predict_rows: int = 0, connections: int = 4) -> dict:
    """The service alone: ``source`` (redis, nats or directory) filled with every row before the
    service starts, then rows trained per second from its first trained row to its last (the
    ``/healthz`` counter sampled every 20 ms), beside ``train`` on the same rows from an
    uncompressed HDF5 file (its epoch's samples/s: also first step to last) in the same call.
    ``source`` "http" (Arrow bodies) or "http-json": posted by a live producer in this process while
    the service runs (HTTP cannot be filled beforehand), bodies encoded before the timing, over
    ``connections`` connections at once (a producer's requests in flight together).
    ``predict_rows`` > 0: meanwhile a client asks ``/predict`` for that many rows (Arrow) in a
    loop; the latencies of the requests answered while it trained give p50 and p99.
    ``source`` "redis-live" or "nats-live": the broker written by a live producer in this process
    (``_feed``, entries encoded before the timing) while the service reads it."""
    live = source.endswith("-live")
    source = source.removesuffix("-live")
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-serve-prefilled-{source}-"))
    broker, producer, failures = None, None, []
    try:
        url, spec = None, "http"
        if source in ("redis", "nats"):
            broker, url = _broker(source, workdir)
            spec = f"{url}?stream=bench" if source == "redis" else f"{url}?stream=BENCH"
        elif source == "directory":
            (workdir / "landing").mkdir()
            spec = f"dir:{workdir / 'landing'}"
        if not source.startswith("http") and not live:
            _produce(source, url, workdir, X, y, None)
        svc = _Service(spec, workdir, command, env, extra)
        if live:  # a producer writing while the service reads, on the same cores
            bodies = [_arrow(X[a:a + PIECE], y[a:a + PIECE]) for a in range(0, len(X), PIECE)]  # (before timing)
            def feed():
                try:
                    _feed(source, url, bodies)
                except BaseException as e:  # (raised below, not waited on for 600 s)
                    failures.append(e)

            producer = threading.Thread(target=feed)
            producer.start()
        elif source.startswith("http"):  # HTTP cannot be filled beforehand: a live producer, on the same cores
            encode = _json if source == "http-json" else _arrow
            kind = "application/json" if source == "http-json" else "application/vnd.apache.arrow.stream"
            bodies = [encode(X[a:a + PIECE], y[a:a + PIECE]) for a in range(0, len(X), PIECE)]  # (before timing)
            producer = threading.Thread(target=_post_all, args=(svc, bodies, kind, connections))
            producer.start()
        latencies, done = [], threading.Event()

        def predict_loop():  # (request start, latency), its own connection
            import httpx

            body = _arrow(X[:predict_rows], None)
            with httpx.Client(timeout=30) as c:
                while not done.is_set():
                    t = time.perf_counter()
                    r = c.post(svc.url + "/predict", content=body,
                               headers={"content-type": "application/vnd.apache.arrow.stream"})
                    latencies.append((t, time.perf_counter() - t))
                    assert r.status_code == 200, r.text
                    time.sleep(0.002)

        predictor = threading.Thread(target=predict_loop) if predict_rows else None
        try:
            if predictor:
                predictor.start()
            n, first, last, before = len(X), None, None, None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if failures:
                    raise RuntimeError(f"the {source} producer failed: {failures[0]!r}")
                s = svc.status()
                now = time.perf_counter()
                if first is None and s["rows_trained"] > 0:
                    # (where one poll saw every row trained, from the poll before, which saw none)
                    first = (now, s["rows_trained"]) if s["rows_trained"] < n - n % 256 or before is None \
                        else (before, 0)
                before = now
                if s["rows_trained"] >= n - n % 256 or not s["training"]:
                    last = (now, s["rows_trained"])
                    break
                time.sleep(0.02)
        finally:
            done.set()
            if predictor:
                predictor.join()
            if producer:
                producer.join()
            svc.stop()
        import h5py

        with h5py.File(workdir / "rows.h5", "w") as f:
            f["X"], f["y"] = X, y
        res = subprocess.run([*(command or [str(BIN)]), "train", str(workdir / "rows.h5"), "--hidden", "64",
                              "--batch-size", "256", "--epochs", "1", "--checkpoint-dir", str(workdir / "run"),
                              "--quiet"], capture_output=True, text=True, env=env)
        if res.returncode:
            raise RuntimeError(res.stderr)
        import json

        epoch = json.loads((workdir / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        if last is None:
            raise RuntimeError(f"{source}: the service trained {s['rows_trained']:,} of {n:,} rows in 600 s")
        served = (last[1] - first[1]) / (last[0] - first[0])
        out = {"source": source + ("-live" if live else ""), "rows": n, "rows_trained": last[1],
               "serve_rows_per_s": served, "train_rows_per_s": epoch["samples_per_s"],
               "ratio": served / epoch["samples_per_s"]}
        if source.startswith("http"):
            out["connections"] = connections
        during = np.array([lat for t, lat in latencies if first[0] <= t and t + lat <= last[0]])
        if predict_rows:
            out.update(predict_rows=predict_rows, predicts=len(during), predict_p50_s=float(np.percentile(during, 50)),
                       predict_p99_s=float(np.percentile(during, 99)))
        return out
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def _soak(X: np.ndarray, y: np.ndarray, workdir: Path, seconds: float, rate: float) -> dict:
    """HTTP at ``rate`` rows/s for ``seconds``: the service's RSS over time."""
    svc = _Service("http", workdir)
    try:
        bodies = [_arrow(X[a:a + PIECE], y[a:a + PIECE]) for a in range(0, len(X), PIECE)]
        samples, started, sent = [], time.monotonic(), 0
        while (now := time.monotonic()) - started < seconds:
            while sent < (now - started) * rate:
                svc.client.post(svc.url + "/learn", content=bodies[(sent // PIECE) % len(bodies)],
                                headers={"content-type": "application/vnd.apache.arrow.stream"})
                sent += PIECE
            if not samples or now - samples[-1][0] - started >= 5:
                samples.append((now - started, _rss(svc.proc.pid)))
            time.sleep(0.01)
        return {"seconds": seconds, "rate_rows_s": rate, "rows": sent,
                "rss_by_time": [[round(t, 1), r] for t, r in samples]}
    finally:
        svc.stop()


SOURCES = ("http", "redis", "nats", "directory")


def serve_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows every source's producer writes: 64 standard normal float32 features, a binary label."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    return X, (X[:, :8].sum(axis=1) > 0).astype(np.int64)


def serve_once(source: str, X: np.ndarray, y: np.ndarray, command: list[str] | None = None,
               env: dict | None = None, extra: list[str] = ()) -> dict:
    """``_one`` in a directory of its own, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-serve-{source}-"))
    try:
        return _one(source, X, y, workdir, command, env, extra)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bench_serve(files, rows, chunk_rows, soak_s: float = 600.0) -> list[dict]:
    """Each source's sustained rate at batch 256, /predict latency while training, lag, memory."""
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("serve     the serve extra is not installed (pip install 'streamtrain[serve]'): skipped", flush=True)
        return [{"skipped": "serve extra not installed"}]
    X, y = serve_rows(min(rows, 1_000_000))
    results = []
    for source in SOURCES:
        r = serve_once(source, X, y)
        results.append(r)
        extra = (f"; /predict p50 {r['predict_p50_s'] * 1e3:.1f} ms, p99 {r['predict_p99_s'] * 1e3:.1f} ms"
                 if "predict_p50_s" in r else "")
        print(f"serve    {source:9s} {r['rows_per_s']:12,.0f} rows/s, at most {r['max_rows_waiting']:,} rows "
              f"waiting, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MB{extra}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-soak-"))
    try:
        soak = _soak(X, y, workdir, soak_s, rate=100_000)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rss = [r for _, r in soak["rss_by_time"]]
    print(f"serve    soak {soak_s:.0f} s at 100,000 rows/s: RSS {rss[1] / 2**20:.0f} MB at 5 s, "
          f"{rss[-1] / 2**20:.0f} MB at the end", flush=True)
    results.append({"what": "soak", **soak})
    return results


def report_serve(rs: list[dict]) -> list[str]:
    """The report's lines for the serve section."""
    lines = ["## The training service (`streamtrain serve`, loopback)", "",
             "Each source fed the same 64-feature rows as fast as the service took them (Arrow IPC pieces of",
             "1,000 rows; Parquet files of 50,000 rows for the directory); network 64 -> 64 sigmoid -> 1,",
             "batch 256, checkpoints every 10 s, the producer, the broker and the service on the same 2 cores.",
             "Rows/s counts from the first piece sent to the last row trained. /predict: one row, Arrow in,",
             "JSON out, asked in a loop while the HTTP run trained. \"Most rows waiting\" is the most rows",
             "received and not yet trained seen by /healthz (a partial batch, the rows read ahead); the",
             "directory's rows arrive a file at a time. A broker or the directory is read and parsed on a",
             "thread of its own, ahead of training; posted rows are parsed in their requests' threads (each",
             "request waits for an fsync of its rows, shared with the requests written meanwhile). Training",
             "takes what was read ahead (up to 8 MB at once) and makes every batch it completes in one",
             "compiled call, the GIL released; the training and reading threads run at a lower CPU priority",
             "than the request threads. benchmarks/serve-prefilled.json (from `scripts/bench_serve.py",
             "--prefilled`) times the service alone, each source against `train` in the same run.", "",
             "| source | rows | rows/s trained | most rows waiting | peak RSS MB | /predict p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rs:
        if "source" in r:
            p50 = f"{r['predict_p50_s'] * 1e3:.1f}" if "predict_p50_s" in r else "-"
            p99 = f"{r['predict_p99_s'] * 1e3:.1f}" if "predict_p99_s" in r else "-"
            lines.append(f"| {r['source']} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['max_rows_waiting']:,} | "
                         f"{r['peak_rss_bytes'] / 2**20:.0f} | {p50} | {p99} |")
    for r in rs:
        if r.get("what") == "soak":
            every = 60 if r["seconds"] > 300 else 20  # a figure a minute (20 s on short runs)
            shown, last = [], -every
            for t, b in r["rss_by_time"]:
                if t - last >= every:
                    shown.append(f"{t:.0f} s: {b / 2**20:.0f} MB")
                    last = t
            points = ", ".join(shown)
            shortened = "" if r["seconds"] >= 600 else "; shortened from the 10 minutes asked, to keep the run bounded"
            lines += ["", f"Memory over a {r['seconds']:.0f}-second run at {r['rate_rows_s']:,.0f} rows/s over HTTP "
                      f"({r['rows']:,} rows{shortened}):", f"RSS {points}."]
    lines.append("")
    return lines


def main() -> None:
    """``--prefilled``: the service alone against ``train`` (see ``prefilled``), each source
    ``--reps`` times, interleaved; the best of each in ``benchmarks/serve-prefilled.json``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--prefilled", action="store_true", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--predict-rows", type=int, default=100,
                    help="after the runs above, one Redis run with /predict asked for this many rows in a loop "
                         "(0: none)")
    ap.add_argument("--json-rows", type=int, default=200_000, help="rows posted as JSON bodies (HTTP)")
    ap.add_argument("--sources", default="redis,nats,directory,http,redis-live,nats-live,http-json",
                    help="the runs (comma-separated): redis, nats, directory (filled beforehand); http, "
                         "http-json, redis-live, nats-live (a live producer)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "benchmarks" / "serve-prefilled.json"))
    args = ap.parse_args()
    X, y = serve_rows(args.rows)
    runs = [prefilled(source, X[:args.json_rows] if source == "http-json" else X,
                      y[:args.json_rows] if source == "http-json" else y)
            for _ in range(args.reps) for source in args.sources.split(",")]
    predicting = prefilled("redis", X, y, predict_rows=args.predict_rows) if args.predict_rows else None
    best = {}
    for r in runs:
        if r["source"] not in best or r["ratio"] > best[r["source"]]["ratio"]:
            best[r["source"]] = r
    for r in best.values():
        alone = "live producer" if r["source"].startswith("http") or r["source"].endswith("-live") else "service alone"
        print(f"{r['source']:9s} {alone} {r['serve_rows_per_s']:10,.0f} rows/s, train {r['train_rows_per_s']:10,.0f}"
              f" rows/s: {r['ratio']:.2f} (best of {args.reps})")
    if predicting:
        r = predicting
        print(f"redis with /predict of {r['predict_rows']} rows in a loop: {r['ratio']:.2f} of train; /predict p50 "
              f"{r['predict_p50_s'] * 1e3:.1f} ms, p99 {r['predict_p99_s'] * 1e3:.1f} ms ({r['predicts']} requests)")
    Path(args.out).write_text(json.dumps({"rows": args.rows, "reps": args.reps, "best": best, "runs": runs,
                                          "predicting": predicting}, indent=2) + "\n")


if __name__ == "__main__":
    main()
