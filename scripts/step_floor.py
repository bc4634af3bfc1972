#!/usr/bin/env python3
"""The dense step against its arithmetic limit: how far the compiled minibatch step is from the
float32 sgemm peak, on one lane and on two.

    .venv/bin/python scripts/step_floor.py [--rounds 15] [--out benchmarks/step-floor.json]

For the 64 -> 64 -> 1 network of ``bench.py`` at batch 256 and 1024, in the same run, each
case's best of ``--rounds`` rounds, the cases interleaved (this machine's speed drifts by 20%
within minutes):

- the sgemm peak as ``bench.py`` measures it (``machine_limits``: a 2048 x 2048 product, BLAS on
  one core and on all), here in every round, its best kept (the highest peak: the fractions are
  the lowest);
- the step's two products alone, on one core (numpy's sgemm, BLAS one thread), in blocks of
  ``minibatch.BLOCK_ROWS`` rows as the step makes them: at the hidden layer's whole width
  (``X @ W1``, ``X.T @ D``) and, as the step makes them, in two halves of its columns
  (``minibatch.split``);
- ``minibatch.step_batches`` (plain SGD, sigmoid, 64 batches a call) on one lane and on two
  (BLAS one thread each, as the trainer runs it);
- ``Trainer.fit`` on the rows in memory, in storage order, unscaled (``bench.py``'s in-memory step
  row, what a library user runs), its epochs 2+, and with BLAS on one core (one lane).

Each is given in ``bench.py``'s units: FLOPs per sample ``6 * (64 * 64 + 64)`` (the conventional
count, which includes the input's gradient, a product the first layer never needs: the step's
products do two thirds of it) against the peak on all cores. "products alone" is what a step
on one core would reach if everything but its two products cost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FLOPS_PER_SAMPLE = 6 * (64 * 64 + 64)  # (as bench.py counts them)


def _seconds(f, calls: int) -> float:
    """Mean seconds per call of ``calls`` calls."""
    t = time.perf_counter()
    for _ in range(calls):
        f()
    return (time.perf_counter() - t) / calls


def _fit_rate(X, y, batch: int, one_lane: bool) -> float:
    """Samples/s of ``Trainer.fit``'s best epoch after the first (bench.py's in-memory step row)."""
    import streamtrain as st
    from streamtrain.data import decoder

    cores = decoder.cores_of_one
    if one_lane:  # (as on a machine of one core: the trainer grants one lane, BLAS then on one core)
        decoder.cores_of_one = lambda processes=1: 1
    try:
        t = st.Trainer(st.TrainConfig(hidden=64, activation="sigmoid", optimizer="sgd", lr_schedule="constant",
                                      epochs=3, batch_size=batch, lr=0.1, shuffle="none", scale="none",
                                      task="binary"))
        history = t.fit((X, y), log=None)
    finally:
        decoder.cores_of_one = cores
    return max(h["samples"] / h["seconds"] for h in history[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "step-floor.json"))
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from streamtrain._malloc import reuse_freed_memory
    from streamtrain.nn import minibatch

    reuse_freed_memory()  # (as the command line does: a 1024-row step's arrays are not mapped afresh)
    minibatch.load()  # (compiled, or read from numba's cache, and scipy's BLAS loaded before any limit)
    rng = np.random.default_rng(0)
    big = rng.random((2048, 2048), dtype=np.float32)
    all_cores = os.cpu_count() or 1
    peaks = {1: 0.0, all_cores: 0.0}
    X = rng.standard_normal((1 << 18, 64), dtype=np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    cases = {}
    R = minibatch.BLOCK_ROWS
    for bs in (256, 1024):
        Xb = X[:bs].copy()
        D = rng.standard_normal((bs, 64), dtype=np.float32)
        W = 0.1 * rng.standard_normal((64, 64), dtype=np.float32)
        halves = [np.ascontiguousarray(W[:, :32]), np.ascontiguousarray(W[:, 32:])]
        Dh = [np.ascontiguousarray(D[:, :32]), np.ascontiguousarray(D[:, 32:])]
        blocks = range(0, bs, minibatch.BLOCK_ROWS)  # (as the step makes them: blocks of rows, in cache)
        cases[bs, "products, whole width"] = (
            lambda Xb=Xb, W=W, D=D, blocks=blocks: [(Xb[a:a + R] @ W, Xb[a:a + R].T @ D[a:a + R])
                                                    for a in blocks], 200, 1)
        cases[bs, "products, two halves"] = (
            lambda Xb=Xb, h=halves, d=Dh, blocks=blocks: [(Xb[a:a + R] @ w, Xb[a:a + R].T @ e[a:a + R])
                                                          for a in blocks for w, e in zip(h, d)], 200, 1)
        n = 64
        XX, T = X[:bs * n], y[:bs * n]
        S = np.zeros((n, 7), np.float32)
        S[:, 0] = 0.01
        params = {"W1": W.copy(), "b1": np.zeros(64, np.float32),
                  "W2": 0.1 * rng.standard_normal((64, 1), dtype=np.float32), "b2": np.zeros(1, np.float32)}
        for lanes in (1, 2):
            cases[bs, f"step, {lanes} lane{'s' if lanes > 1 else ''}"] = (
                lambda p=params, XX=XX, T=T, bs=bs, S=S, lanes=lanes: minibatch.step_batches(
                    p, XX, T, bs, S, 0.0, 0.0, "sigmoid", "binary", lanes=lanes), 3, n)
    best = {k: float("inf") for k in cases}
    fits = {(bs, lanes): 0.0 for bs in (256, 1024) for lanes in (1, 2)}
    for r in range(args.rounds):
        for cores in peaks:  # (as bench.machine_limits measures it)
            with threadpool_limits(cores, user_api="blas"):
                big @ big
                peaks[cores] = max(peaks[cores], 2 * 2048 ** 3 / _seconds(lambda: big @ big, 2))
        time.sleep(0.5)  # (OpenBLAS's threads spin a while after a product: the second lane's core)
        with threadpool_limits(1, user_api="blas"):
            for k, (f, calls, batches) in cases.items():
                f()
                best[k] = min(best[k], _seconds(f, calls) / batches)
        if r < 8:  # (whole runs: fewer rounds)
            for bs, lanes in fits:
                fits[bs, lanes] = max(fits[bs, lanes], _fit_rate(X, y, bs, lanes == 1))
    peak = max(peaks.values())
    out = {"flops_per_sample": FLOPS_PER_SAMPLE, "sgemm_flops_by_cores": peaks, "rounds": args.rounds, "batches": {}}
    for bs in (256, 1024):
        row = {}
        for (b, name), s in best.items():
            if b == bs:
                rate = bs / s
                row[name] = {"seconds_per_batch": s, "samples_per_s": rate,
                             "of_peak": FLOPS_PER_SAMPLE * rate / peak}
        for lanes in (1, 2):
            rate = fits[bs, lanes]
            row[f"Trainer.fit in memory, {lanes} lane{'s' if lanes > 1 else ''}"] = {
                "samples_per_s": rate, "of_peak": FLOPS_PER_SAMPLE * rate / peak}
        out["batches"][str(bs)] = row
        for name, r in row.items():
            print(f"batch {bs:5d} {name:38s} {r['samples_per_s'] / 1e6:6.2f}M samples/s  {r['of_peak']:.2f} of the "
                  f"peak ({peak / 1e9:.0f} GFLOP/s)", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
