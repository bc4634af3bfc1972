"""litdata (Lightning AI) on the benchmark's data: loader throughput alone, and feeding the same
numpy step as the benchmark's numpy loop. Run by ``scripts/bench.py`` in the peers' environment
(``scripts/peers_env.sh`` makes ``.venv-peers``), as ``python bench_litdata.py DATA.h5 WORKDIR
[LIMIT]``; prints one JSON object.

The HDF5 file is converted to litdata's chunked format first (``litdata.optimize``, local,
uncompressed, 64 MB chunks; untimed in the throughput figures, reported apart); then
``StreamingDataset(shuffle=True)`` through its ``StreamingDataLoader`` at batch 256, timed from
the epoch's first batch over ``LIMIT`` samples (default 200,000) or 60 s, with 0 and 2 workers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from bench import time_peer_loader  # the benchmark's numpy step and peer timing (this script's folder)

CHUNK = 16384  # rows read from the HDF5 file per conversion task


def _rows(task):
    """litdata's conversion function: one task's rows as samples (x: 64 float32, y: int)."""
    path, start = task
    with h5py.File(path, "r") as f:
        X, y = f["X"][start:start + CHUNK], f["y"][start:start + CHUNK]
    for i in range(len(X)):
        yield {"x": X[i], "y": int(y[i])}

def main() -> None:
    import litdata
    import torch
    from litdata import StreamingDataLoader, StreamingDataset, optimize

    src, work = sys.argv[1], Path(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    out = work / "litdata"
    with h5py.File(src, "r") as f:
        n = len(f["y"])
    os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(work / "cache"))  # not ~/.lightning or /cache
    os.environ.setdefault("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(work / "cache-data"))
    t = time.perf_counter()
    optimize(fn=_rows, inputs=[(src, s) for s in range(0, n, CHUNK)], output_dir=str(out), chunk_bytes="64MB",
             num_workers=2, verbose=False)
    convert = time.perf_counter() - t
    results = {"versions": {"litdata": litdata.__version__, "torch": torch.__version__, "numpy": np.__version__},
               "convert_s": convert, "runs": []}
    torch.set_num_threads(1)
    for workers in (0, 2):
        for feed in (False, True):
            ds = StreamingDataset(input_dir=f"local:{out}", cache_dir=str(work / f"cache-{workers}-{feed}"),
                                  shuffle=True, seed=0)
            loader = StreamingDataLoader(ds, batch_size=256, num_workers=workers)
            results["runs"].append({"workers": workers, **time_peer_loader(loader, feed, limit)})
            print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
