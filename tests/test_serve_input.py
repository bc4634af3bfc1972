"""``streamtrain serve`` against hostile input: whatever a client or a producer sends, the service
answers 4xx (or dead-letters the entry) with one line naming the problem, and keeps running.

Real components throughout, as in ``test_serve.py`` (whose fixtures and helpers are used here): the
real command on a loopback port, a real HTTP client, real Redis and NATS servers. The fuzzers are
hypothesis strategies over bodies, content types, entries and messages, kept to a few dozen
examples each.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from streamtrain.config import TrainConfig
from streamtrain.errors import CheckpointError
from streamtrain.io.checkpoint import MAX_META_BYTES, load_checkpoint, save_checkpoint
from streamtrain.serve.learner import StreamLearner
from streamtrain.serve.sources import KEYS_KEPT, MAX_KEY_CHARS, LogSource
from streamtrain.train.schema import TRAINER
from tests.test_serve import (  # noqa: F401  (fixtures: served, redis_url, nats_url)
    BIN,
    FEATURES,
    SETTINGS,
    Served,
    free_port,
    nats_url,
    pieces,
    publish_all,
    redis_url,
    served,
    wait_for,
)

ARROW = "application/vnd.apache.arrow.stream"
# Fuzzing a running service: its state carries from one example to the next, so a failure is
# reported as found (shrinking would replay examples against a service that already failed).
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]
HUGE = 10 ** 400  # the trial's 400-digit number: OverflowError on its way to float


def arrow(columns: dict, names: list[bytes] | None = None) -> bytes:
    """An Arrow IPC stream of ``columns``; ``names`` replaces the field names' bytes as written
    (each the length of the one it replaces), e.g. with a name that is not UTF-8."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    body = sink.getvalue().to_pybytes()
    for old, new in zip(table.schema.names, names or []):
        assert len(old.encode()) == len(new)
        body = body.replace(old.encode(), new)
    return body


def good_arrow(n: int = 3) -> bytes:
    return arrow({**{f: np.linspace(-1, 1, n) for f in FEATURES}, "y": np.arange(n) % 2})


def not_utf8_arrow() -> bytes:
    # a column named b"f\xff" where "f3" belongs
    return arrow({"f0": [1.0], "f1": [1.0], "f2": [1.0], "fZ": [1.0], "y": [1]},
                 [b"f0", b"f1", b"f2", b"f\xff", b"y"])


ROW = {"f0": 0.5, "f1": -1.0, "f2": 2.0, "f3": 0.25, "y": 1}


def row_json(**changes) -> bytes:
    """One row as JSON, with values replaced by raw JSON text (so that huge numbers stay numbers)."""
    text = json.dumps([{k: f"@{k}@" if k in changes else v for k, v in ROW.items()}])
    for k, raw in changes.items():
        text = text.replace(f'"@{k}@"', raw)
    return text.encode()


# -- 1. Idempotency-Key: bounded, and whatever keys, a checkpoint its loader takes --------------------------
def _learner() -> StreamLearner:
    config = TrainConfig(hidden=4, batch_size=8, optimizer="adam", seed=0)
    return StreamLearner(config, FEATURES, "y", [0, 1], scale_rows=4)


def _checkpoint_and_reload(directory: Path, keys: list[str]) -> tuple[dict, LogSource]:
    """Post a request under each key to a write-ahead log, checkpoint the service's state as the
    service does, load that checkpoint as a restart does, and replay the log after it."""
    log = LogSource(directory / "log", fsync=False)
    log.start(None, {})
    learner = _learner()
    X, t = np.ones((1, len(FEATURES)), np.float32), np.ones(1, np.int64)
    for key in keys:
        log.append(X, t, key)
        log.poll(0)
    learner.position = log.seq  # (the rows themselves do not matter here)
    arrays, meta = learner.checkpoint_contents(log.state())
    save_checkpoint(directory / "ckpt-000000000001.npz", arrays, meta, TRAINER)
    log.close()
    _, loaded = load_checkpoint(directory / "ckpt-000000000001.npz", TRAINER)
    again = LogSource(directory / "log", fsync=False)
    again.start(loaded["stream"]["position"], loaded["stream"]["source"])
    return loaded, again


def test_a_checkpoint_remembering_many_long_keys_loads(tmp_path):
    # The trial: 400 requests under 60 kB keys made a 24 MB checkpoint that the restarted service
    # refused. The keys are kept as fixed-size digests: 10,000 of them, however long, stay small.
    long_keys = [f"{i}-" + "k" * 60_000 for i in range(400)]
    keys = long_keys + [f"short-{i}-" + "x" * (MAX_KEY_CHARS - 20) for i in range(KEYS_KEPT - 400)]
    loaded, log = _checkpoint_and_reload(tmp_path, keys)
    size = len(json.dumps(loaded["stream"]["source"]))
    assert size < MAX_META_BYTES // 16, size  # well under what the loader accepts
    X, t = np.ones((1, len(FEATURES)), np.float32), np.ones(1, np.int64)
    assert log.append(X, t, long_keys[0]) == (1, True)  # still known after the restart
    assert log.append(X, t, keys[-1]) == (len(keys), True)
    assert log.append(X, t, "new") == (len(keys) + 1, False)
    log.close()


any_key = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),  # surrogates, controls, anything
    st.builds(lambda c, n: c * n, st.characters(codec=None, exclude_categories=()), st.integers(0, 200_000)))


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(any_key, min_size=1, max_size=40))
def test_whatever_the_keys_the_checkpoint_written_passes_its_loader(keys):
    with tempfile.TemporaryDirectory() as tmp:
        loaded, log = _checkpoint_and_reload(Path(tmp), keys)  # load_checkpoint(..., TRAINER) raises if refused
        X, t = np.ones((1, len(FEATURES)), np.float32), np.ones(1, np.int64)
        for key in {k for k in keys if k}:
            seq, repeat = log.append(X, t, key)
            assert repeat, key[:40]
        log.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _nested(depth: int, leaf):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


source_states = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    st.builds(lambda d: {"deep": _nested(d, 1)}, st.integers(0, 60)),
    st.builds(lambda n: {"big": "x" * n}, st.sampled_from([0, 1000, MAX_META_BYTES + 1])),
    st.builds(lambda n: {"keys": [[f"key-{i:08d}" + "k" * 2000, i] for i in range(n)]},
              st.sampled_from([0, 10, 9000])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(state=source_states, position=json_values, loss=st.floats())
def test_the_writer_never_writes_a_checkpoint_its_loader_refuses(state, position, loss):
    # Whatever state a source hands over (and whatever else the metadata holds), save_checkpoint
    # either writes a checkpoint that load_checkpoint takes, with the same content, or refuses it
    # (CheckpointError) and writes nothing.
    learner = _learner()
    learner.feed(np.ones((3, len(FEATURES)), np.float32), np.ones(3, np.int64), None)
    arrays, meta = learner.checkpoint_contents(state)
    meta["stream"]["position"] = position
    meta["stream"]["prequential"]["loss_sum"] = loss
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt-000000000001.npz"
        try:
            save_checkpoint(path, arrays, meta, TRAINER)
        except CheckpointError as e:
            assert "not written: its loader would refuse it" in str(e)
            assert not path.exists() and not list(Path(tmp).iterdir())
            return
        got_arrays, got = load_checkpoint(path, TRAINER)
        assert json.dumps(got["stream"], sort_keys=True) == json.dumps(meta["stream"], sort_keys=True)
        assert sorted(got_arrays) == sorted(arrays)


# -- HTTP: one service for the checks below ----------------------------------------------------------------
@pytest.fixture(scope="module")
def http_svc(tmp_path_factory):
    svc = Served(tmp_path_factory.mktemp("http"), "http").start()
    yield svc
    svc.close()


def _no_traceback(svc: Served) -> None:
    text = svc.stderr()
    assert "Traceback" not in text, text[-3000:]
    assert httpx.get(svc.url + "/healthz", timeout=10).status_code == 200


def test_an_idempotency_key_longer_than_the_bound_is_refused(http_svc):
    url = http_svc.url + "/learn"
    rows = pieces(1, seed=1)[0]
    before = http_svc.status()["rows_received"]
    r = httpx.post(url, json=rows, headers={"Idempotency-Key": "k" * (MAX_KEY_CHARS + 1)})
    assert r.status_code == 400
    assert r.json()["error"] == (f"POST /learn (127.0.0.1): the Idempotency-Key is {MAX_KEY_CHARS + 1} characters "
                                 f"long; at most {MAX_KEY_CHARS} are allowed")
    r = httpx.post(url, json=rows, headers={"Idempotency-Key": "k" * 60_000})
    assert r.status_code in (400, 431)  # (a server may refuse a header that large itself)
    key = "k" * MAX_KEY_CHARS
    assert httpx.post(url, json=rows, headers={"Idempotency-Key": key}).status_code == 202
    assert httpx.post(url, json=rows, headers={"Idempotency-Key": key}).status_code == 200
    assert http_svc.wait_received(before + len(rows))["rows_received"] == before + len(rows)
    _no_traceback(http_svc)


def test_numbers_too_large_and_odd_bodies_are_4xx_not_500(http_svc):
    url = http_svc.url
    huge = str(HUGE)
    cases = [
        ("/learn", row_json(f0=huge), None, 400, "row 0, column 'f0': an integer of about 400 digits is beyond "
                                                 "float32's range"),
        ("/learn", row_json(y=huge), None, 400, "label 'y': an integer of about 400 digits"),
        ("/learn", row_json(y="-" + huge), None, 400, "beyond a 64-bit integer's range"),
        ("/predict", row_json(f2=huge), None, 400, "column 'f2': an integer of about 400 digits"),
        ("/learn", not_utf8_arrow(), ARROW, 400, "a column name or string value is not UTF-8"),
        ("/predict", not_utf8_arrow(), ARROW, 400, "not UTF-8"),
        ("/reload", b"[" * 100_000 + b"]" * 100_000, None, 400, "reload: malformed JSON"),
        ("/reload", json.dumps({"checkpoint": "c" * 5000}).encode(), None, 400,
         "reload: the checkpoint's name is 5000 characters long; at most 1024"),
        ("/reload", json.dumps({"checkpoint": "c" * 1000}).encode(), None, 400, "File name too long"),
        ("/reload", json.dumps({"checkpoint": "a\u0000b"}).encode(), None, 400, "a name with a NUL character"),
        ("/reload", json.dumps({"checkpoint": "service-id"}).encode(), None, 400, "not a valid streamtrain"),
    ]
    for path, body, kind, status, words in cases:
        r = httpx.post(url + path, content=body, headers={"content-type": kind} if kind else {}, timeout=30)
        assert r.status_code == status, (path, body[:60], r.text)
        assert words in r.json()["error"] and "\n" not in r.json()["error"], (words, r.json())
    _no_traceback(http_svc)


def test_strings_and_booleans_where_numbers_belong_are_refused(http_svc):
    # docs/serve.md: nothing is coerced; "1.0" and true were trained as 1.0
    before = http_svc.status()["rows_received"]
    for raw, what in (('"1.0"', ": '1.0' is a string"), ("true", ": true is a boolean"), ("null", " is null"),
                      ("[1]", ": [1] is an array"), ('{"v": 1}', ': {"v": 1} is an object')):
        for path in ("/learn", "/predict"):
            r = httpx.post(http_svc.url + path, content=row_json(f0=raw))
            assert r.status_code == 400, (raw, r.text)
            assert f"row 0, column 'f0'{what}, not a number" in r.json()["error"], r.json()
    r = httpx.post(http_svc.url + "/learn", content=row_json(y="true"))
    assert r.status_code == 400 and "label 'y': true is a boolean" in r.json()["error"]
    r = httpx.post(http_svc.url + "/learn", content=row_json(y='"1"'))  # a string where the classes are 0 and 1
    assert r.status_code == 400 and "'1' is not one of the classes" in r.json()["error"]
    assert http_svc.status()["rows_received"] == before
    _no_traceback(http_svc)


def test_malformed_content_types_and_bodies_not_utf8_are_refused(http_svc):
    body = json.dumps([ROW])
    for kind in (";;;", "", "json", "application/json extra", "application/", "/json", "a/b; =x", 'a/b; c="d'):
        r = httpx.post(http_svc.url + "/learn", content=body.encode(), headers={"content-type": kind})
        assert r.status_code == 415, (kind, r.text)
        assert r.json()["error"].startswith("POST /learn (127.0.0.1): malformed content type"), r.json()
        assert httpx.post(http_svc.url + "/predict", content=body.encode(),
                          headers={"content-type": kind}).status_code == 415
        assert httpx.post(http_svc.url + "/reload", content=b'{"checkpoint": "x"}',
                          headers={"content-type": kind}).status_code == 415
    r = httpx.post(http_svc.url + "/learn", content=body.encode(),
                   headers={"content-type": "application/json; charset=utf-16"})
    assert r.status_code == 415 and "JSON is read as UTF-8 only, not 'utf-16'" in r.json()["error"]
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        for path in ("/learn", "/predict", "/reload"):
            r = httpx.post(http_svc.url + path, content=body.encode(encoding),
                           headers={"content-type": "application/json"})
            assert r.status_code == 400, (encoding, path, r.text)
            assert "the body is not UTF-8" in r.json()["error"] and "JSON must be UTF-8" in r.json()["error"]
    r = httpx.post(http_svc.url + "/learn", content=b'[{"f0": "\xe9"}]')  # latin-1
    assert r.status_code == 400 and "not UTF-8 (invalid continuation byte: byte 0xe9" in r.json()["error"]
    # well-formed ones still work: parameters, quoted strings, the form type curl -d sends
    for kind in ('application/json; charset="UTF-8"', "application/json;;", "Application/JSON ; q=1",
                 "application/x-www-form-urlencoded"):
        r = httpx.post(http_svc.url + "/predict", content=body.encode(), headers={"content-type": kind})
        assert r.status_code == 200, (kind, r.text)
    _no_traceback(http_svc)


# -- 4. a fuzzer over every endpoint ------------------------------------------------------------------------
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=60).map(str.strip)
content_types = st.one_of(st.none(), st.sampled_from(["application/json", ARROW, "application/vnd.apache.arrow.file",
                                                      "text/json", "application/x-www-form-urlencoded", ";;;",
                                                      "application/json; charset=utf-16", "text/plain", ""]),
                          header_text)
good_values = st.floats(-100, 100, allow_nan=False) | st.integers(-100, 100)
odd_values = st.one_of(st.just(HUGE), st.just(-HUGE), st.integers(), st.floats(), st.booleans(), st.none(),
                       st.text(max_size=10), st.lists(st.integers(), max_size=3), json_values)
row_values = st.one_of(good_values, good_values, odd_values)
rows_json = st.lists(st.fixed_dictionaries({**{f: row_values for f in FEATURES},
                                             "y": st.sampled_from([0, 1]) | odd_values}),
                     min_size=1, max_size=5)


def _dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True, default=str).encode()


def _arrow_tables(draw) -> bytes:
    n = draw(st.integers(0, 3))
    kinds = [pa.float32(), pa.float64(), pa.int64(), pa.uint64(), pa.int8(), pa.bool_(), pa.string(), pa.null(),
             pa.list_(pa.int64()), pa.timestamp("s"), pa.binary(), pa.float16()]
    names = draw(st.lists(st.sampled_from([*FEATURES, "y", "z", "f0"]), min_size=0, max_size=7))
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(kinds))
        try:
            if kind == pa.float16():
                col = pa.array(np.zeros(n, np.float16), kind)
            elif pa.types.is_list(kind):
                col = pa.array([[1]] * n, kind)
            elif pa.types.is_null(kind):
                col = pa.nulls(n)
            elif kind in (pa.string(), pa.binary()):
                col = pa.array(["1"] * n, kind)
            elif kind == pa.bool_():
                col = pa.array([True] * n)
            else:
                col = pa.array(draw(st.lists(st.integers(0, 1) | st.just(None), min_size=n, max_size=n)), kind)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            col = pa.nulls(n)
        columns[name] = col
    if not columns:
        return b""
    schema = pa.schema([(k, v.type) for k, v in columns.items()])  # (repeated names too)
    batch = pa.RecordBatch.from_arrays(list(columns.values()), schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(batch)
    body = sink.getvalue().to_pybytes()
    if draw(st.booleans()):  # a name's bytes made invalid UTF-8
        body = body.replace(b"f1", b"f\xfe", 1)
    if draw(st.booleans()):  # cut short
        body = body[:draw(st.integers(0, len(body)))]
    return body


bodies = st.one_of(
    st.binary(max_size=300),
    rows_json.map(_dumps),
    rows_json.map(lambda rows: _dumps({"rows": rows})),
    json_values.map(_dumps),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(0, 200_000)),
    rows_json.map(lambda rows: json.dumps(rows, default=str).encode("utf-16")),
    st.composite(lambda draw: _arrow_tables(draw))(),
    st.builds(lambda name: _dumps({"checkpoint": name}),
              st.sampled_from([".", "log", "rejected.jsonl", "service-id", ".lock", "..", "/etc/passwd", "a/../..",
                               "c" * 5000, "nothing"]) | st.text(max_size=30)),
)
requests = st.tuples(st.sampled_from(["/learn", "/predict", "/reload", "/snapshot", "/healthz", "/readyz",
                                      "/metrics"]), content_types, bodies, st.none() | header_text)


@pytest.mark.slow
def test_fuzz_every_endpoint_answers_without_5xx_or_a_traceback(http_svc):
    client = httpx.Client(timeout=60)

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
    @given(request=requests)
    @example(("/learn", None, row_json(f0=str(HUGE)), None))
    @example(("/predict", ARROW, not_utf8_arrow(), None))
    @example(("/reload", None, b"[" * 100_000, None))
    @example(("/reload", None, _dumps({"checkpoint": "c" * 5000}), None))
    @example(("/learn", ";;;", row_json(), None))
    @example(("/learn", None, row_json(f0='"1.0"'), "k" * 300))
    def check(request):
        path, kind, body, key = request
        headers = {}
        if kind is not None:
            headers["content-type"] = kind.encode("latin-1")
        if key is not None:
            headers["idempotency-key"] = key.encode("latin-1")
        if path in ("/healthz", "/readyz", "/metrics"):
            r = client.get(http_svc.url + path)
        else:
            r = client.post(http_svc.url + path, content=body, headers=headers)
        assert r.status_code < 500, (path, kind, body[:80], r.status_code, r.text[:300])
        if r.status_code >= 400:
            message = r.json()["error"]
            assert message and "\n" not in message

    check()
    client.close()
    _no_traceback(http_svc)


# -- 3. /reload and symbolic links ---------------------------------------------------------------------------
def test_reload_refuses_a_symbolic_link_anywhere_on_the_way(served, tmp_path):
    svc = served("http").start()
    snap = httpx.post(svc.url + "/snapshot")
    assert snap.status_code == 200
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ck.npz").write_bytes(Path(snap.json()["checkpoint"]).read_bytes())  # a valid checkpoint
    (outside / "ckpt-000000999999.npz").write_bytes((outside / "ck.npz").read_bytes())
    d = svc.dir
    (d / "sub").mkdir()
    os.symlink(outside / "ck.npz", d / "sub" / "ckpt-000000999999.npz")  # the trial's link
    (d / "real").mkdir()
    (d / "real" / "ckpt-000000000005.npz").write_bytes((outside / "ck.npz").read_bytes())
    os.symlink(outside, d / "linked-dir")
    os.symlink(d / "real", d / "inner-link")  # a link, though to inside
    (d / "deep" / "er").mkdir(parents=True)
    os.symlink(outside, d / "deep" / "er" / "x")
    cases = {"sub": "'sub/ckpt-000000999999.npz' is a symbolic link",
             "sub/ckpt-000000999999.npz": "'sub/ckpt-000000999999.npz' is a symbolic link",
             "linked-dir": "'linked-dir' is a symbolic link", "linked-dir/ck.npz": "'linked-dir' is a symbolic link",
             "inner-link": "'inner-link' is a symbolic link",
             "deep/er/x/ckpt-000000999999.npz": "'deep/er/x' is a symbolic link",
             "../outside/ck.npz": "outside the checkpoint directory", str(outside / "ck.npz"): "outside the"}
    for name, words in cases.items():
        r = httpx.post(svc.url + "/reload", json={"checkpoint": name})
        assert r.status_code == 400, (name, r.text)
        assert words in r.json()["error"] and "\n" not in r.json()["error"], (name, r.json())
    # without links it loads, from a file or a directory
    assert httpx.post(svc.url + "/reload", json={"checkpoint": "real"}).status_code == 200
    assert httpx.post(svc.url + "/reload", json={"checkpoint": "real/ckpt-000000000005.npz"}).status_code == 200
    _no_traceback(svc)
    assert svc.stop() == 0


# -- 2. poison entries from brokers ------------------------------------------------------------------------------
POISON = [  # (what the trial or the docs name, the body)
    row_json(f0=str(HUGE)), row_json(y=str(HUGE)), row_json(f1='"1.0"'), row_json(f2="true"),
    b"[" * 100_000 + b"]" * 100_000, json.dumps([ROW]).encode("utf-16"), b"\xff\xfe\x00garbage"]


def _xadd(client, stream: str, fields: dict) -> bytes:
    return client.xadd(stream, fields)


@pytest.mark.slow
def test_redis_poison_entries_are_dead_lettered_and_the_rest_trained(served, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    good = pieces(4, seed=21)
    ids_bad = []
    # all in the stream before the service starts: one read holds good and bad entries together
    client.xadd("rows", {"rows": json.dumps(good[0])})
    for body in POISON:
        ids_bad.append(client.xadd("rows", {"rows": body}))
        client.xadd("rows", {"rows": json.dumps(good[1])})
    ids_bad.append(client.xadd("rows", {"arrow": not_utf8_arrow()}))
    client.xadd("rows", {"arrow": good_arrow(5)})
    rows = len(good[0]) + len(POISON) * len(good[1]) + 5
    svc = served(f"{redis_url}?stream=rows").start()
    status = svc.wait_received(rows)
    assert status["training"] is True and status["rows_rejected"] == len(ids_bad)
    dead = client.xrange("rows:dead")
    assert [d[1][b"id"] for d in dead] == ids_bad
    errors = [d[1][b"error"].decode() for d in dead]
    assert "column 'f0': an integer of about 400 digits is beyond float32's range" in errors[0]
    assert "label 'y': an integer of about 400 digits" in errors[1]
    assert "column 'f1': '1.0' is a string, not a number" in errors[2]
    assert "column 'f2': true is a boolean, not a number" in errors[3]
    assert "malformed JSON" in errors[4] and "not UTF-8" in errors[5] and "not UTF-8" in errors[6]
    assert "a column name or string value is not UTF-8" in errors[7]
    assert all(e.startswith(f"rows entry {i.decode()}: ") for e, i in zip(errors, ids_bad))
    assert httpx.get(svc.url + "/healthz").status_code == 200
    assert svc.stop() == 0
    svc.start()  # nothing read again, nothing dead-lettered again, still learning
    client.xadd("rows", {"rows": json.dumps(good[2])})
    assert svc.wait_received(rows + len(good[2]))["training"] is True
    assert len(client.xrange("rows:dead")) == len(ids_bad)
    assert "Traceback" not in svc.stderr()
    assert svc.stop() == 0
    client.close()


def _nats_dead(url: str, durable: str, count: int, timeout: float = 10.0) -> list:
    """The next ``count`` dead letters (headers, data) from the DEAD stream."""
    async def go():
        import nats

        nc = await nats.connect(url)
        sub = await nc.jetstream().pull_subscribe("streamtrain.dead.>", durable=durable, stream="DEAD")
        got = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < count and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(count - len(got), timeout=1)
            except Exception:
                continue
            for m in msgs:
                await m.ack()
                got.append((m.headers or {}, m.data))
        await nc.close()
        return got

    return asyncio.run(go())


@pytest.mark.slow
def test_nats_poison_messages_are_dead_lettered_and_the_rest_trained(served, nats_url):
    good = pieces(3, seed=22)
    bodies = [json.dumps(good[0]).encode()]
    for body in [*POISON, not_utf8_arrow()]:
        bodies += [body, json.dumps(good[1]).encode()]
    bodies.append(good_arrow(5))
    seqs = publish_all(nats_url, "rows.in", bodies)
    bad = [str(seqs[i]) for i in range(1, 2 * (len(POISON) + 1), 2)]
    rows = len(good[0]) + (len(POISON) + 1) * len(good[1]) + 5
    svc = served(f"{nats_url}?stream=ROWS").start()
    status = svc.wait_received(rows)
    assert status["training"] is True and status["rows_rejected"] == len(bad)
    dead = _nats_dead(nats_url, "check", len(bad))
    assert [h["stream-seq"] for h, _ in dead] == bad
    assert "column 'f0': an integer of about 400 digits" in dead[0][0]["error"]
    assert "column 'f1': '1.0' is a string, not a number" in dead[2][0]["error"]
    assert "column 'f2': true is a boolean, not a number" in dead[3][0]["error"]
    assert "a column name or string value is not UTF-8" in dead[-1][0]["error"]
    assert svc.stop() == 0
    svc.start()
    publish_all(nats_url, "rows.in", [json.dumps(good[2]).encode()])
    assert svc.wait_received(rows + len(good[2]))["training"] is True
    assert _nats_dead(nats_url, "check", 1, timeout=2) == []  # nothing dead-lettered again
    assert "Traceback" not in svc.stderr()
    assert svc.stop() == 0


# The broker fuzzers: each example appends entries, some good (their rows must be trained), some bad
# (each must be dead-lettered, with its reason); the service must stay healthy throughout.
good_entries = st.integers(1, 6).map(lambda n: ("good", n))
bad_entries = st.one_of(
    st.binary(max_size=200).map(lambda b: ("json", b)),
    st.binary(max_size=200).map(lambda b: ("arrow", b"\xff\xff\xff\xff" + b)),
    st.sampled_from(POISON).map(lambda b: ("json", b)),
    st.builds(lambda k, v: ("json", row_json(**{k: v})), st.sampled_from([*FEATURES, "y"]),
              st.sampled_from([str(HUGE), "-" + str(HUGE), "1e400", '"1.0"', "true", "false", "null", "[]", "{}",
                               '"x"', "[" * 50 + "]" * 50, "1e39"])),
    st.builds(lambda v: ("json", row_json(y=v)), st.sampled_from([str(2 ** 64), "7", "-1", "0.5", '"0"'])),
    json_values.map(lambda v: ("json", _dumps(v))),
    st.just(("other", b"1")),  # (Redis: no field "rows" or "arrow")
    st.builds(lambda d: ("json", b"[" * d + b"]" * d), st.integers(1, 120_000)),
    st.just(("arrow", None)),  # a name not UTF-8
    st.composite(lambda draw: ("arrow-odd", _arrow_tables(draw)))(),
)
entries_strategy = st.lists(st.one_of(good_entries, bad_entries), min_size=1, max_size=8)


def _good_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{**{f: float(v) for f, v in zip(FEATURES, rng.normal(size=4))}, "y": int(rng.integers(0, 2))}
            for _ in range(n)]


def _arrow_rows(body: bytes) -> int:
    """The rows a generated Arrow body brings the service, or 0 where it refuses the body (the
    generator makes odd tables; one may happen to be good)."""
    from streamtrain.serve.rows import Columns

    try:
        X, y = Columns(FEATURES, "y").from_arrow(body, "x")
        _learner().targets(y, "x")
    except Exception:
        return 0
    return len(X)


def _bodies(entries: list, seed: int) -> list[tuple[bool, str, bytes, int]]:
    """``(good, field, body, rows)`` for each drawn entry (``field``: the Redis field)."""
    out = []
    for i, (kind, value) in enumerate(entries):
        if kind == "good":
            rows = _good_rows(value, seed + i)
            if i % 2:
                cols = {f: [r[f] for r in rows] for f in FEATURES}
                out.append((True, "arrow", arrow({**cols, "y": [r["y"] for r in rows]}), value))
            else:
                out.append((True, "rows", json.dumps(rows).encode(), value))
        elif kind == "arrow":
            out.append((False, "arrow", value if value is not None else not_utf8_arrow(), 0))
        elif kind == "arrow-odd":
            n = _arrow_rows(value)
            out.append((n > 0, "arrow", value, n))
        else:
            out.append((False, kind if kind == "other" else "rows", value, 0))
    return out


@pytest.mark.slow
def test_fuzz_redis_entries_never_stop_the_service(served, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    svc = served(f"{redis_url}?stream=fuzz").start()
    counter = iter(range(10 ** 6))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
    @given(entries=entries_strategy)
    def check(entries):
        before = svc.status()
        dead_before = len(client.xrange("fuzz:dead"))
        bad_ids, rows, last = [], 0, None
        for good, field, body, n in _bodies(entries, next(counter) * 100):
            last = client.xadd("fuzz", {field: body})
            if good:
                rows += n
            else:
                bad_ids.append(last)
        status = wait_for(lambda: ((s := svc.status())["position"] == last.decode() or not s["training"]) and s, 60,
                          "the last entry")
        assert status["training"] is True, status["error"]
        assert status["rows_received"] == before["rows_received"] + rows
        assert status["rows_rejected"] == before["rows_rejected"] + len(bad_ids)
        dead = client.xrange("fuzz:dead")[dead_before:]
        assert [d[1][b"id"] for d in dead] == bad_ids
        assert all(d[1][b"error"].startswith(b"fuzz entry ") for d in dead)

    check()
    assert httpx.get(svc.url + "/healthz").status_code == 200
    assert "Traceback" not in svc.stderr()
    assert svc.stop() == 0
    client.close()


@pytest.mark.slow
def test_fuzz_nats_messages_never_stop_the_service(served, nats_url):
    svc = served(f"{nats_url}?stream=ROWS").start()
    counter = iter(range(10 ** 6))

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
    @given(entries=entries_strategy)
    def check(entries):
        before = svc.status()
        drawn = _bodies(entries, next(counter) * 100)
        seqs = publish_all(nats_url, "rows.in", [body for _, _, body, _ in drawn])
        bad = [str(s) for s, (good, _, _, _) in zip(seqs, drawn) if not good]
        rows = sum(n for good, _, _, n in drawn if good)
        status = wait_for(lambda: ((s := svc.status())["position"] == seqs[-1] or not s["training"]) and s, 60,
                          "the last message")
        assert status["training"] is True, status["error"]
        assert status["rows_received"] == before["rows_received"] + rows
        assert status["rows_rejected"] == before["rows_rejected"] + len(bad)
        dead = _nats_dead(nats_url, "fuzz-check", len(bad)) if bad else []
        assert [h["stream-seq"] for h, _ in dead] == bad
        assert all(h["error"].startswith("ROWS message ") for h, _ in dead)

    check()
    assert httpx.get(svc.url + "/healthz").status_code == 200
    assert "Traceback" not in svc.stderr()
    assert svc.stop() == 0


# -- 6. start-up failures: one line, exit 2 ------------------------------------------------------------------------
def _serve(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "serve", "--checkpoint-dir", str(tmp_path / "svc"), "--port", "0",
                           "--features", "a", "--classes", "0,1", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _one_line_exit_2(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if not line.startswith("serving on ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_an_unreachable_redis_is_one_line_and_exit_2(tmp_path):
    port = free_port()  # nothing listens there
    line = _one_line_exit_2(_serve(tmp_path, "--source", f"redis://127.0.0.1:{port}/0?stream=s"))
    assert line.startswith(f"error: Redis stream 's' at redis://127.0.0.1:{port}/0: cannot reach Redis ("), line
    assert "Connection refused" in line
    line = _one_line_exit_2(_serve(tmp_path, "--source", f"redis://u:secret@127.0.0.1:{port}/0?stream=s"))
    assert "redis://u:***@127.0.0.1" in line and "secret" not in line


def test_an_unreachable_nats_is_one_line_and_exit_2(tmp_path):
    port = free_port()
    r = _serve(tmp_path, "--source", f"nats://127.0.0.1:{port}?stream=S")
    line = _one_line_exit_2(r)
    assert line.startswith(f"error: NATS stream 'S' at nats://127.0.0.1:{port}: cannot reach NATS ("), line


def test_a_nats_stream_that_does_not_exist_is_one_line_and_exit_2(tmp_path, nats_url):
    line = _one_line_exit_2(_serve(tmp_path, "--source", f"{nats_url}?stream=NOPE"))
    assert line.startswith(f"error: NATS stream 'NOPE' at {nats_url}: NATS refused ("), line


def test_a_token_file_not_utf8_is_one_line_and_exit_2(tmp_path):
    token = tmp_path / "token"
    token.write_bytes(b"s3cr\xe9t\n")
    line = _one_line_exit_2(_serve(tmp_path, "--source", "http", "--token-file", token))
    assert line == f"error: {token}: the token file is not UTF-8 text (invalid continuation byte: byte 0xe9 at offset 4)"
    token.write_bytes(b"one\ntwo\n")
    line = _one_line_exit_2(_serve(tmp_path, "--source", "http", "--token-file", token))
    assert line == (f"error: {token}: the token holds a control character (a line break?); an Authorization header "
                    "cannot carry it")


def test_a_utf8_token_is_accepted_as_sent(served, tmp_path):
    token = tmp_path / "token"
    token.write_text("sécret\n", encoding="utf-8")
    svc = served("http", "--token-file", token).start()
    sent = {"Authorization": b"Bearer " + "sécret".encode()}
    assert httpx.post(svc.url + "/snapshot", headers=sent).status_code == 200
    assert httpx.post(svc.url + "/snapshot", headers={"Authorization": b"Bearer s\xe9cret"}).status_code == 401
    assert svc.stop() == 0


def _compressed(table, compression: str, file: bool = False) -> bytes:
    sink = pa.BufferOutputStream()
    new = pa.ipc.new_file if file else pa.ipc.new_stream
    with new(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=100_000)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("file", [False, True])
@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_the_size_an_arrow_body_decodes_to_is_read_from_its_metadata(compression, file):
    from streamtrain.serve.ipc_size import decoded_size

    n = 250_000
    table = pa.table({"f0": np.zeros(n, np.float32), "f1": np.arange(n), "y": pa.array(["a", "b"] * (n // 2)),
                      "c": pa.array(["x"] * n).dictionary_encode()})
    body = _compressed(table, compression, file)
    reader = pa.ipc.open_file(body) if file else pa.ipc.open_stream(body)
    assert decoded_size(body) == reader.read_all().get_total_buffer_size()
    for bad in (body[:50], b"\xff\xff\xff\xff" + b"\x7f" * 8, b"ARROW1" + bytes(20)):
        with pytest.raises(ValueError, match="its metadata cannot be read"):
            decoded_size(bad)


def test_a_small_compressed_body_of_too_many_rows_is_refused_before_it_is_decoded(http_svc):
    # 2.5M rows of zeros: a few kilobytes as sent, 42.5 MB decoded (the bound is --max-body-mb, 16 MiB)
    bomb = _compressed(pa.table({f: np.zeros(2_500_000, np.float32) for f in FEATURES} |
                                {"y": np.zeros(2_500_000, np.int8)}), "zstd")
    assert len(bomb) < 64 << 10
    before = http_svc.status()["rows_received"]
    for path in ("/learn", "/predict"):
        r = httpx.post(http_svc.url + path, content=bomb, headers={"content-type": ARROW}, timeout=30)
        assert r.status_code == 413, r.text
        assert "the rows decode to 42500000 bytes, more than the 16777216 allowed (--max-body-mb" in r.json()["error"]
    # the same rows in bodies within the bound are taken
    ok = _compressed(pa.table({f: np.zeros(100_000, np.float32) for f in FEATURES} |
                              {"y": np.zeros(100_000, np.int8)}), "zstd")
    assert httpx.post(http_svc.url + "/learn", content=ok, headers={"content-type": ARROW}).status_code == 202
    assert http_svc.wait_received(before + 100_000)["rows_received"] == before + 100_000
    _no_traceback(http_svc)


def test_predict_decides_from_the_decoded_size_whether_to_answer_on_the_event_loop():
    # A small compressed body of many rows is decompressed on a worker thread, not on the loop
    from streamtrain.serve.routes import INLINE_PREDICT_BYTES, _decodes_small

    few, many = ({f: np.full(n, 0.5, np.float32) for f in FEATURES} for n in (100, 10_000))
    small = _compressed(pa.table(many), "zstd")
    assert len(small) < INLINE_PREDICT_BYTES
    assert not _decodes_small(small, ARROW, "POST /predict")
    assert _decodes_small(_compressed(pa.table(few), "zstd"), ARROW, "POST /predict")
    assert _decodes_small(b"[]", None, "POST /predict") and _decodes_small(b"garbage", ARROW, "POST /predict")


def _lying_lengths(rows: int) -> bytes:
    """One row's stream whose batch and columns declare ``rows`` rows (its buffers hold one)."""
    import struct

    from streamtrain.serve import ipc_size as m

    sink = pa.BufferOutputStream()
    table = pa.table({**{f: pa.array([1.0]) for f in FEATURES}, "y": pa.array([1])})
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    body = bytearray(sink.getvalue().to_pybytes())
    data, offset = memoryview(body), 0
    while True:
        length, skip = m._metadata_length(data, offset)
        start = offset + skip
        meta = data[start:start + length]
        message = m._table(meta, struct.unpack_from("<I", meta, 0)[0])
        if meta[message(1)] == m._RECORD_BATCH:
            batch = m._table(meta, m._target(meta, message(2)))
            struct.pack_into("<q", body, start + batch(0), rows)  # RecordBatch.length
            at, n = m._vector(meta, batch(1))  # and every FieldNode's length
            for k in range(n):
                struct.pack_into("<q", body, start + at + 16 * k, rows)
            return bytes(body)
        offset += skip + length + m._body_length(meta)


def test_crafted_arrow_bodies_are_refused_not_crashing_or_decoding_past_the_bound(http_svc):
    # Found by the reviewing helper: each crashed the service, or decoded past --max-body-mb
    import struct

    n = 8_000_000  # 64 MB of float64 zeros, in a zstd file of a few kilobytes
    file_body = _compressed(pa.table({"f0": np.zeros(n), "y": np.zeros(n)}), "zstd", file=True)
    delta_sink = pa.BufferOutputStream()
    schema = pa.schema([("f0", pa.float64()), ("y", pa.dictionary(pa.int32(), pa.int64()))])
    with pa.ipc.new_stream(delta_sink, schema, options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)) as w:
        for i in range(3):
            y = pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array(np.arange(i + 1)))
            w.write_batch(pa.record_batch([pa.array([0.0]), y], schema=schema))
    cases = [
        (_lying_lengths(10_000_000), 400, "Buffer #1 too small"),  # read beyond its buffer: a crash before
        (b"\xff\xff\xff\xff\x00\x00\x00\x00" + file_body[8:], 400, "not an Arrow IPC stream"),  # a file as a stream
        (delta_sink.getvalue().to_pybytes(), 400, "delta dictionary"),  # memory quadratic in the deltas
    ]
    for body, status, words in cases:
        for path in ("/learn", "/predict"):
            r = httpx.post(http_svc.url + path, content=body, headers={"content-type": ARROW}, timeout=30)
            assert r.status_code == status and words in r.json()["error"], (path, words, r.text)
    _no_traceback(http_svc)


def test_a_file_whose_footer_lists_a_block_twice_is_refused_unread():
    # (each listing is decoded: a footer repeating one block thousands of times was quadratic to size)
    import struct

    from streamtrain.serve import ipc_size as m

    sink = pa.BufferOutputStream()
    table = pa.table({"f0": [0.0], "y": [0]})
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
        w.write_table(table)
    body = bytearray(sink.getvalue().to_pybytes())
    assert m.decoded_size(bytes(body)) > 0
    footer_at = len(body) - 10 - struct.unpack_from("<i", body, len(body) - 10)[0]
    footer = memoryview(body)[footer_at:len(body) - 10]
    at, count = m._vector(footer, m._table(footer, struct.unpack_from("<I", footer, 0)[0])(3))  # recordBatches
    assert count == 2
    struct.pack_into("<q", body, footer_at + at + 24, struct.unpack_from("<q", footer, at)[0])
    with pytest.raises(ValueError, match="its footer lists a block more than once"):
        m.decoded_size(bytes(body))
