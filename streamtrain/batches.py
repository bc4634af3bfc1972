"""A batch iterator over a source, for other frameworks (a PyTorch DataLoader's IterableDataset shape)."""

from __future__ import annotations

import sys
from typing import Any, Iterator

import numpy as np

from .data.loader import Loader, check_budget, window_rows_for
from .data.sampling import Sampler
from .readers import open_dataset

__all__ = ["BatchIterator"]


class BatchIterator:
    """Iterate ``(X, y)`` minibatches of a source with the sampler's shuffling, sharding and
    resumable state. Each ``iter()`` is one epoch; the next ``iter()`` is the next epoch.

    It has the shape of a PyTorch ``IterableDataset``; ``DataLoader(it.as_torch(), batch_size=None)``
    uses it directly (streamtrain imports torch only inside ``as_torch``). When it runs in a
    DataLoader worker, each worker takes a disjoint share of the rows. The file is opened
    lazily in each process.

    Parameters
    ----------
    source : path, Dataset, (X, y) arrays or table
        What ``open_dataset`` opens (with ``features``, ``label``, ``dtype``).
    batch_size : int
        Rows per batch.
    shuffle : {"window", "global", "none"}
        The sampler's shuffle (see ``data.sampling.SHUFFLES``); ``seed`` and the epoch decide it.
    drop_last, replacement, window_mb
        As ``TrainConfig``'s settings of those names.
    rank, world_size : int
        This process's share of the rows (and, inside a DataLoader worker, that worker's).
    scale : "standard", a Scaler, or None
        Batches standardised by one pass over the data, by a trained model's scaler
        (``trainer.scaler``), or left as stored.
    transform : callable, optional
        ``transform(X, y) -> (X, y)``, applied to each batch after scaling.

    Yields
    ------
    X : ndarray, shape (rows, n_features)
    y : ndarray, shape (rows,), or None without a label

    Examples
    --------
    >>> it = BatchIterator("data/breast_cancer.h5", batch_size=100, shuffle="none")
    >>> [len(X) for X, y in it]
    [100, 100, 100, 100, 100, 69]
    """

    def __init__(self, source, batch_size: int = 32, shuffle: str = "window", seed: int = 0,
                 drop_last: bool = False, window_mb: float = 256.0, replacement: bool = False,
                 rank: int = 0, world_size: int = 1, features=None, label: str | None = None,
                 dtype="float32", scale=None, transform=None):
        check_budget(window_mb)
        if isinstance(scale, str) and scale not in ("standard", "none"):
            raise ValueError(f"scale must be 'standard', 'none', a Scaler or None, got {scale!r}")
        self.source, self.features, self.label, self.dtype = source, features, label, dtype
        # scale: "standard" (mean and variance from one pass over the data, as the trainer's), a
        # Scaler (a trained model's: trainer.scaler), or None / "none"; transform(X, y) -> (X, y) after it
        self.scale, self.transform = scale, transform
        self._scaling = None
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.window_mb, self.replacement, self.rank, self.world_size = window_mb, replacement, rank, world_size
        self.epoch, self.position = 0, 0
        self._dataset = None

    def _open(self):
        if self._dataset is None:
            self._dataset = open_dataset(self.source, self.features, self.label, dtype=self.dtype)
        return self._dataset

    def _shard(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        torch = sys.modules.get("torch")  # only if the caller already imported it
        info = torch.utils.data.get_worker_info() if torch is not None else None
        if info is not None:
            rank, world = rank * info.num_workers + info.id, world * info.num_workers
        return rank, world

    def _sampler(self) -> Sampler:
        ds = self._open()
        rank, world = self._shard()
        s = Sampler(ds.bounds, self.batch_size, self.shuffle, self.seed, self.drop_last,
                    window_rows_for(self.window_mb * 2**20, ds), self.replacement, rank, world)
        s.epoch, s.position = self.epoch, self.position
        return s

    def __len__(self) -> int:
        """Batches in an epoch (of this shard)."""
        return len(self._sampler())

    def _standardisation(self):
        """``(mean, factor)`` the loader scales rows with, or None."""
        if self.scale is None or self.scale == "none":
            return None
        if self._scaling is None:
            if self.scale == "standard":
                from .data.scaling import Scaler, scan

                scaler = Scaler.from_stats("standard", scan(self._open()), self.dtype)
            else:
                scaler = self.scale
            self._scaling = (scaler.mean, scaler.scale)
        return self._scaling

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        sampler = self._sampler()
        with Loader(self._open(), sampler, scale=self._standardisation(),
                    transform=self.transform) as loader:  # stops a decoding process, if one was started
            for rows, X, y in loader.iter_epoch():
                self.position += len(rows)
                yield X, y
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Epoch and position: resume with ``load_state_dict`` to get exactly the batches that come next."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "batch_size", "shuffle"):
            if state.get(key, getattr(self, key)) != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]!r}, this iterator {getattr(self, key)!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def as_torch(self):
        """This iterator as a ``torch.utils.data.IterableDataset`` (torch is imported only here).

        A DataLoader decides between map-style and iterable datasets with ``isinstance``,
        so the wrapper subclasses torch's class; use ``DataLoader(it.as_torch(), batch_size=None)``.
        """
        import torch.utils.data

        return _torch_wrapper(torch.utils.data.IterableDataset)(self)

    def __getstate__(self):
        return {**self.__dict__, "_dataset": None}  # reopened in the worker process (the scaling travels)


def _torch_wrapper(base):
    class TorchBatches(base):
        def __init__(self, batches: BatchIterator):
            self.batches = batches

        def __iter__(self):
            # class labels as int64, which torch's losses (F.cross_entropy, nll_loss) insist on
            for X, y in self.batches:
                if y is not None and y.dtype.kind in "iub":
                    y = y.astype(np.int64, copy=False)
                yield X, y

        def __len__(self):
            return len(self.batches)

    return TorchBatches
