"""A synthetic click log in the shape of Criteo's display-ads logs, any size, in flat memory.

13 integer columns ``i1``..``i13`` with heavy tails and missing values, 26 categorical columns
``c1``..``c26`` (8 hex digits, as Criteo hashes its values) whose values follow Zipf laws over
10^2 to ``max_levels`` levels, a timestamp ``time`` over ``days`` days (so the last day can be
held out), and ``click`` from a hidden model: a per-value effect of every categorical column,
pairwise interactions of a few column pairs, and the integers' logs. A chunk depends only on
(seed, chunk): the same arguments always write the same rows, and no table of effects is kept
(each value's effect is a hash of the value).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["make_clicks", "CLICK_FORMATS", "N_INTEGER", "N_CATEGORICAL"]

N_INTEGER, N_CATEGORICAL = 13, 26
#: Column pairs whose values interact in the hidden model (feature crosses find them).
PAIRS = ((0, 1), (2, 3), (4, 9), (5, 12))
CLICK_FORMATS = (".parquet", ".csv", ".csv.gz", ".h5")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 -> well-mixed uint64 (vectorised)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _effect(key: np.ndarray, salt: int) -> np.ndarray:
    """A value's effect, uniform in [-1, 1), from its key: the same everywhere, stored nowhere."""
    with np.errstate(over="ignore"):
        h = _mix(key.astype(np.uint64) * np.uint64(0x100000001B3) + np.uint64(salt))
    return (h >> np.uint64(11)).astype(np.float64) * (2.0 / (1 << 53)) - 1.0


_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_SHIFTS = np.arange(28, -4, -4, dtype=np.uint64)


def _hex8(v: np.ndarray) -> np.ndarray:
    """32-bit values (in uint64) as 8 lower-case hex digits each, ``S8`` (vectorised)."""
    return np.ascontiguousarray(_DIGITS[(v[:, None] >> _SHIFTS) & np.uint64(0xF)]).view("S8").ravel()


def levels(max_levels: int) -> np.ndarray:
    """Each categorical column's number of levels: log-spaced from 100 to ``max_levels``."""
    return np.geomspace(100, max(max_levels, 100), N_CATEGORICAL).round().astype(np.int64)


def click_chunk(n: int, first_row: int, total_rows: int, seed: int, chunk: int, max_levels: int = 10_000_000,
                days: int = 7):
    """``n`` rows (the ``first_row``-th onward of ``total_rows``) as an Arrow table."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, chunk, 0xC11C])
    sizes = levels(max_levels)
    logit = np.full(n, -1.2)
    columns = {}
    # integers: counts with heavy tails (log-normal), often missing
    for j in range(N_INTEGER):
        v = np.floor(rng.lognormal(mean=1.0 + 0.2 * j, sigma=1.2, size=n)).astype(np.int64)
        gone = rng.random(n) < (0.05 + 0.03 * j)
        logit += np.where(gone, 0.0, 0.15 * _effect(np.array([j]), seed)[0] * np.log1p(v))
        columns[f"i{j + 1}"] = pa.array(v, pa.int64(), mask=gone)
    # categoricals: Zipf over each column's levels, written as 8 hex digits of a hash of the value
    codes = np.empty((N_CATEGORICAL, n), np.int64)
    for j in range(N_CATEGORICAL):
        v = (rng.zipf(1.15, n) - 1) % sizes[j]
        codes[j] = v
        key = (np.int64(j + 1) << np.int64(40)) + v
        logit += 0.5 * _effect(key, seed)
        gone = rng.random(n) < (0.02 if j % 3 else 0.15)
        logit[gone] -= 0.5 * _effect(key[gone], seed)  # a missing value has no effect
        text = _hex8(_mix(key.astype(np.uint64)) >> np.uint64(32))
        columns[f"c{j + 1}"] = pa.array(text, pa.binary(8), mask=gone).cast(pa.string())
    for a, b in PAIRS:  # interactions: a pair of values has an effect of its own
        key = (codes[a] * np.int64(1_000_003) + codes[b]) * np.int64(64) + a * 8 + b
        logit += 0.8 * _effect(key, seed + 1)
    rows = first_row + np.arange(n)
    start = np.datetime64("2026-01-01T00:00:00", "s")
    span = days * 86_400
    columns["time"] = pa.array(start + (rows * span // max(total_rows, 1)).astype("timedelta64[s]"))
    p = 1.0 / (1.0 + np.exp(-logit))
    click = (rng.random(n) < p).astype(np.int8)
    return pa.table({"click": pa.array(click), **columns})


def make_clicks(out: str | os.PathLike, rows: int, chunk_rows: int = 100_000, seed: int = 0,
                max_levels: int = 10_000_000, days: int = 7, overwrite: bool = False, progress=None) -> dict:
    """Write a click log to ``out`` (.parquet, .csv, .csv.gz or .h5: a pandas/PyTables table),
    chunk by chunk; returns a summary dict.

    >>> make_clicks("/tmp/st_clicks_doc.parquet", rows=1000, overwrite=True)["rows"]
    1000
    """
    from .io.atomic import atomic_path
    from .io.outputs import check_output

    out = Path(out)
    suffix = next((s for s in CLICK_FORMATS if out.name.endswith(s)), None)
    if suffix is None:
        raise DataError(f"{out}: a click log is written as {', '.join(CLICK_FORMATS)}")
    if rows < 1 or chunk_rows < 1 or days < 1 or max_levels < 100:
        raise DataError(f"{out}: --rows, --chunk-rows and --days must be at least 1, --max-levels at least 100")
    check_output(out, overwrite=overwrite)
    n_chunks = -(-rows // chunk_rows)
    with atomic_path(out) as tmp:
        writer = _Writer(Path(tmp), suffix)
        try:
            for i in range(n_chunks):
                n = min(chunk_rows, rows - i * chunk_rows)
                writer.write(click_chunk(n, i * chunk_rows, rows, seed, i, max_levels, days))
                if progress is not None:
                    progress(n)
        finally:
            writer.close()
    return {"path": os.fspath(out), "rows": rows, "chunks": n_chunks, "label": "click",
            "levels": [int(v) for v in levels(max_levels)]}


class _Writer:
    """One table after another into a Parquet, CSV (plain or gzip) or HDF5 (PyTables) file."""

    def __init__(self, path: Path, suffix: str):
        self.path, self.suffix, self._w, self._sink = path, suffix, None, None

    def write(self, table) -> None:
        import pyarrow as pa

        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            if self._w is None:
                self._w = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self._w.write_table(table)
        elif self.suffix.startswith(".csv"):
            import pyarrow.csv as pcsv

            if self._w is None:
                self._sink = pa.CompressedOutputStream(str(self.path), "gzip") if self.suffix.endswith(".gz") \
                    else pa.OSFile(str(self.path), "wb")
                self._w = pcsv.CSVWriter(self._sink, table.schema)
            self._w.write_table(table)
        else:
            import warnings

            import pandas as pd

            frame = table.to_pandas()
            ints = [f"i{j + 1}" for j in range(N_INTEGER)]
            cats = [f"c{j + 1}" for j in range(N_CATEGORICAL)]
            for c in ints:  # PyTables has no nullable integers: NaN, as pandas stores them
                frame[c] = frame[c].astype("float64")
            for c in cats:
                frame[c] = frame[c].astype(object)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PyTables' performance warning on object columns
                with pd.HDFStore(self.path, mode="a", complevel=1, complib="blosc:lz4") as store:
                    store.append("clicks", frame, format="table", data_columns=True,
                                 min_itemsize={c: 8 for c in cats},
                                 index=False)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        if self._sink is not None:
            self._sink.close()
