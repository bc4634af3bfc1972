#!/usr/bin/env python3
"""The dense step against its arithmetic limit: how far the compiled minibatch step is from the
float32 sgemm peak, and how far it could get on one core.

    .venv/bin/python scripts/step_floor.py [--out benchmarks/step-floor.json]

On one core (BLAS limited to one thread; the allocator tuned as the command line tunes it), for
the 64 -> 64 -> 1 network of ``bench.py`` at batch 256 and 1024: the time of the step's two
matrix products alone (``X @ W1`` and ``X.T @ D``, numpy's sgemm), the time of a whole step
(``minibatch.step_batches``, plain SGD, sigmoid, 64 batches a call, best of 5), and the sgemm
peak of a 2048 x 2048 product on one core. Each is given in ``bench.py``'s units: FLOPs per
sample ``6 * (64 * 64 + 64)`` (the conventional count, which includes the input's gradient,
a product the first layer never needs: the step's products do two thirds of it) against two
cores' peak, taken as twice one core's (``bench.py`` measured 2.0x). The last figure,
"products alone", is what a step on one core would reach if everything but its two products
cost nothing: the most any one-core step can reach.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FLOPS_PER_SAMPLE = 6 * (64 * 64 + 64)  # (as bench.py counts them)


def _best(f, calls: int, repeats: int = 5) -> float:
    """The fastest mean seconds per call of ``calls`` calls, over ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "step-floor.json"))
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    from streamtrain._malloc import reuse_freed_memory
    from streamtrain.nn import minibatch

    reuse_freed_memory()  # (as the command line does: a 1024-row step's arrays are not mapped afresh)
    rng = np.random.default_rng(0)
    out = {"flops_per_sample": FLOPS_PER_SAMPLE, "batches": {}}
    with threadpool_limits(1):
        a = rng.standard_normal((2048, 2048), dtype=np.float32)
        b = a.copy()
        out["sgemm_one_core_flops"] = peak = 2 * 2048 ** 3 / _best(lambda: a @ b, 3, 3)
        for bs in (256, 1024):
            X = rng.standard_normal((bs, 64), dtype=np.float32)
            D = rng.standard_normal((bs, 64), dtype=np.float32)
            W = rng.standard_normal((64, 64), dtype=np.float32)
            forward, backward = _best(lambda: X @ W, 2000), _best(lambda: X.T @ D, 2000)
            params = {"W1": 0.1 * W, "b1": np.zeros(64, np.float32),
                      "W2": 0.1 * rng.standard_normal((64, 1), dtype=np.float32), "b2": np.zeros(1, np.float32)}
            n = 64
            XX = rng.standard_normal((bs * n, 64), dtype=np.float32)
            T = (rng.random(bs * n) > 0.5).astype(np.int64)
            S = np.zeros((n, 7), np.float32)
            S[:, 0] = 0.01

            def steps():
                minibatch.step_batches(params, XX, T, bs, S, 0.0, 0.0, "sigmoid", "binary")

            steps()  # (compiled, or read from numba's cache, before timing)
            step = _best(steps, 20) / n
            row = {"forward_product_s": forward, "backward_product_s": backward, "step_s": step,
                   "samples_per_s": bs / step, "of_two_cores_peak": FLOPS_PER_SAMPLE * bs / step / (2 * peak),
                   "products_alone_of_two_cores_peak": FLOPS_PER_SAMPLE * bs / (forward + backward) / (2 * peak),
                   "products_gflops": 2 * 2 * bs * 64 * 64 / (forward + backward) / 1e9}
            out["batches"][str(bs)] = row
            print(f"batch {bs}: products {forward * 1e6:.1f} + {backward * 1e6:.1f} us "
                  f"({row['products_gflops']:.0f} GFLOP/s), step {step * 1e6:.1f} us = {bs / step / 1e6:.2f}M samples/s "
                  f"= {row['of_two_cores_peak']:.2f} of two cores' peak ({2 * peak / 1e9:.0f} GFLOP/s); "
                  f"products alone {row['products_alone_of_two_cores_peak']:.2f}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
