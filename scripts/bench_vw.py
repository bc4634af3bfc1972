"""Vowpal Wabbit ``--nn 64`` (online learning, one pass, logistic loss) on the benchmark's data, in
the peers' environment (``scripts/peers_env.sh``), as ``python bench_vw.py DATA.h5 WORKDIR [ROWS]``;
prints one JSON object. The rows are written in VW's text format first (untimed); the time is
VW's own driver reading that file and learning, as its users run it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import h5py


def main() -> None:
    import vowpalwabbit

    src, work = sys.argv[1], Path(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    with h5py.File(src, "r") as f:
        X, y = f["X"][:n], f["y"][:n]
    path = work / "rows.vw"
    with open(path, "w") as fh:
        for row, t in zip(X, y):
            fh.write(("1" if t else "-1") + " |f " + " ".join(f"{j}:{v:.7g}" for j, v in enumerate(row)) + "\n")
    t = time.perf_counter()
    vw = vowpalwabbit.Workspace(f"--nn 64 --loss_function logistic --quiet --passes 1 -d {path}")
    vw.run_parser()
    vw.finish()
    print(json.dumps({"samples": len(X), "samples_per_s": len(X) / (time.perf_counter() - t),
                      "version": vowpalwabbit.__version__}))


if __name__ == "__main__":
    main()
