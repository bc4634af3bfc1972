"""A deterministic hash-based hold-out split of a dataset, computed chunk by chunk, never loaded whole."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Dataset

__all__ = ["holdout_mask", "HoldoutSplit"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# Per byte value: its set bits, and the position of its k-th set bit (8: none).
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], np.int64)
_SELECT = np.full((256, 8), 8, np.int64)
for _b in range(256):
    _bits = [i for i in range(8) if _b >> i & 1]
    _SELECT[_b, :len(_bits)] = _bits


def holdout_mask(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the rows that belong to the hold-out: a hash of (row, seed) below ``fraction``."""
    # splitmix64: a cheap, well-mixed hash; uint64 array arithmetic wraps silently (numpy scalar
    # arithmetic warns instead, so the seed's term is wrapped in Python first: the same value).
    offset = ((seed & 0xFFFFFFFF) * int(_GOLDEN) + int(_GOLDEN)) % (1 << 64)
    x = rows.astype(np.uint64) + np.uint64(offset)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < fraction


class HoldoutSplit(Dataset):
    """The training part (``part="train"``) or hold-out part (``"val"``) of a dataset.

    Membership is a hash of the row number, so it is the same on every run and
    machine; only per-chunk counts are kept in memory. Where the parent gathers rows in place
    (uncompressed HDF5, arrays), so does the split: its rows are mapped to the parent's by a
    bitmask of each 64 parent rows and a running count (a quarter byte per row), so a shuffled
    gather stays one vectorised copy instead of reading chunks.
    """

    def __init__(self, parent: Dataset, fraction: float, seed: int = 0, part: str = "train"):
        if not 0.0 < fraction < 1.0:
            raise DataError(f"{parent.path}: validation fraction must be between 0 and 1, got {fraction}")
        if part not in ("train", "val"):
            raise ValueError("part must be 'train' or 'val'")
        super().__init__(parent.cache_bytes, parent.dtype)
        self.parent, self.fraction, self.seed, self.part = parent, float(fraction), int(seed), part
        self.nonfinite = parent.nonfinite
        self.path, self.format = parent.path, parent.format
        self.feature_names, self.label_name = parent.feature_names, parent.label_name
        self.encoding = parent.encoding
        counts, parents = [], []
        for c in range(parent.n_chunks):
            k = int(self._keep(c).sum())
            if k:
                counts.append(k)
                parents.append(c)
        self._parents = np.asarray(parents, dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.n_rows = int(self.bounds[-1])
        if self.n_rows == 0:
            raise DataError(f"{parent.path}: the {part} split of fraction {fraction} is empty")
        if parent.reopen is not None:  # a decoding process opens the file and takes the same split
            split = {"fraction": self.fraction, "seed": self.seed, "part": part}
            self.reopen = {**parent.reopen, "splits": [*parent.reopen.get("splits", []), split]}

    @property
    def capabilities(self):
        return self.parent.capabilities

    def _rank_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """``(masks, ends, before, first, step)`` per 64 parent rows: the bits of this part's rows,
        their running count through each byte packed in the bytes of a uint64, and how many of
        this part's rows come before the word; ``first[j]``: the word of this part's row
        ``j * step``, where ``step`` is about one word's worth of rows (built on first use)."""
        got = self.__dict__.get("_ranks")
        if got is None:
            n = self.parent.n_rows
            bits = np.zeros(-(-n // 64) * 64, dtype=bool)
            for c in range(self.parent.n_chunks):
                bits[self.parent.bounds[c]:self.parent.bounds[c + 1]] = self._keep(c)
            masks = np.packbits(bits, bitorder="little").view(np.uint64)
            ends = np.cumsum(_POPCOUNT[masks.view(np.uint8)].reshape(-1, 8), axis=1).astype(np.uint8)
            before = np.concatenate([[0], np.cumsum(ends[:, 7], dtype=np.int64)])
            step = max(1, int(64 * before[-1] / n))
            # (a binary search per row costs 10x more than this table and a step or two forward)
            first = np.searchsorted(before, np.arange(0, before[-1], step), side="right") - 1
            got = self._ranks = (masks, np.ascontiguousarray(ends).view(np.uint64).ravel(), before, first, step)
        return got

    def parent_rows(self, rows: np.ndarray) -> np.ndarray:
        """The parent's row number of each of this split's ``rows`` (any order)."""
        masks, ends, before, first, step = self._rank_map()
        word = first[rows // step]
        while True:  # forward to the word that holds each row
            ahead = before[word + 1] <= rows
            if not ahead.any():
                break
            word += ahead
        k = (rows - before[word]).astype(np.uint64)  # the k-th of this part's rows within the word
        e = ends[word]
        # How many of the word's 8 running counts are <= k, all 8 bytes at once ("count bytes less
        # than k + 1" on packed bytes; counts are <= 64, so no byte overflows): the byte holding row k.
        lo7, ones, high = np.uint64(0x7F7F7F7F7F7F7F7F), np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)
        flags = ((ones * (np.uint64(127) + k + np.uint64(1)) - (e & lo7)) & ~e & high) >> np.uint64(7)
        byte = ((flags * ones) >> np.uint64(56)).astype(np.int64)
        shift = (byte * 8).astype(np.uint64)
        prior = np.where(byte > 0, (e << (np.uint64(64) - shift)) >> np.uint64(56), np.uint64(0))
        octet = ((masks[word] >> shift) & np.uint64(0xFF)).astype(np.int64)
        return word * 64 + byte * 8 + _SELECT.ravel()[octet * 8 + (k - prior).astype(np.int64)]

    def _read_rows(self, rows):
        if rows.size and self.parent.capabilities.in_place:
            return self.parent.gather(self.parent_rows(rows))  # in place: any order, no sort
        return super()._read_rows(rows)

    def prefetch(self, i: int) -> None:
        if self.parent.capabilities.in_place:
            self.parent.prefetch(int(self._parents[i]))
        else:
            super().prefetch(i)

    def release(self) -> None:
        self.parent.release()

    def set_budget(self, nbytes: int) -> None:
        self.parent.set_budget(nbytes)

    def _keep(self, c: int) -> np.ndarray:
        rows = np.arange(self.parent.bounds[c], self.parent.bounds[c + 1], dtype=np.int64)
        mask = holdout_mask(rows, self.fraction, self.seed)
        return mask if self.part == "val" else ~mask

    def _load_chunk(self, i: int):
        c = int(self._parents[i])
        # The parent applies its NaN/Inf policy, so errors name the row of the file.
        # With "skip" this split's own check then marks the NaN/Inf rows, keeping row counts aligned.
        X, y, _ = self.parent.load_chunk(c)
        keep = self._keep(c)
        return X[keep], None if y is None else y[keep]

    def _load_labels(self, i: int):
        c = int(self._parents[i])
        y = self.parent._load_labels(c)
        return None if y is None else y[self._keep(c)]

    @property
    def selection(self):
        return self.parent.selection

    def label_dtype(self):
        return self.parent.label_dtype()

    def fingerprint(self):
        return {**self.parent.fingerprint(), "split": {"part": self.part, "fraction": self.fraction,
                                                       "seed": self.seed}}

    def stamp_soon(self) -> None:
        self.parent.stamp_soon()  # (its fingerprint is the parent's)

    def close(self):
        super().close()
        self.parent.close()
