"""Pieces of the click and service benchmarks (scripts/bench_clicks.py, scripts/bench_serve.py)
that the full runs rely on: the row-traffic limit, and the live producers of Redis, NATS and HTTP."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))


def test_the_row_limit_is_measured_for_each_kind_of_table():
    import bench_clicks

    limits = bench_clicks._row_limits(buckets=256, shared_bits=12, n=2_000)
    kinds = {f"{t}_{o}" for t in ("per_column", "crosses", "shared") for o in ("sgd", "adam")}
    assert set(limits) == kinds | {"copy_bytes_per_s"}
    assert all(np.isfinite(v) and v > 0 for v in limits.values())


@pytest.mark.slow
@pytest.mark.parametrize("source", ["redis-live", "nats-live", "http"])
def test_a_live_producer_feeds_the_source_while_the_service_trains_every_row(source):
    import bench_serve

    X, y = bench_serve.serve_rows(30_000)
    r = bench_serve.prefilled(source, X, y)
    assert r["source"] == source and r["rows_trained"] >= 30_000 - 30_000 % 256  # every whole batch
    assert r["serve_rows_per_s"] > 0 and r["train_rows_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["serve_rows_per_s"] / r["train_rows_per_s"])
