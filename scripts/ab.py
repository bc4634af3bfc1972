#!/usr/bin/env python3
"""Training speed of a git revision against the working tree, interleaved in one run (an A/B).

    .venv/bin/python scripts/ab.py REV [--rows 1000000] [--reps 3]

Each case trains in a fresh process that imports streamtrain from either a worktree of REV
or this checkout; the two alternate, and the best of ``--reps`` runs of each is compared
(this machine's speed drifts by tens of percent between runs, less between neighbours).
Library cases (``Trainer.fit``, no checkpoint directory): batch 256 with window shuffle from
uncompressed HDF5, gzip HDF5, Zarr and Parquet; batch 1 from uncompressed HDF5 without and
with a progress bar. Command cases, as users run it and as scripts/bench.py's headline rows
do: ``streamtrain train FILE --batch-size B --hidden 64 --epochs 2 --checkpoint-dir DIR`` (a
new directory per run, stdout and stderr on a pseudo-terminal so the progress bar draws) at
batch 256 from each format and batch 1 from uncompressed HDF5; compared on the command's own
figure (metrics.jsonl, epoch 2) and on its wall time. Service cases: ``streamtrain serve`` at
batch 256 fed by each source (HTTP, Redis, NATS, a landing directory) as scripts/bench_serve.py
feeds it (``--serve-rows`` rows; rows trained per second; skipped with ``--serve-rows 0``; only
these with ``--serve-only``), both with the textbook's step (``SERVE_RECIPE``: the same work
whatever either revision's defaults are).
Writes ``benchmarks/ab.json`` (``ab-serve.json`` with ``--serve-only``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import cli_train  # sibling scripts: the benchmark's command cases, its service runs
from bench_serve import SOURCES, serve_once, serve_rows

ROOT = Path(__file__).resolve().parent.parent
SERVE_RECIPE = ["--optimizer", "sgd", "--activation", "sigmoid", "--lr-schedule", "constant"]
SCRATCH = ROOT / "benchmarks" / "scratch"

# One training run; prints the last epoch's samples/s. Works with every streamtrain since the
# compiled step (only the progress bar's module moved).
CODE = """
import io, os, sys
import streamtrain as st
path, batch, bar = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "bar"
hooks = []
if bar:
    try:
        from streamtrain.train.hooks import ProgressBar
    except ImportError:
        from streamtrain.callbacks import ProgressBar
    hooks = [ProgressBar(file=io.StringIO())]
from streamtrain._malloc import reuse_freed_memory
reuse_freed_memory()
t = st.Trainer(st.TrainConfig(hidden=64, epochs=2, batch_size=batch, lr=0.1 if batch > 1 else 0.01, task="binary"))
h = t.fit(path, callbacks=hooks, log=None)[-1]
print(os.path.dirname(st.__file__), h["samples"] / h["seconds"])
"""


def rate(tree: Path, path: Path, batch: int, bar: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # Run in the tree: ``python -c`` puts the working directory first on sys.path, before
    # PYTHONPATH, so run from this checkout both sides would import this checkout.
    out = subprocess.run([sys.executable, "-c", CODE, str(path), str(batch), "bar" if bar else "plain"],
                         capture_output=True, text=True, env=env, check=True, cwd=tree)
    where, speed = out.stdout.split()[-2:]
    if Path(where).resolve().parent != tree.resolve():
        raise SystemExit(f"ab.py: the run meant for {tree} imported streamtrain from {where}")
    return float(speed)


def command(tree: Path) -> list[str]:
    """The streamtrain command that runs ``tree``'s code: the console script beside this
    interpreter (its PYTHONPATH names the tree), or where the tree predates its entry module,
    its click group."""
    script = Path(sys.executable).with_name("streamtrain")
    if script.exists() and (tree / "streamtrain" / "entry.py").exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from streamtrain.cli import cli; sys.argv[0] = 'streamtrain'; cli()"]


def check_imports(tree: Path) -> None:
    """The command run with PYTHONPATH=tree imports the tree's streamtrain (not the installed one):
    checked from outside the tree, as the console script starts."""
    out = subprocess.run([sys.executable, "-c", "import streamtrain; print(streamtrain.__file__)"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=SCRATCH, check=True)
    where = Path(out.stdout.strip())
    if where.resolve().parent.parent != tree.resolve():
        raise SystemExit(f"ab.py: the command meant for {tree} would import streamtrain from {where}")


def cli_rate(tree: Path, path: Path, batch: int) -> dict:
    """The command in ``tree``: its epoch 2 (metrics.jsonl) and its wall-time rate."""
    r = cli_train(path, batch, 2, command=command(tree), env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    return {"epochs": r["epochs_rate"], "wall": r["wall_rate"], "stderr": r["stderr"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--serve-rows", type=int, default=200_000)
    ap.add_argument("--serve-only", action="store_true", help="only the service's cases")
    args = ap.parse_args()
    from streamtrain import make_data

    SCRATCH.mkdir(parents=True, exist_ok=True)
    files = {"hdf5": ("ab.h5", None), "hdf5-gzip": ("ab-gzip.h5", "gzip"), "zarr-zstd": ("ab.zarr", "zstd"),
             "parquet-snappy": ("ab.parquet", "snappy")}
    paths = {}
    for name, (fname, codec) in files.items():
        paths[name] = SCRATCH / fname
        if not paths[name].exists() and not args.serve_only:
            make_data(paths[name], rows=args.rows, features=64, chunk_rows=16384, compression=codec or "none")
    old = SCRATCH / "ab-old"
    if old.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.rev], cwd=ROOT, check=True,
                   capture_output=True)
    cases = [(name, 256, False) for name in files] + [("hdf5", 1, False), ("hdf5", 1, True)]
    cli_cases = [(name, 256) for name in files] + [("hdf5", 1)]
    if args.serve_only:
        cases, cli_cases = [], []
    results, cli_results, serve_results = [], [], []
    try:
        for tree in (old, ROOT):  # compile (or load numba's cache) once per tree
            check_imports(tree)
            if not args.serve_only:
                rate(tree, paths["hdf5"], 1, False)
                cli_rate(tree, paths["hdf5"], 256)
        for name, batch, bar in cases:
            a = b = 0.0
            for _ in range(args.reps):
                a = max(a, rate(old, paths[name], batch, bar))
                b = max(b, rate(ROOT, paths[name], batch, bar))
            results.append({"format": name, "batch_size": batch, "progress_bar": bar, "rev": a, "tree": b,
                            "ratio": b / a})
            print(f"{name:15s} batch {batch:4d} {'bar' if bar else '   '}  {args.rev}: {a:12,.0f}/s   "
                  f"tree: {b:12,.0f}/s   ratio {b / a:.3f}", flush=True)
        for name, batch in cli_cases:
            a, b = {"epochs": 0.0, "wall": 0.0}, {"epochs": 0.0, "wall": 0.0}
            for _ in range(args.reps):
                for best, tree in ((a, old), (b, ROOT)):
                    r = cli_rate(tree, paths[name], batch)
                    best.update({k: max(best[k], r[k]) for k in ("epochs", "wall")}, stderr=r["stderr"])
            cli_results.append({"format": name, "batch_size": batch, "stderr": b["stderr"], "rev": a["epochs"],
                                "tree": b["epochs"], "ratio": b["epochs"] / a["epochs"], "rev_wall": a["wall"],
                                "tree_wall": b["wall"], "wall_ratio": b["wall"] / a["wall"]})
            print(f"{name:15s} batch {batch:4d} cli  {args.rev}: {a['epochs']:12,.0f}/s   tree: {b['epochs']:12,.0f}/s"
                  f"   ratio {b['epochs'] / a['epochs']:.3f}; whole command {a['wall']:10,.0f}/s vs "
                  f"{b['wall']:10,.0f}/s, ratio {b['wall'] / a['wall']:.3f}", flush=True)
        if args.serve_rows:
            X, y = serve_rows(args.serve_rows)
        for source in SOURCES if args.serve_rows else ():
            a = b = 0.0
            for _ in range(args.reps):
                a = max(a, serve_once(source, X, y, command(old), {**os.environ, "PYTHONPATH": str(old)},
                                      SERVE_RECIPE)["rows_per_s"])
                b = max(b, serve_once(source, X, y, command(ROOT), {**os.environ, "PYTHONPATH": str(ROOT)},
                                      SERVE_RECIPE)["rows_per_s"])
            serve_results.append({"source": source, "rows": args.serve_rows, "rev": a, "tree": b, "ratio": b / a})
            print(f"serve {source:9s} batch  256      {args.rev}: {a:12,.0f}/s   tree: {b:12,.0f}/s   ratio {b / a:.3f}",
                  flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(old, ignore_errors=True)
    out = {"rev": args.rev, "rows": args.rows, "reps": args.reps, "cases": results, "cli_cases": cli_results,
           "serve_cases": serve_results, "serve_recipe": SERVE_RECIPE,
           "cli_command": "streamtrain train FILE --batch-size B --hidden 64 --epochs 2 --checkpoint-dir DIR"}
    if results:
        bar = next(r for r in results if r["progress_bar"])["tree"]
        plain = next(r for r in results if r["batch_size"] == 1 and not r["progress_bar"])["tree"]
        print(f"batch 1 with the progress bar / without it (tree): {bar / plain:.3f}")
        out["batch1_bar_over_plain"] = bar / plain
    # (a run of the service's cases alone keeps the whole A/B's file)
    name = "ab-serve.json" if args.serve_only else "ab.json"
    (ROOT / "benchmarks" / name).write_text(json.dumps(out, indent=2) + "\n")

if __name__ == "__main__":
    main()
