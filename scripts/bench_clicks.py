#!/usr/bin/env python3
"""The click-log benchmark: streamtrain against Vowpal Wabbit on ``make-data --kind clicks``.

    .venv/bin/python scripts/bench_clicks.py [--rows 1000000] [--vw-python .venv-peers/bin/python]

A click log (13 integer columns, 26 Zipf categorical columns up to 10^7 levels, a time) is
written once; the last of its 7 days is held out. streamtrain trains as users run it, one
command with a checkpoint directory and the default progress reporting (three ways: a table per
column, with crosses, one shared table of ``2**vw_bits`` rows as VW's ``-b``, and online at batch
size 1 with SGD, as VW learns)
(``streamtrain train train.parquet --label click --hash-buckets B --epochs 1``: the categorical
columns hashed into B rows each, entering as codes that select first-layer rows; lazy Adam),
then ``evaluate`` on the held-out day. Vowpal Wabbit (``--nn 64``, ``-b 22``, logistic loss, one
pass; and linear, for reference) reads the same rows in its text format (written first, untimed)
and predicts the same day; scikit-learn's FeatureHasher with SGDClassifier and MLPClassifier
(``partial_fit``) read the same Parquet file.
Both are timed end to end as their users run them (each reads its own file); rows/s is training
rows over that time. Writes ``benchmarks/clicks.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The pairs whose values interact in the hidden model (streamtrain.clicks.PAIRS), as a user who
# knew them would cross them; Vowpal Wabbit runs without crosses (its -q crosses namespaces).
CROSSES = "c1:c2,c3:c4,c5:c10,c6:c13"
BIN = Path(sys.executable).with_name("streamtrain")
# Online learning, as Vowpal Wabbit learns: one SGD step per row (the compiled per-sample loop over
# codes); 0.03 was the best of 0.003, 0.01, 0.03 and 0.1 on a 10% hold-out of 200,000 rows.
ONLINE = ["--batch-size", "1", "--optimizer", "sgd", "--lr", "0.03"]

VW_SCRIPT = r"""
import json, sys, time
import vowpalwabbit
train, test, preds, bits = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
t = time.perf_counter()
nn = "" if sys.argv[5] == "linear" else "--nn 64 "
vw = vowpalwabbit.Workspace(f"{nn}-b {bits} --loss_function logistic --quiet --passes 1 -d {train} -f {preds}.model")
vw.run_parser()
vw.finish()
fit = time.perf_counter() - t
vw = vowpalwabbit.Workspace(f"-t -i {preds}.model --quiet --link logistic -d {test} -p {preds}")
vw.run_parser()
vw.finish()
print(json.dumps({"seconds": fit}))
"""


# PyTorch's recipe for a click log (as its docs and DLRM-style examples build it): each categorical
# column hashed into the same number of buckets as streamtrain's --hash-buckets, the 26 indices of a
# row one bag of nn.EmbeddingBag(mode="sum", sparse=True) (the first layer's categorical part),
# nn.Linear for the 13 integer columns (as log counts), ReLU, nn.Linear to the logit; SparseAdam for
# the table, Adam for the rest, batch 256, one pass. A DataLoader over an IterableDataset reads the
# same Parquet file in blocks of 65,536 rows, hashes them vectorised (pandas' hash_array) and yields
# batches; num_workers 0 and 1 are tried and the best kept. Timed as a user's script runs, from the
# model's making (its table's initial draw) to the model and optimisers' state saved, as
# streamtrain's command draws its table and writes its checkpoint; the loop alone is kept too.
TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd, pyarrow.compute as pc, pyarrow.parquet as pq, torch
train, test, out, buckets, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
torch.set_num_threads(1)
COLS, HIDDEN, BATCH = 26, 64, 256

def block(b):
    nums = np.column_stack([np.log1p(np.maximum(np.nan_to_num(
        b.column(f"i{j}").to_numpy(zero_copy_only=False).astype(np.float64)), 0)) for j in range(1, 14)])
    idx = np.empty((b.num_rows, COLS), np.int64)
    for j in range(COLS):
        v = pc.fill_null(b.column(f"c{j + 1}"), "").to_numpy(zero_copy_only=False)
        idx[:, j] = (pd.util.hash_array(v, categorize=False) % np.uint64(buckets)).astype(np.int64) + j * buckets
    return (torch.from_numpy(nums.astype(np.float32)), torch.from_numpy(idx),
            torch.from_numpy(b.column("click").to_numpy().astype(np.float32)))

class Blocks(torch.utils.data.IterableDataset):
    def __init__(self, path, batch):
        self.path, self.batch = path, batch
    def __iter__(self):
        for b in pq.ParquetFile(self.path).iter_batches(batch_size=65536):
            X, I, y = block(b)
            for s in range(0, len(y), self.batch):
                yield X[s:s + self.batch], I[s:s + self.batch], y[s:s + self.batch]

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.EmbeddingBag(COLS * buckets, HIDDEN, mode="sum", sparse=True)
        torch.nn.init.normal_(self.table.weight, std=0.01)
        self.dense = torch.nn.Linear(13, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, 1)
    def forward(self, X, I):
        return self.out(torch.relu(self.dense(X) + self.table(I))).squeeze(1)

start = time.perf_counter()  # (from the model's making: its table's initial draw is work streamtrain's row does too)
net = Net()
sparse = torch.optim.SparseAdam(list(net.table.parameters()), lr=1e-3)
dense = torch.optim.Adam(list(net.dense.parameters()) + list(net.out.parameters()), lr=1e-3)
loss_fn = torch.nn.BCEWithLogitsLoss()
t, rows = time.perf_counter(), 0
for X, I, y in torch.utils.data.DataLoader(Blocks(train, BATCH), batch_size=None, num_workers=workers):
    sparse.zero_grad(); dense.zero_grad()
    loss = loss_fn(net(X, I), y)
    loss.backward()
    sparse.step(); dense.step()
    rows += len(y)
loop = time.perf_counter() - t
# (saved as a user's script saves a run it can resume: the model and both optimisers' state)
torch.save({"model": net.state_dict(), "sparse": sparse.state_dict(), "dense": dense.state_dict()}, out + ".pt")
fit = time.perf_counter() - start
with torch.no_grad():
    p = np.concatenate([torch.sigmoid(net(X, I)).numpy() for X, I, _ in Blocks(test, 65536)])
np.save(out, p)
print(json.dumps({"seconds": fit, "loop_seconds": loop, "rows": rows}))
"""


# scikit-learn's recipe for a click log: FeatureHasher over "column=value" strings (the integers
# as log counts, as VW's rows have them), then partial_fit on each block of rows read from the
# same Parquet file, timed end to end (reading and hashing included). MLPClassifier updates its
# whole first layer (and Adam's moments) at every step: it gets fewer bits and a time limit, and
# its rows/s is over the rows it reached. SGDClassifier's settings were the best log loss of six
# (its defaults, constant rates 0.003 and 0.01, invscaling, adaptive, alpha 1e-5) on 200,000 rows;
# its defaults (the "optimal" rate) gave a log loss of 0.88.
SK_SCRIPT = r"""
import json, sys, time
import numpy as np, pyarrow.compute as pc, pyarrow.parquet as pq, scipy.sparse as sp
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import SGDClassifier
from sklearn.neural_network import MLPClassifier
kind, train, test, out, bits, limit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
hasher = FeatureHasher(n_features=1 << bits, input_type="string", alternate_sign=False)
def features(batch):
    cats = [pc.fill_null(batch.column(f"c{j}"), "").to_pylist() for j in range(1, 27)]
    tokens = [[f"c{j + 1}={v}" for j, v in enumerate(row) if v] for row in zip(*cats)]
    nums = np.column_stack([np.log1p(np.nan_to_num(batch.column(f"i{j}").to_numpy(zero_copy_only=False)))
                            for j in range(1, 14)])
    return sp.hstack([hasher.transform(tokens), sp.csr_matrix(nums)], format="csr")
# (random_state: each partial_fit call shuffles its rows; seeded, the figures repeat)
model = (SGDClassifier(loss="log_loss", alpha=1e-5, learning_rate="constant", eta0=0.01, random_state=0)
         if kind == "sgd" else
         MLPClassifier(hidden_layer_sizes=(64,), batch_size=256, learning_rate_init=0.003, random_state=0))
t, rows = time.perf_counter(), 0
for batch in pq.ParquetFile(train).iter_batches(batch_size=10_000 if kind == "sgd" else 1024):
    X, y = features(batch), batch.column("click").to_numpy()
    model.partial_fit(X, y, classes=[0, 1])
    rows += len(y)
    if time.perf_counter() - t > limit:
        break
fit = time.perf_counter() - t
p = np.concatenate([model.predict_proba(features(b))[:, 1] for b in pq.ParquetFile(test).iter_batches(batch_size=10_000)])
np.save(out, p)
print(json.dumps({"seconds": fit, "rows": rows}))
"""


def _vw_text(source: Path, path: Path, block: int = 200_000) -> None:
    """The Parquet file's rows in VW's format: the label (1/-1), integers as log counts in namespace
    i, categories in c; written a block of rows at a time (numpy's fixed-width strings of 10M rows
    filled 23 GB)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with open(path, "w") as out:
        for t in pq.ParquetFile(source).iter_batches(batch_size=block):
            n = t.num_rows
            label = np.where(t.column("click").to_numpy() > 0, "1", "-1")
            parts = [label, np.full(n, " |i")]
            for j in range(1, 14):
                v = t.column(f"i{j}").to_numpy(zero_copy_only=False)
                ok = ~np.isnan(v)
                s = np.where(ok, np.char.add(f" i{j}:", np.char.mod("%.4g", np.log1p(np.where(ok, v, 0)))), "")
                parts.append(s)
            parts.append(np.full(n, " |c"))
            for j in range(1, 27):
                col = pc.fill_null(t.column(f"c{j}"), "").to_numpy(zero_copy_only=False).astype(str)
                parts.append(np.where(col != "", np.char.add(f" c{j}=", col), ""))
            lines = parts[0]
            for q in parts[1:]:
                lines = np.char.add(lines, q)
            out.write("\n".join(lines.tolist()) + "\n")


class _PeakMemory:
    """The peak memory of a process and its descendants (a forked checkpoint writer among them),
    sampled every quarter second: the sum of their proportional set sizes, which counts a page
    that several of them share once (their resident sizes would count it in each)."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self, pid: int) -> list[int]:
        out = [pid]
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    out += self._tree(int(child))
        except OSError:
            pass
        return out

    def _run(self) -> None:
        while not self._done.wait(0.25):
            total = 0
            for pid in self._tree(self.pid):
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        """The peak in KiB."""
        self._done.set()
        self._thread.join()
        return self.peak


def _peer(cmd: list[str]) -> tuple[dict, float]:
    """A peer's script run as a process of its own: the JSON of its last line, and its peak MB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = _PeakMemory(proc.pid)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(err)
    return json.loads(out.strip().splitlines()[-1]), peak.stop() / 1024


def _metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, p))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--buckets", type=int, default=1 << 16, help="streamtrain's hash buckets per column")
    ap.add_argument("--vw-bits", type=int, default=22)
    ap.add_argument("--vw-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--mlp-bits", type=int, default=18, help="MLPClassifier's hashed features (bits)")
    ap.add_argument("--mlp-seconds", type=float, default=120.0, help="MLPClassifier's time limit")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each streamtrain row, the fastest kept")
    ap.add_argument("--only", default="", help="run these streamtrain rows alone (comma-separated names), "
                    "then the peers")
    ap.add_argument("--peers", default="sklearn_sgd,sklearn_mlp,torch,vw,vw_linear",
                    help="the peers to run (comma-separated; a 10M-row run may keep the slow ones out)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "clicks.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-clicks-"))
    try:
        _run(args, work)
    finally:  # (gigabytes of data, checkpoints and predictions)
        shutil.rmtree(work, ignore_errors=True)


def _row_limits(buckets: int, shared_bits: int, n: int = 200_000) -> dict:
    """The machine's limit for the sparse step's memory traffic, measured here: samples/s of a
    compiled loop that only moves the table rows a step touches. Per sample it sums the rows of
    the sample's codes (the forward gather) and adds a vector into each (the update's scatter),
    in 1 table (SGD) or 3 (lazy Adam: the weights and both moments), on one core (the step's),
    asking for the next sample's rows while it works (as streamtrain's compiled loops do).
    The codes follow the click log's Zipf laws, hashed into the tables as the features are: per
    column, 26 tables of ``buckets`` rows (and 30 with the 4 crosses), or one shared table of
    ``2**shared_bits`` rows. Also the copy bandwidth (bytes/s), for the bytes the step moves."""
    import numba

    from streamtrain.clicks import PAIRS, _mix, levels
    from streamtrain.nn.sparse_compiled import _prefetch_row

    @numba.njit(nogil=True)
    def touch(tables, rows):  # pragma: no cover - compiled
        width = tables.shape[2]
        h = np.zeros(width, np.float32)
        for i in range(rows.shape[0]):
            if i + 1 < rows.shape[0]:  # (the next sample's rows asked for meanwhile, as streamtrain's loops do)
                for c in range(rows.shape[1]):
                    for t in range(tables.shape[0]):
                        _prefetch_row(tables[t], rows[i + 1, c])
            h[:] = 0.0
            for c in range(rows.shape[1]):
                r = rows[i, c]
                for t in range(tables.shape[0]):
                    for m in range(width):
                        h[m] += tables[t, r, m]
            for m in range(width):
                h[m] *= np.float32(1e-9)
            for c in range(rows.shape[1]):
                r = rows[i, c]
                for t in range(tables.shape[0]):
                    for m in range(width):
                        tables[t, r, m] += h[m]

    rng = np.random.default_rng(0)
    sizes = levels(10_000_000)
    values = [(rng.zipf(1.15, n) - 1) % sizes[j] for j in range(26)]
    cols = [v + ((j + 1) << 40) for j, v in enumerate(values)]
    cols += [values[a] * 1_000_003 + values[b] + ((27 + k) << 40) for k, (a, b) in enumerate(PAIRS)]
    hashed = [_mix(c.astype(np.uint64)) for c in cols]
    per_column = np.column_stack([h % np.uint64(buckets) + np.uint64(j * buckets) for j, h in enumerate(hashed)])
    shared = np.column_stack(hashed[:26]) % np.uint64(1 << shared_bits)
    out = {}
    for name, rows, n_rows in (("per_column", per_column[:, :26], 26 * buckets),
                               ("crosses", per_column, 30 * buckets), ("shared", shared, 1 << shared_bits)):
        rows = rows.astype(np.int64)
        for k, optimizer in ((1, "sgd"), (3, "adam")):
            tables = np.full((k, n_rows, 64), 0.01, np.float32)
            touch(tables, rows[:1000])  # (compiles)
            seconds = min(_timed(touch, tables, rows) for _ in range(3))
            out[f"{name}_{optimizer}"] = n / seconds
            del tables
    big = np.ones(1 << 26, np.float32)  # 256 MB
    copy = np.empty_like(big)
    out["copy_bytes_per_s"] = max(2 * big.nbytes / _timed(np.copyto, copy, big) for _ in range(3))
    return out


def _save(out: str, result: dict) -> None:
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


def _timed(f, *args) -> float:
    t = time.perf_counter()
    f(*args)
    return time.perf_counter() - t


# Each streamtrain row's (limit in _row_limits, tables it updates: 1 for SGD, 3 for lazy Adam).
_LIMIT_OF = {"streamtrain": ("per_column_adam", 3), "streamtrain_crosses": ("crosses_adam", 3),
             "streamtrain_shared": ("shared_adam", 3), "streamtrain_online": ("per_column_sgd", 1),
             "streamtrain_online_l2": ("per_column_sgd", 1), "streamtrain_online_adam": ("per_column_adam", 3),
             "streamtrain_copied_snapshots": ("per_column_adam", 3)}


def _split_last_day(src: Path, train_path: Path, test_path: Path) -> tuple[int, int]:
    """Split a click log into its last day (held out) and the days before, a batch at a time (a
    100M-row log does not fit in memory); returns the two files' row counts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    times = pq.read_table(src, columns=["time"]).column("time")
    cut = pc.strptime(str(pc.max(times).as_py().date()), "%Y-%m-%d", "ms")
    del times
    source = pq.ParquetFile(src)
    counts = [0, 0]
    with pq.ParquetWriter(train_path, source.schema_arrow) as train, \
            pq.ParquetWriter(test_path, source.schema_arrow) as test:
        for batch in source.iter_batches(batch_size=100_000):
            held = pc.greater_equal(batch.column("time"), cut)
            for i, (writer, mask) in enumerate(((train, pc.invert(held)), (test, held))):
                part = batch.filter(mask)
                if part.num_rows:
                    writer.write_batch(part)
                    counts[i] += part.num_rows
    return counts[0], counts[1]


def _run(args, work: Path) -> None:
    import pyarrow.parquet as pq

    from streamtrain.clicks import make_clicks

    t = time.perf_counter()
    make_clicks(work / "all.parquet", args.rows, seed=0)
    made_s = time.perf_counter() - t
    n_train, n_test = _split_last_day(work / "all.parquet", work / "train.parquet", work / "test.parquet")
    (work / "all.parquet").unlink()
    y_test = pq.read_table(work / "test.parquet", columns=["click"]).column("click").to_numpy()
    result = {"rows": args.rows, "train_rows": n_train, "test_rows": n_test, "machine": os.cpu_count(),
              "data_seconds": made_s, "train_file_mb": (work / "train.parquet").stat().st_size / 2**20,
              "streamtrain": {}, "vw": {}}

    batch = ["--batch-size", "256"]
    # (the last: the first command again with its checkpoints copied before they are written, not
    # written by a forked process: what the fork saves in memory)
    for name, extra, env in (("streamtrain", batch, {}), ("streamtrain_crosses", [*batch, "--cross", CROSSES], {}),
                             ("streamtrain_shared", [*batch, "--hash-bits", str(args.vw_bits)], {}),
                             ("streamtrain_online", ONLINE, {}),
                             # (plain SGD's L2 over the tables: their decay lazy, as VW's --l2)
                             ("streamtrain_online_l2", [*ONLINE, "--l2", "1e-6"], {}),
                             # (Adam's steps per row: the compiled loop of lazy Adam, its default rate)
                             ("streamtrain_online_adam", ["--batch-size", "1", "--optimizer", "adam"], {}),
                             ("streamtrain_copied_snapshots", batch, {"STREAMTRAIN_FORK_SNAPSHOT_MB": "1e9"})):
        if args.only and name not in args.only.split(","):
            continue
        # (run --repeats times, each into a new directory, the fastest kept: PyTorch's row is the
        # faster of two runs too, and on this machine runs of the same work differ by 20-40%)
        runs = []
        for i in range(args.repeats):
            run = work / f"{name}-{i}"
            cmd = [str(BIN), "train", str(work / "train.parquet"), "--label", "click", "--hash-buckets",
                   str(args.buckets), "--epochs", "1", *extra, "--checkpoint-dir", str(run)]
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, **env})
            peak = _PeakMemory(proc.pid)
            err = proc.stderr.read()
            proc.wait()
            seconds = time.perf_counter() - t
            if proc.returncode:
                raise SystemExit(err)
            epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            runs.append((seconds, peak.stop() / 1024, epoch["samples_per_s"], run))
            if i:
                shutil.rmtree(work / f"{name}-{i - 1}" if seconds < runs[-2][0] else run)
        seconds, peak_mb, epoch_rate, run = min(runs, key=lambda r: r[0])
        res = subprocess.run([str(BIN), "predict", str(run), str(work / "test.parquet"), "--out",
                              str(work / f"{name}.parquet")], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr)
        p = pq.read_table(work / f"{name}.parquet").column("p_1").to_numpy()  # (p_0, p_1, prediction)
        result[name] = {"command": " ".join(cmd[1:]).replace(str(work) + "/", "").replace(f"{name}-{args.repeats - 1}", name),
                        "seconds": seconds, "runs_seconds": [r[0] for r in runs],
                        "rows_per_s": n_train / seconds, "epoch_rows_per_s": epoch_rate, "peak_pss_mb": peak_mb,
                        "checkpoint_mb": sum(f.stat().st_size for f in run.glob("ckpt-*.npz")) / 2**20,
                        **_metrics(y_test, p)}

    limits = result["limits"] = _row_limits(args.buckets, args.vw_bits)
    for name, (limit, tables) in _LIMIT_OF.items():
        if result.get(name):  # (a row --only left out is empty)
            r = result[name]
            cols = 30 if name == "streamtrain_crosses" else 26
            r["of_row_limit"] = r["rows_per_s"] / limits[limit]
            # (the bytes of the rows it touches: read twice, gather and update, and written once)
            r["of_copy_bandwidth"] = r["rows_per_s"] * cols * tables * 64 * 4 * 3 / limits["copy_bytes_per_s"]

    _save(args.out, result)  # (again after each peer: a peer that fails loses nothing measured before it)
    peers = set(args.peers.split(","))
    for name, kind, bits, limit in (("sklearn_sgd", "sgd", args.vw_bits, 1e9),
                                    ("sklearn_mlp", "mlp", args.mlp_bits, args.mlp_seconds)):
        if name not in peers:
            continue
        fit, peak_mb = _peer([sys.executable, "-c", SK_SCRIPT, kind, str(work / "train.parquet"),
                              str(work / "test.parquet"), str(work / f"{name}.npy"), str(bits), str(limit)])
        what = ("SGDClassifier(loss='log_loss', alpha=1e-5, learning_rate='constant', eta0=0.01, random_state=0)"
                ".partial_fit, "
                "10,000 rows a call" if kind == "sgd" else
                f"MLPClassifier(hidden_layer_sizes=(64,), batch_size=256, learning_rate_init=0.003, random_state=0)"
                ".partial_fit, "
                f"1,024 rows a call, stopped after {limit:g} s")
        result[name] = {"recipe": f"FeatureHasher(n_features=2**{bits}) on the Parquet file's rows + {what}",
                        "seconds": fit["seconds"], "rows_trained": fit["rows"],
                        "rows_per_s": fit["rows"] / fit["seconds"], "peak_pss_mb": peak_mb,
                        **_metrics(y_test, np.load(work / f"{name}.npy"))}

        _save(args.out, result)

    if "torch" in peers and Path(args.vw_python).exists() \
            and subprocess.run([args.vw_python, "-c", "import torch"]).returncode == 0:
        best = None
        version = subprocess.run([args.vw_python, "-c", "import torch; print(torch.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        for workers in (0, 1):
            fit, peak_mb = _peer([args.vw_python, "-c", TORCH_SCRIPT, str(work / "train.parquet"),
                                  str(work / "test.parquet"), str(work / "torch.npy"), str(args.buckets), str(workers)])
            row = {"recipe": f"nn.EmbeddingBag(26 * {args.buckets:,}, 64, mode='sum', sparse=True) + nn.Linear "
                             f"(13 log counts) -> ReLU -> nn.Linear, SparseAdam + Adam (lr 1e-3), batch 256, "
                             f"DataLoader(num_workers={workers}) over the Parquet file, hashed per block",
                   "version": version, "seconds": fit["seconds"], "rows_per_s": fit["rows"] / fit["seconds"],
                   "loop_seconds": fit["loop_seconds"], "loop_rows_per_s": fit["rows"] / fit["loop_seconds"],
                   "peak_pss_mb": peak_mb, **_metrics(y_test, np.load(work / "torch.npy"))}
            if best is None or row["rows_per_s"] > best["rows_per_s"]:
                best = row
        result["torch"] = best
        _save(args.out, result)

    if Path(args.vw_python).exists() and peers & {"vw", "vw_linear"}:
        _vw_text(work / "train.parquet", work / "train.vw")
        _vw_text(work / "test.parquet", work / "test.vw")
        for name, nn in (("vw", "nn"), ("vw_linear", "linear")):
            if name not in peers:
                continue
            res = subprocess.run([args.vw_python, "-c", VW_SCRIPT, str(work / "train.vw"), str(work / "test.vw"),
                                  str(work / "vw.pred"), str(args.vw_bits), nn], capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(res.stderr)
            vw_seconds = json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
            pv = np.loadtxt(work / "vw.pred", usecols=0)
            result[name] = {"options": ("--nn 64 " if nn == "nn" else "")
                            + f"-b {args.vw_bits} --loss_function logistic --passes 1",
                            "seconds": vw_seconds, "rows_per_s": n_train / vw_seconds, **_metrics(y_test, pv)}
    _save(args.out, result)
    print(f"click log: {args.rows:,} rows, {n_train:,} trained, the last day ({n_test:,}) held out")
    for name in ("streamtrain", "streamtrain_crosses", "streamtrain_shared", "streamtrain_online",
                 "streamtrain_online_l2", "streamtrain_online_adam", "streamtrain_copied_snapshots", "vw", "vw_linear",
                 "sklearn_sgd", "sklearn_mlp", "torch"):
        r = result.get(name)
        if r:
            print(f"  {name:20s} {r['rows_per_s']:>10,.0f} rows/s  auc {r['auc']:.4f}  log_loss {r['log_loss']:.4f}"
                  f"  ({r['seconds']:.1f} s" + (f", peak {r['peak_pss_mb']:,.0f} MB)" if "peak_pss_mb" in r else ")")
              + (f"  training alone {r.get('epoch_rows_per_s', r.get('loop_rows_per_s')):,.0f} rows/s"
                 if "epoch_rows_per_s" in r or "loop_rows_per_s" in r else "")
              + (f"  {r['of_row_limit']:.3f} of the row limit, {r['of_copy_bandwidth']:.3f} of bandwidth"
                 if "of_row_limit" in r else ""))
    print("  row limits (samples/s, one core): " + ", ".join(
        f"{k} {v:,.0f}" for k, v in limits.items() if k != "copy_bytes_per_s")
        + f"; copy {limits['copy_bytes_per_s'] / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
