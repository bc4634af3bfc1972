"""streamtrain.features: stable hashing against a pure-Python reference, bounded mergeable
vocabularies and their codes, and the column plans of schemas written by pandas, polars and pyarrow."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain.errors import ConfigError, DataError
from streamtrain.features import bucket, hash64

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
    from .test_layout import _imports

    deps = {d for m, ds in _imports().items() if m.startswith("streamtrain.features") for d in ds}
    assert {d for d in deps if not d.startswith("streamtrain.features")} == {"streamtrain.errors"}

