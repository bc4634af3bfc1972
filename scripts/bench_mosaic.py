"""MosaicML ``streaming`` on the benchmark's data: loader throughput alone, and feeding the same
numpy step as the benchmark's numpy loop. Run by ``scripts/bench.py`` in an environment of its own
(``scripts/peers_env.sh`` makes ``.venv-peers``: mosaicml-streaming pins an older numpy than
streamtrain uses), as ``python bench_mosaic.py DATA.h5 WORKDIR [LIMIT]``; prints one JSON object.

The HDF5 file is converted to MDS shards (uncompressed, local) first, untimed; then one epoch of
``StreamingDataset(shuffle=True)`` through a ``DataLoader`` at batch 256, timed from the epoch's
first batch over ``LIMIT`` samples (default 100,000) or 60 s, with 0 and 2 workers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from bench import time_peer_loader  # the benchmark's numpy step and peer timing (this script's folder)


def main() -> None:
    import streaming
    import torch
    from streaming import MDSWriter, StreamingDataset

    src, work = sys.argv[1], Path(sys.argv[2])
    out = work / "mds"
    with h5py.File(src, "r") as f:
        X, y = f["X"][:], f["y"][:]
    t = time.perf_counter()
    with MDSWriter(out=str(out), columns={"x": "ndarray:float32:64", "y": "int64"}, compression=None,
                   size_limit="64mb") as w:
        for i in range(len(X)):
            w.write({"x": X[i], "y": int(y[i])})
    convert = time.perf_counter() - t
    del X, y
    results = {"versions": {"mosaicml-streaming": streaming.__version__, "torch": torch.__version__,
                            "numpy": np.__version__}, "convert_s": convert, "runs": []}
    torch.set_num_threads(1)
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000  # samples per run: this loader is slow
    for workers in (0, 2):
        for feed in (False, True):
            streaming.base.util.clean_stale_shared_memory()
            ds = StreamingDataset(local=str(out), shuffle=True, shuffle_seed=0, batch_size=256)
            loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
            results["runs"].append({"workers": workers, **time_peer_loader(loader, feed, limit)})
            print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
