"""streamtrain.features: stable hashing against a pure-Python reference, bounded mergeable
vocabularies and their codes, and the column plans of schemas written by pandas, polars and pyarrow."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections import Counter
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain.errors import ConfigError, DataError
from streamtrain.features import Categories, Vocabulary, bucket, choose_string_kind, hash64, infer_columns

FAST = settings(max_examples=60, deadline=None)

# ---------------------------------------------------------------- the reference hash, in pure Python

M64 = (1 << 64) - 1


def ref_fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def ref_hash(value, salt: int = 0) -> int:
    data = value.encode() if isinstance(value, str) else int(value).to_bytes(8, "little", signed=True)
    h = 0xCBF29CE484222325 ^ ref_fmix64(salt)
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def ref_bucket(value, n: int, salt: int = 0) -> int:
    return -1 if value is None else ref_fmix64(ref_hash(value, salt)) % n


# value, hash (salt 0), hash (salt 12345), bucket of 1000 (salt 0), bucket of 1000 (salt 12345):
# computed once by the reference above; "", "a" and "foobar" are FNV-1a 64's published vectors.
KNOWN = [
    ("", 0xcbf29ce484222325, 0xdc20371f7d298ddc, 342, 378),
    ("a", 0xaf63dc4c8601ec8c, 0x344b6781ad9bd827, 315, 645),
    ("foobar", 0x85944171f73967e8, 0x1779c37db3a2b3d1, 275, 43),
    ("streamtrain", 0xeee9c76eef1a37e9, 0x7d5135ab9aaf407e, 78, 268),
    ("Zürich", 0x0ef841596f67fdc0, 0x2dd94cda6b30306f, 776, 105),
    ("東京", 0x2f3c04f1ff1b2daf, 0xb8f8e24b0fc4e962, 522, 521),
    (0, 0xa8c7f832281a39c5, 0x65f3af4f2dc0e15c, 598, 236),
    (1, 0x89cd31291d2aefa4, 0x84ee765838b02b7d, 702, 90),
    (-1, 0x8cf51a8bfca3883d, 0xddd17bcbda337dd4, 510, 204),
    (2**63 - 1, 0x8cf59a8bfca461bd, 0xddd0fbcbda32a454, 221, 965),
]


def _string_forms(values: list) -> list:
    """The same strings as every Arrow layout a reader may hand over."""
    arr = pa.array(values, pa.string())
    return [arr, arr.cast(pa.large_string()), arr.cast(pa.string_view()), arr.dictionary_encode(),
            pa.chunked_array([arr[:len(arr) // 2], arr[len(arr) // 2:]], pa.string()),
            np.array(values, dtype=object)]


# ---------------------------------------------------------------- hashing


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "numpy"])
def test_hash_known_answers(compiled):
    for value, h0, h1, b0, b1 in KNOWN:
        assert (ref_hash(value), ref_hash(value, 12345)) == (h0, h1)
        arr = pa.array([value], pa.string() if isinstance(value, str) else pa.int64())
        assert int(hash64(arr, compiled=compiled)[0]) == h0, value
        assert int(hash64(arr, salt=12345, compiled=compiled)[0]) == h1, value
        assert bucket(arr, 1000).tolist() == [b0] and bucket(arr, 1000, salt=12345).tolist() == [b1]


@FAST
@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=40), st.integers(0, 2**64 - 1),
       st.integers(1, 50))
def test_hash_matches_the_reference_in_every_layout(values, salt, n):
    want = [0 if v is None else ref_hash(v, salt) for v in values]
    for form in _string_forms(values):
        assert hash64(form, salt).tolist() == want
        assert bucket(form, n, salt).tolist() == [ref_bucket(v, n, salt) for v in values]
    assert hash64(pa.array(values, pa.string()), salt, compiled=False).tolist() == want


def test_hash_of_a_slice_uses_its_own_offsets():
    values = [f"value-{i}" * (i % 4) for i in range(50)] + [None]
    for t in (pa.string(), pa.large_string()):
        big = pa.array(values, t)
        for start, stop in [(0, 0), (7, 23), (30, 51), (50, 51)]:
            part = big.slice(start, stop - start)
            want = [0 if v is None else ref_hash(v) for v in values[start:stop]]
            assert hash64(part).tolist() == want and hash64(part, compiled=False).tolist() == want


def test_integers_of_every_width_and_bools_hash_as_int64():
    small = [0, 1, 5, 100, None]
    want = [0 if v is None else ref_hash(v) for v in small]
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()):
        assert hash64(pa.array(small, t)).tolist() == want, t
    assert hash64(np.array([0, 1, 5], np.uint8)).tolist() == want[:3]
    # a uint64 above int64's range hashes as the same 8 bytes read as int64 (two's complement)
    assert hash64(pa.array([2**64 - 1], pa.uint64())).tolist() == [ref_hash(-1)]
    assert hash64(pa.array([True, False, None])).tolist() == [ref_hash(1), ref_hash(0), 0]


def test_nulls_hash_to_zero_and_bucket_minus_one():
    d = pa.DictionaryArray.from_arrays(pa.array([0, None, 1]), pa.array(["x", None]))
    assert hash64(d).tolist() == [ref_hash("x"), 0, 0]
    assert bucket(d, 7).tolist() == [ref_bucket("x", 7), -1, -1]
    assert bucket(pa.array([None, None], pa.string()), 3).tolist() == [-1, -1]
    assert hash64(pa.array([], pa.large_string())).shape == (0,)


def test_buckets_spread_evenly():
    values = pa.array([f"user{i}" for i in range(64_000)])
    for n in (16, 10):  # a power of two sees only the low bits: fmix64 must have spread them
        counts = np.bincount(bucket(values, n, salt=3), minlength=n)
        expected = len(values) / n
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 3 * n, counts  # about n - 1 for a uniform spread; far more for a poor hash


def test_bucket_and_salt_are_checked():
    with pytest.raises(ConfigError, match="n_buckets"):
        bucket(pa.array(["a"]), 0)
    with pytest.raises(ConfigError, match="salt"):
        hash64(pa.array(["a"]), salt=-1)
    with pytest.raises(DataError, match="cannot hash values of type double"):
        hash64(pa.array([1.5]))


def test_hash_speed():
    values = pa.array([f"u{i % 100_003}" for i in range(2_000_000)])
    hash64(values[:10])  # compile (or load the cached kernel)
    t = time.perf_counter()
    hash64(values)
    print(f"\nhash64: {len(values) / (time.perf_counter() - t) / 1e6:.0f} million short strings/s")


def test_features_imports_nothing_of_streamtrain_but_errors():
    # (and numba as every compiling module imports it, through streamtrain._jit)
    from .test_layout import _imports

    deps = {d for m, ds in _imports().items() if m.startswith("streamtrain.features") for d in ds}
    assert {d for d in deps if not d.startswith("streamtrain.features")} == {"streamtrain.errors", "streamtrain._jit"}


# ---------------------------------------------------------------- vocabularies


def test_vocabulary_counts_a_pandas_parquet_file_by_batches(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    cities = rng.choice(["Paris", "Lyon", "Zürich", "東京", ""], size=20_000, p=[.4, .3, .15, .1, .05]).astype(object)
    cities[rng.random(20_000) < 0.1] = None
    df = pd.DataFrame({"city": cities, "cat": pd.Categorical(cities)})
    df.to_parquet(tmp_path / "t.parquet", row_group_size=3000)
    want = Counter(c for c in cities if c is not None)
    for col in ("city", "cat"):
        v = Vocabulary()
        for batch in pq.ParquetFile(tmp_path / "t.parquet").iter_batches(batch_size=1000, columns=[col]):
            v.update(batch.column(0))
        assert v.exact and v.kind == "string" and v.nulls == sum(c is None for c in cities)
        assert dict(v.most_common()) == want and v.rows == sum(want.values())
        assert v.finalize().values.to_pylist() == [k for k, _ in sorted(want.items(), key=lambda kv: -kv[1])]


def test_layouts_and_widths_count_as_the_same_values():
    v = Vocabulary()
    for form in _string_forms(["a", "b", None, "a"]):
        v.update(form)
    assert v.most_common() == [("a", 12), ("b", 6)] and v.nulls == 6
    w = Vocabulary().update(pa.array([1, 2], pa.int8())).update(np.array([2, 3], np.uint64)).update([2, None])
    assert w.kind == "int" and w.most_common() == [(2, 3), (1, 1), (3, 1)] and w.nulls == 1
    b = Vocabulary().update(np.array([True, False, True]))
    assert b.most_common() == [(True, 2), (False, 1)]


def test_kinds_do_not_mix_and_floats_are_not_categories():
    v = Vocabulary().update(pa.array(["a"]))
    with pytest.raises(DataError, match="string values cannot count int values"):
        v.update(pa.array([1]))
    with pytest.raises(DataError, match="double are not categories"):
        Vocabulary().update(np.array([1.5]))
    with pytest.raises(DataError, match="text, not a category"):
        Vocabulary().update(pa.array(["x" * 70_000]))
    with pytest.raises(DataError, match="above 2\\*\\*63"):
        Vocabulary().update(pa.array([2**64 - 1], pa.uint64()))


def test_finalize_orders_by_count_then_value_and_bounds_the_size():
    v = Vocabulary().update(pa.array(["b", "c", "a", "c", "b", "d", "c"])).update(pa.array(["a"]))
    # c: 3, then a and b tied at 2 (a first by value), then d: 1
    assert v.finalize().values.to_pylist() == ["c", "a", "b", "d"]
    assert v.finalize(max_size=2).values.to_pylist() == ["c", "a"]
    assert v.finalize(min_frequency=2).values.to_pylist() == ["c", "a", "b"]
    assert v.finalize(max_size=0).values.to_pylist() == []
    cats = v.finalize(max_size=3, oov_buckets=4, salt=9)
    assert (cats.offset, cats.size) == (5, 8) and cats.counts.tolist() == [3, 2, 2]
    # strings tie-break bytewise (UTF-8 order), independent of any locale
    assert Vocabulary().update(pa.array(["é", "z", "Z"])).finalize().values.to_pylist() == ["Z", "z", "é"]
    with pytest.raises(ConfigError, match="max_size"):
        v.finalize(max_size=-1)


@FAST
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", None]), max_size=20), min_size=1,
                max_size=6), st.randoms(use_true_random=False))
def test_merging_in_any_order_gives_the_same_vocabulary(parts, rnd):
    vocabs = [Vocabulary(capacity=10).update(pa.array(p, pa.string())) for p in parts]
    states = []
    for _ in range(3):
        order = list(range(len(vocabs)))
        rnd.shuffle(order)
        # a tree of merges, as an MPI reduction does, in a shuffled order, through JSON and back
        level = [Vocabulary.from_state(json.loads(json.dumps(vocabs[i].state_dict()))) for i in order]
        while len(level) > 1:
            level = [level[i].merge(level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        states.append(level[0].state_dict())
    assert states[0] == states[1] == states[2]
    flat = [x for p in parts for x in p]
    assert states[0]["values"] == [k for k, _ in sorted(Counter(x for x in flat if x is not None).items(),
                                                        key=lambda kv: (-kv[1], kv[0]))]


@FAST
@given(st.lists(st.lists(st.integers(0, 30), max_size=40), min_size=1, max_size=8), st.integers(1, 6),
       st.booleans())
def test_the_sketch_keeps_its_error_bound(chunks, capacity, merged):
    if merged:  # one summary per chunk, merged: the MPI path
        v = Vocabulary(capacity)
        for c in chunks:
            v.merge(Vocabulary(capacity).update(pa.array(c, pa.int64())))
    else:
        v = Vocabulary(capacity)
        for c in chunks:
            v.update(pa.array(c, pa.int64()))
            assert len(v) <= capacity
    truth = Counter(x for c in chunks for x in c)
    est = dict(v.most_common())
    assert v.rows == sum(truth.values()) and len(v) <= capacity
    assert v.error * (capacity + 1) <= v.rows - sum(est.values())
    for value, f in truth.items():
        assert f - v.error <= est.get(value, 0) <= f
    assert v.exact == (len(truth) <= capacity)


def test_the_sketch_finds_the_heavy_hitters_of_a_long_stream():
    rng = np.random.default_rng(1)
    stream = rng.zipf(1.3, size=400_000) % 50_000
    v = Vocabulary(capacity=200)
    for chunk in np.array_split(stream, 40):
        v.update(chunk)
    values, counts = np.unique(stream, return_counts=True)
    top = values[np.lexsort((values, -counts))][:10].tolist()
    assert not v.exact and v.error <= len(stream) / 201
    assert v.finalize(max_size=10).values.to_pylist() == top


def test_merging_a_weaker_sketch_is_refused():
    weak = Vocabulary(2).update(pa.array([1, 2, 3, 4]))
    assert not weak.exact
    with pytest.raises(ConfigError, match="capacity 2"):
        Vocabulary(5).merge(weak)
    Vocabulary(1).merge(weak)  # a smaller capacity: its bound still holds


def test_shuffled_chunks_give_the_same_codes():
    rows = [random.Random(i).choice("abcdefg") for i in range(500)]
    first = Vocabulary().update(pa.array(rows)).finalize(max_size=4)
    shuffled = rows[:]
    random.Random(2).shuffle(shuffled)
    v = Vocabulary()
    for i in range(0, 500, 37):
        v.update(pa.array(shuffled[i:i + 37]))
    assert v.finalize(max_size=4).state_dict() == first.state_dict()


def test_vocabulary_state_round_trips_through_json():
    for v in (Vocabulary(), Vocabulary().update(pa.array(["x", None, "y", "x"])),
              Vocabulary(3).update(pa.array(list(range(10)) * 2 + [7] * 5)), Vocabulary().update(pa.array([True]))):
        state = json.loads(json.dumps(v.state_dict()))
        back = Vocabulary.from_state(state)
        assert back.state_dict() == v.state_dict() and repr(back) == repr(v)
        assert back.finalize().state_dict() == v.finalize().state_dict()


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update(format="pickle"), "not a streamtrain.vocabulary"),
    (lambda s: s.update(capacity=2**40), "capacity"),
    (lambda s: s.update(capacity=1), "at most 1 items"),
    (lambda s: s.update(kind="float"), "unknown value kind"),
    (lambda s: s.update(values=["x", 1]), "is not of kind 'string'"),
    (lambda s: s.update(values=["x", "x"]), "values repeat"),
    (lambda s: s.update(counts=[2]), "as long as values"),
    (lambda s: s.update(counts=[2, -1]), "counts must be integers"),
    (lambda s: s.update(rows=99), "does not fit rows"),
    (lambda s: s.update(nulls="1"), "nulls"),
    (lambda s: s.update(values=["x", "\ud800"]), "not valid Unicode"),
    (lambda s: s.update(values=["x", "y" * 70_000]), "longer than"),
    (lambda s: s.update(kind=None), "kind is None"),
])
def test_a_bad_vocabulary_state_is_refused_by_name(change, match):
    state = Vocabulary().update(pa.array(["x", "x", "y"])).state_dict()
    change(state)
    with pytest.raises(ValueError, match=match):
        Vocabulary.from_state(state)


def test_vocabulary_capacity_is_checked():
    for bad in (0, 2**30, True, 1.5):
        with pytest.raises(ConfigError, match="capacity"):
            Vocabulary(bad)


# ---------------------------------------------------------------- codes


def test_codes_follow_the_layout_null_then_buckets_then_vocabulary():
    cats = Vocabulary().update(pa.array(["b", "a", "b", None])).finalize(oov_buckets=3, salt=7)
    values = pa.array(["a", None, "b", "zebra", "yak", "a"])
    codes = cats.encode(values)
    assert codes.tolist()[:3] == [5, 0, 4] and codes[5] == 5
    assert codes[3] == 1 + ref_bucket("zebra", 3, 7) and codes[4] == 1 + ref_bucket("yak", 3, 7)
    for form in _string_forms(["a", None, "b", "zebra", "yak", "a"]):
        assert cats.encode(form).tolist() == codes.tolist()
    assert cats.decode(codes).to_pylist() == ["a", None, "b", None, None, "a"]
    with pytest.raises(DataError, match="it holds int values where training's held string values"):
        cats.encode(pa.array([1]))
    with pytest.raises(DataError, match="codes must lie"):
        cats.decode([7])


def test_one_oov_bucket_needs_no_hash_and_an_empty_vocabulary_works():
    cats = Vocabulary().update(pa.array([3, 4, 4], pa.int16())).finalize()
    assert cats.encode(pa.array([4, 3, 9, None], pa.int64())).tolist() == [2, 3, 1, 0]
    empty = Vocabulary().finalize()
    assert empty.size == 2 and empty.encode(pa.array(["q", None])).tolist() == [1, 0]


def test_polars_categorical_parquet_encodes_through_its_dictionary(tmp_path):
    pl = pytest.importorskip("polars")
    rows = ["red", "green", None, "red", "blue"] * 200
    pl.DataFrame({"c": pl.Series(rows, dtype=pl.Categorical), "s": rows}).write_parquet(tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet")
    assert pa.types.is_dictionary(table.schema.field("c").type)
    cats = Vocabulary().update(table["c"]).finalize(max_size=2)
    assert cats.values.to_pylist() == ["red", "blue"]
    assert cats.encode(table["c"]).tolist() == cats.encode(table["s"]).tolist() == \
        [{"red": 2, "blue": 3, "green": 1, None: 0}[r] for r in rows]


def test_categories_state_round_trips_and_is_checked():
    cats = Vocabulary().update(pa.array(["b", "a", "b"])).finalize(oov_buckets=2, salt=5)
    back = Categories.from_state(json.loads(json.dumps(cats.state_dict())))
    assert back.state_dict() == cats.state_dict()
    x = pa.array(["a", "q", None, "b", "r"])
    assert back.encode(x).tolist() == cats.encode(x).tolist()
    for key, bad, match in [("oov_buckets", 0, "oov_buckets"), ("salt", -1, "salt"), ("counts", [1], "counts"),
                            ("version", 2, "version 1")]:
        with pytest.raises(ValueError, match=match):
            Categories.from_state({**cats.state_dict(), key: bad})
    with pytest.raises(ConfigError, match="distinct"):
        Categories("string", pa.array(["a", "a"]), [1, 1])


# ---------------------------------------------------------------- schemas


def _plans(schema, overrides=None) -> dict[str, str]:
    return {p.name: p.kind for p in infer_columns(schema, overrides)}


def test_plans_of_a_pandas_parquet_file(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({
        "s": pd.Series(["a", None, "b"], dtype=object), "c": pd.Categorical(["x", "y", "x"]),
        "n": pd.array([1, None, 3], dtype="Int64"), "t": pd.date_range("2020", periods=3, tz="US/Eastern"),
        "b": [True, False, True], "f": [1.0, None, 2.0],
        "d": pd.Series([Decimal("1.10"), Decimal("2.00"), None], dtype=pd.ArrowDtype(pa.decimal128(10, 2)))})
    df.to_parquet(tmp_path / "pd.parquet")
    plans = infer_columns(pq.read_schema(tmp_path / "pd.parquet"))
    assert {p.name: p.kind for p in plans} == {"s": "categorical", "c": "categorical", "n": "numeric",
                                               "t": "datetime", "b": "numeric", "f": "numeric", "d": "numeric"}
    by = {p.name: p for p in plans}
    assert by["s"].by_cardinality and "hashed by cardinality after the statistics pass" in by["s"].reason
    assert not by["c"].by_cardinality and "as float64" in by["d"].reason and "epoch" in by["t"].reason


def test_plans_of_a_polars_parquet_file(tmp_path):
    pl = pytest.importorskip("polars")
    pl.DataFrame({"c": pl.Series(["a", "b"], dtype=pl.Categorical), "s": ["x", None],
                  "t": pl.Series([dt.datetime(2020, 1, 1)] * 2).dt.replace_time_zone("Europe/Paris"),
                  "i": [1, None], "u": pl.Series([1, 2], dtype=pl.UInt16), "l": [[1], [2, 3]],
                  "st": [{"a": 1}, {"a": 2}]}).write_parquet(tmp_path / "pl.parquet")
    assert _plans(pq.read_schema(tmp_path / "pl.parquet")) == {
        "c": "categorical", "s": "categorical", "t": "datetime", "i": "numeric", "u": "numeric",
        "l": "unusable", "st": "unusable"}


def test_plans_of_arrow_types():
    schema = pa.schema({
        "dict": pa.dictionary(pa.int32(), pa.string()), "dict_int": pa.dictionary(pa.int8(), pa.int64()),
        "dict_float": pa.dictionary(pa.int8(), pa.float32()), "ls": pa.large_string(), "sv": pa.string_view(),
        "ts": pa.timestamp("s"), "tz": pa.timestamp("ns", tz="Asia/Tokyo"), "d32": pa.date32(), "d64": pa.date64(),
        "tod": pa.time64("us"), "dur": pa.duration("ms"), "f16": pa.float16(), "u64": pa.uint64(),
        "vec": pa.list_(pa.float32(), 4), "list": pa.list_(pa.int64()), "struct": pa.struct({"a": pa.int8()}),
        "map": pa.map_(pa.string(), pa.int8()), "bin": pa.binary(), "null": pa.null(), "uuid": pa.binary(16)})
    assert _plans(schema) == {
        "dict": "categorical", "dict_int": "categorical", "dict_float": "numeric", "ls": "categorical",
        "sv": "categorical", "ts": "datetime", "tz": "datetime", "d32": "datetime", "d64": "datetime",
        "tod": "datetime", "dur": "datetime", "f16": "numeric", "u64": "numeric", "vec": "numeric",
        "list": "unusable", "struct": "unusable", "map": "unusable", "bin": "unusable", "null": "unusable",
        "uuid": "unusable"}
    reasons = {p.name: p.reason for p in infer_columns(schema)}
    assert reasons["null"] == "null: every value is missing" and "4 numeric features" in reasons["vec"]
    assert all("\n" not in r for r in reasons.values())


def test_overrides():
    schema = pa.schema({"zip": pa.int32(), "city": pa.string(), "id": pa.large_string(), "x": pa.float64(),
                        "flag": pa.bool_(), "cat": pa.dictionary(pa.int8(), pa.int16())})
    plans = {p.name: p for p in infer_columns(schema, {"categorical": ["zip", "flag"], "hash": {"city": 1024},
                                                       "drop": ["id"], "numeric": ["cat"]})}
    assert [plans[c].kind for c in ("zip", "city", "id", "x", "flag", "cat")] == \
        ["categorical", "hashed", "unusable", "numeric", "categorical", "numeric"]
    assert plans["city"].buckets == 1024 and not plans["city"].by_cardinality
    assert plans["id"].reason == "dropped on purpose (--drop; the library's drop=)"
    # (text asked for as numbers: read as numbers, one that is not missing)
    assert infer_columns(schema, {"numeric": ["city"]})[1].kind == "numeric"


@pytest.mark.parametrize("overrides, match", [
    ({"numeric": ["x", "tags"]}, "^--numeric tags: column 'tags' is of type list<item: int8>, not numbers or text "
                                 "\\(--categorical or --hash take other values\\)$"),
    ({"categorical": ["x"]}, "^--categorical x: column 'x' is of type double, which cannot be categorical"),
    ({"hash": {"x": 8}}, "^--hash x: column 'x' is of type double, which cannot be hashed"),
    ({"drop": ["nope"]}, "^--drop names no column 'nope' \\(columns: zip, city, x\\)$"),
    ({"drop": ["cty"]}, "^--drop names no column 'cty' \\(did you mean 'city'\\?\\)$"),
    ({"hash": {"city": 0}}, "positive integer"),
    ({"hash": ["city"]}, "hash is a dict"),
    ({"numeric": "zip"}, "list of column names"),
    ({"categorical": ["zip"], "drop": ["zip"]}, "^--categorical and --drop both name column 'zip': give it to one"),
    ({"embed": ["zip"]}, "unknown key 'embed'"),
])
def test_impossible_overrides_are_named(overrides, match):
    schema = pa.schema({"zip": pa.int32(), "city": pa.string(), "x": pa.float64()})
    if "tags" in str(overrides):
        schema = schema.append(pa.field("tags", pa.list_(pa.int8())))
    with pytest.raises(ConfigError, match=match):
        infer_columns(schema, overrides)


def test_choose_string_kind():
    assert choose_string_kind(1000, 1_000_000, 1000) == ("categorical",
                                                         "1,000 distinct values <= 1,000: categorical")
    assert choose_string_kind(1001, 1_000_000, 1000).kind == "hashed"
    assert choose_string_kind(899_999, 1_000_000, 1000).kind == "hashed"
    choice = choose_string_kind(900_000, 1_000_000, 1000)
    assert choice.kind == "unusable" and "an identifier" in choice.reason
    assert choose_string_kind(50, 50, 1000).kind == "categorical"  # few rows all distinct: still small
    assert choose_string_kind(2_000_000, 1_000_000, 10).kind == "unusable"  # an estimate above rows
    assert choose_string_kind(0, 0, 10).kind == "categorical"
    with pytest.raises(ConfigError, match="rows"):
        choose_string_kind(1, -1, 10)
    with pytest.raises(ConfigError, match="id_fraction"):
        choose_string_kind(1, 1, 10, id_fraction=0)


def test_docstring_examples_run():
    import doctest

    from streamtrain.features import codes, hashing, schema, vocab

    for module in (codes, hashing, schema, vocab):
        assert doctest.testmod(module).failed == 0, module.__name__



# ---------------------------------------------------------------- the distinct-count sketch of dictionaries


@pytest.mark.parametrize("n_values", [50, 5_000])  # below the sketch's k (exact), and above (an estimate)
def test_a_dictionary_column_counts_as_its_values_do(n_values):
    """A dictionary column (Parquet's strings read as they are stored) is sketched from the entries
    its codes use, once each: the same sketch as its values written out, unused, repeated and
    missing entries and missing codes included, over several chunks with their own dictionaries."""
    from streamtrain.features.distinct import DistinctCount

    rng = np.random.default_rng(n_values)
    words = np.array([f"w{i}" for i in range(2 * n_values)], dtype=object)
    chunks, plain = [], []
    for _ in range(3):
        entries = list(rng.permutation(words)) + ["w0", None]  # a repeated entry, a missing one
        codes = rng.integers(0, n_values, 4000).astype(np.int32)  # half the entries never used
        codes[::97] = len(entries) - 1  # codes pointing at the missing entry
        indices = pa.array(codes, mask=np.arange(4000) % 89 == 0)  # missing codes
        chunks.append(pa.DictionaryArray.from_arrays(indices, pa.array(entries, pa.string())))
        plain.append(chunks[-1].cast(pa.string()))
    one = DistinctCount().update(pa.chunked_array(chunks))
    ref = DistinctCount().update(pa.chunked_array(plain))
    assert one.exact == ref.exact == (n_values < 1000)
    np.testing.assert_array_equal(one._mins, ref._mins)
    assert one.estimate() == ref.estimate()


def test_a_dictionary_that_repeats_an_entry_counts_each_value_once():
    # Parquet's dictionaries never repeat an entry; an Arrow body posted to the service may. Its codes
    # counted apart used to give the value twice in the vocabulary, and finalize() then refused it.
    from streamtrain.features.vocab import Vocabulary

    entries = pa.array(["a", "b", "a", None, "c"])
    arr = pa.DictionaryArray.from_arrays(pa.array([0, 2, 1, 2, None, 3, 0, 4]), entries)
    got = Vocabulary().update(arr)
    ref = Vocabulary().update(arr.cast(pa.string()))
    assert got.most_common() == ref.most_common() == [("a", 4), ("b", 1), ("c", 1)]
    assert got.nulls == ref.nulls == 2
    assert got.finalize().values == ref.finalize().values
