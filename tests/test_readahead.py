"""Reading a service's source ahead of training (``serve.sources.readahead``): the checkpoint's
source state is that of the rows handed to training, the queue keeps to its bound, and the
reader's failure reaches training."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamtrain.serve.rows import Columns
from streamtrain.serve.sources.base import Entry, Rejected, StreamSource
from streamtrain.serve.sources.landing import DirectorySource
from streamtrain.serve.sources.readahead import ReadAhead

FEATURES = ["a", "b"]


def _land(path, name, rows, seed):
    rng = np.random.default_rng(seed)
    table = pa.table({"a": rng.standard_normal(rows), "b": rng.standard_normal(rows), "y": rng.integers(0, 2, rows)})
    pq.write_table(table, path / f".{name}")
    (path / f".{name}").rename(path / name)
    time.sleep(0.01)  # (arrival order: the time of the rename)


def _until(check, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def landing(tmp_path):
    for i, rows in enumerate([100, 200, 300]):
        _land(tmp_path, f"part{i}.parquet", rows, i)
    source = DirectorySource(tmp_path, Columns(FEATURES, "y"), chunk_rows=1000)
    source.start(None, {})
    return source


def test_the_state_a_checkpoint_keeps_is_that_of_the_rows_handed_to_training(landing):
    ahead = ReadAhead(landing, max_bytes=1)  # one poll's pieces queued at a time
    ahead.begin()
    try:
        _until(lambda: ahead.queued_rows() == 100)
        assert landing.state()["done"] == ["part0.parquet"]
        assert ahead.state() == {"done": []}  # nothing trained yet
        first = ahead.poll(1.0)
        assert [(e.position, len(e.X)) for e in first] == [({"file": None, "row": 0}, 100)]
        assert ahead.state() == {"done": ["part0.parquet"]}
        _until(lambda: ahead.queued_rows() == 200)
        second = ahead.poll(1.0)
        assert second[0].where.endswith("part1.parquet rows 0-200")
        assert ahead.state() == {"done": ["part0.parquet", "part1.parquet"]}
    finally:
        ahead.close()


def test_training_takes_every_poll_queued_at_once_with_the_state_after_the_last(landing):
    # A training thread that lags behind takes everything read ahead in one hand-over: the
    # service then trains their batches in one compiled call.
    ahead = ReadAhead(landing, max_bytes=1 << 30)
    ahead.begin()
    try:
        _until(lambda: ahead.queued_rows() == 600)  # every file read ahead, a poll each
        assert ahead.state() == {"done": []}
        items = ahead.poll(1.0)
        assert [len(e.X) for e in items] == [100, 200, 300] and ahead.queued_rows() == 0
        assert ahead.state() == {"done": ["part0.parquet", "part1.parquet", "part2.parquet"]}
        assert ahead.poll(0.05) == [] and ahead.state() == {"done": ["part0.parquet", "part1.parquet",
                                                                       "part2.parquet"]}
    finally:
        ahead.close()


def test_reading_stops_while_the_queue_holds_its_bound(landing):
    ahead = ReadAhead(landing, max_bytes=1)  # one piece at a time
    ahead.begin()
    try:
        _until(lambda: ahead.queued_rows() == 100)
        time.sleep(0.3)
        assert ahead.queued_rows() == 100 and landing.state()["done"] == ["part0.parquet"]  # not read further
        assert len(ahead.poll(1.0)[0].X) == 100
        _until(lambda: ahead.queued_rows() == 200)
        time.sleep(0.3)
        assert landing.state()["done"] == ["part0.parquet", "part1.parquet"]
    finally:
        ahead.close()


class _Refusing(StreamSource):
    """A broker whose entries are all refused (each keeps its 1 KB payload for a dead letter)."""

    name = "refusing"

    def __init__(self):
        self.n = 0

    def poll(self, timeout):
        self.n += 1
        return [Rejected(self.n, f"entry {self.n}", "no rows", raw=(b"%d" % self.n, {b"junk": b"x" * 1024}))]


def test_refused_pieces_and_their_payloads_count_toward_the_bound():
    source = _Refusing()
    ahead = ReadAhead(source, max_bytes=100_000)  # (before: refused pieces weighed nothing, read without end)
    ahead.begin()
    try:
        _until(lambda: ahead.bytes >= 100_000)
        time.sleep(0.3)
        assert source.n <= 100_000 // 3000 + 1  # each about 1 KB of payload and 2 KB of its own
    finally:
        ahead.close()


class _Big(StreamSource):
    """A broker of 1 MB entries, one a poll, 24 in all."""

    name = "big"

    def __init__(self):
        self.n = 0

    def poll(self, timeout):
        if self.n == 24:
            time.sleep(timeout)
            return []
        self.n += 1
        return [Entry(self.n, np.zeros((4096, 64), np.float32), np.zeros(4096), f"entry {self.n}")]

    def state(self):
        return {"read": self.n}


def test_one_hand_over_to_training_is_bounded_by_bytes():
    # Training that lags takes what was read ahead in calls of at most HANDOVER_BYTES (8 MB):
    # between two it still publishes the model, checkpoints and answers.
    from streamtrain.serve.sources.base import HANDOVER_BYTES

    ahead = ReadAhead(_Big(), max_bytes=1 << 30)
    ahead.begin()
    try:
        _until(lambda: ahead.queued_rows() == 24 * 4096)
        sizes = []
        while ahead.queued_rows():
            items = ahead.poll(1.0)
            sizes.append(len(items))
            assert sum(e.X.nbytes for e in items) <= HANDOVER_BYTES
        assert sizes == [7, 7, 7, 3]  # (an entry weighs 1 MB of rows, 32 KB of labels and its own 2 KB)
        assert ahead.state() == {"read": 24}
    finally:
        ahead.close()


class _Failing(StreamSource):
    name = "failing"

    def __init__(self):
        self.polls, self.acked, self.rejected = 0, [], []

    def poll(self, timeout):
        self.polls += 1
        if self.polls == 1:
            return [Entry(1, np.zeros((2, 2), np.float32), np.zeros(2), "piece 1"),
                    Rejected(2, "piece 2", "piece 2: no rows")]
        raise ConnectionError("the broker went away")

    def ack(self, position):
        self.acked.append(position)

    def reject(self, item):
        self.rejected.append(item.where)


def test_the_readers_failure_is_raised_to_training_at_once_and_nothing_is_acknowledged_after():
    source = _Failing()
    ahead = ReadAhead(source, max_bytes=1 << 20)
    ahead._read()  # (the reader, run here: one poll queued, then its failure)
    assert ahead.failure is not None and len(ahead.batches) == 1
    with pytest.raises(ConnectionError, match="the broker went away"):  # a piece queued, not handed out
        ahead.poll(5.0)
    with pytest.raises(ConnectionError):  # after a lost claim, another service acknowledges
        ahead.ack(1)
    assert source.acked == []


def test_acknowledgements_and_refusals_reach_the_source_from_another_thread():
    source = _Failing()
    source.polls = -10**9  # (never fails)
    source.poll = lambda timeout: (time.sleep(timeout), [])[1]
    ahead = ReadAhead(source, max_bytes=1 << 20)
    ahead.begin()
    try:
        waits = []
        for position in range(20):
            started = time.perf_counter()
            ahead.ack(position)
            waits.append(time.perf_counter() - started)
        ahead.reject(Rejected(3, "piece 3", "no rows"))
        assert source.acked == list(range(20)) and source.rejected == ["piece 3"]
        # the reader lets them go first (a lock taken again at once starved them: 90 ms at the median)
        assert statistics.median(waits) < 0.03
    finally:
        ahead.close()
