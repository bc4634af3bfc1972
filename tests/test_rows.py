"""Rows from the wire (``streamtrain.serve.rows``): Arrow IPC bodies as producers write them,
converted exactly, and every malformed one refused with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from streamtrain import DataError
from streamtrain.serve.rows import Columns

FEATURES = ["f0", "f1", "f2"]


def _body(table: pa.Table, file_format: bool = False, batch_rows: int = 4) -> bytes:
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if file_format else pa.ipc.new_stream
    with opener(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=batch_rows):  # several record batches, by default
            w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _table(X, y=None, types=None) -> pa.Table:
    types = types or [pa.float32()] * X.shape[1]
    cols = {f: pa.array(X[:, j], type=t) for j, (f, t) in enumerate(zip(FEATURES, types))}
    return pa.table({**cols, **({} if y is None else {"y": pa.array(y)})})


@pytest.mark.parametrize("types", [
    [pa.float32()] * 3, [pa.float64()] * 3, [pa.float16(), pa.float32(), pa.float64()],
    [pa.int64(), pa.float32(), pa.uint64()], [pa.int8(), pa.int32(), pa.int16()]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrow_rows_convert_exactly_whatever_the_column_types(types, dtype):
    rng = np.random.default_rng(0)
    X = np.abs(np.round(rng.normal(size=(10, 3)) * 20))  # small whole numbers: every column type holds them
    y = rng.integers(0, 2, 10)
    table = _table(X, y, types)
    for file_format, batch_rows in ((False, 4), (True, 4), (False, 100)):  # (100: one batch, read as it is)
        cols = Columns(FEATURES, "y", dtype=dtype)
        for _ in range(2):  # the second body meets the checked schema
            got, labels = cols.from_arrow(_body(table, file_format, batch_rows), "req")
            assert got.dtype == dtype and got.flags["C_CONTIGUOUS"] and got.shape == (10, 3)
            np.testing.assert_array_equal(got, X.astype(dtype))
            np.testing.assert_array_equal(labels, y)


def test_columns_in_another_order_and_without_label_for_predict():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = pa.table({"f2": X[:, 2], "y": [0, 1, 0, 1], "f0": X[:, 0], "f1": X[:, 1]})
    cols = Columns(FEATURES, "y")
    np.testing.assert_array_equal(cols.from_arrow(_body(table), "r")[0], X)
    got, labels = cols.from_arrow(_body(table.drop_columns(["y"])), "r", need_label=False)
    np.testing.assert_array_equal(got, X)
    assert labels is None


def _refused(cols, table_or_bytes, match, need_label=True):
    body = table_or_bytes if isinstance(table_or_bytes, bytes) else _body(table_or_bytes)
    with pytest.raises(DataError, match=match):
        cols.from_arrow(body, "entry 7", need_label)


def test_every_malformed_body_is_refused_by_name():
    good = _table(np.ones((3, 3), dtype=np.float32), [0, 1, 0])
    cols = Columns(FEATURES, "y")
    cols.from_arrow(_body(good), "entry 6")  # the schema is now known: the checks must still run
    f1 = good.column("f1")
    _refused(cols, good.set_column(1, "f1", pa.array([1.0, None, 2.0], pa.float32())),
             r"entry 7: column 'f1' has 1 missing values")
    _refused(cols, good.set_column(1, "f1", pa.array([1.0, np.nan, 2.0], pa.float32())),
             r"entry 7: row 1, column 'f1' is nan")
    _refused(cols, good.set_column(0, "f0", pa.array([1.0, 2.0, -np.inf], pa.float64())),
             r"entry 7: row 2, column 'f0' is -inf")
    _refused(cols, good.set_column(2, "f2", pa.array([1.0, 1e39, 2.0], pa.float64())),
             r"entry 7: a value is beyond float32's range")
    _refused(cols, good.set_column(1, "f1", pa.array([1, None, 2], pa.int64())),
             r"entry 7: column 'f1' has 1 missing values")
    _refused(cols, good.set_column(1, "f1", pa.array(["a", "b", "c"])), r"column 'f1' is string, not a number")
    _refused(cols, good.set_column(1, "f1", pa.array([True, False, True])), r"column 'f1' is bool, not a number")
    _refused(cols, good.drop_columns(["f2"]), r"missing \['f2'\]")
    _refused(cols, good.append_column("extra", f1), r"unknown \['extra'\]")
    _refused(cols, good.drop_columns(["y"]), r"no label column 'y'")
    _refused(cols, good.set_column(3, "y", pa.array([0, None, 1])), r"label column 'y' has 1 missing values")
    _refused(cols, good.set_column(3, "y", pa.array([[1], [2], [3]])), r"label column 'y' is list")
    _refused(cols, good.slice(0, 0), r"entry 7: no rows")
    _refused(cols, b"not arrow at all", r"entry 7: not an Arrow IPC stream")
    # a float64 stream refuses the same, values beyond float32's range included
    wide = Columns(FEATURES, "y", dtype=np.float64)
    _refused(wide, good.set_column(2, "f2", pa.array([1.0, 1e39, 2.0], pa.float64())), r"beyond float32's range")
    _refused(wide, good.set_column(1, "f1", pa.array([1.0, None, 2.0], pa.float32())),
             r"entry 7: column 'f1' has 1 missing values")
    _refused(wide, good.set_column(1, "f1", pa.array([1.0, np.nan, 2.0], pa.float32())),
             r"entry 7: row 1, column 'f1' is nan")
    # and the good schema still passes after all that
    np.testing.assert_array_equal(cols.from_arrow(_body(good), "entry 8")[0], np.ones((3, 3)))


JSON_BODIES = [
    b'[{"f0": 1, "f1": 2.5, "f2": -3e-2, "y": 1}, {"f0": 0, "f1": 1e-310, "f2": 4, "y": 0}]',
    b'{"rows": [{"f2": 1, "f1": 2, "f0": 3, "y": "cat"}]}',
    b'\xef\xbb\xbf[{"f0": 1, "f1": 2, "f2": 3, "y": 1}]',  # a byte-order mark
    b'[{"f0": NaN, "f1": 2, "f2": 3, "y": 1}]',
    b'[{"f0": Infinity, "f1": 2, "f2": 3, "y": 1}]',
    b'[{"f0": 1e400, "f1": 2, "f2": 3, "y": 1}]',
    b'[{"f0": 123456789012345678901234567890, "f1": 2, "f2": 3, "y": 1}]',
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": 123456789012345678901234567890}]',
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": "\\ud800"}]',  # a lone surrogate
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": 1, "y": 2}]',  # a key twice: the last one counts
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": 1},]',
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": 1}] x',
    b'[{"f0": 1, "f1": "2", "f2": 3, "y": 1}]',
    b'[{"f0": true, "f1": 2, "f2": 3, "y": 1}]',
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": null}]',
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": "a\\u0000b"}]',
    b'[{"f0": 1, "f1": 2, "f2": 3, "y": "\xff"}]',
    '[{"f0": 1, "f1": 2, "f2": 3, "y": 1}]'.encode("utf-16"),
    b'[1' + b'0' * 400 + b']',
    b'[' * 2000 + b']' * 2000,
    b'', b' ', b'[]', b'{}', b'1', b'"rows"',
]


@pytest.mark.parametrize("body", JSON_BODIES)
def test_json_rows_read_by_msgspec_are_those_the_standard_library_reads(body, monkeypatch):
    from streamtrain.serve import rows

    assert rows._fast_json is not None, "msgspec belongs to the serve extra"

    def parse():
        try:
            X, y = Columns(FEATURES, "y").from_json(body, "POST /learn")
            return X.tolist(), y.tolist(), X.dtype, y.dtype
        except DataError as e:
            return str(e)

    fast = parse()
    monkeypatch.setattr(rows, "_fast_json", None)
    assert fast == parse()
