"""Trainer: for each batch from the loader, forward, backward, update; per-epoch history; checkpoints.

Exact resume: everything that decides the next update (parameters,
optimiser arrays, the sampler's epoch and position, the running epoch loss)
goes into the checkpoint, and nothing else is random, so a resumed run
produces bitwise the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import TrainConfig
from ..data.loader import Loader, check_budget, start_decoder, window_rows_for
from ..data.sampling import Sampler
from ..data.scaling import DataStats, Scaler, scan
from ..errors import CheckpointError, DataError, Interrupted, TrainingError
from ..io.checkpoint import BackgroundWriter, DirectoryLock
from ..model import ModelUse
from ..nn import minibatch, online
from ..nn.network import PARAM_NAMES, TwoLayerNet
from ..nn.optim import make_optimizer
from ..readers import open_dataset
from ..readers.base import Dataset
from ..readers.subset import HoldoutSplit
from .state import CheckpointState

__all__ = ["Trainer", "infer_task"]

# Integral labels with more distinct values than this are taken as a regression target.
MAX_AUTO_CLASSES = 100


def infer_task(stats: DataStats) -> str:
    """binary / multiclass / regression, from what the labels look like."""
    if stats.label_ndim == 2:
        return "multiclass" if stats.onehot and stats.label_width > 2 else "regression"
    if not stats.label_integral or len(stats.classes) > MAX_AUTO_CLASSES:
        return "regression"
    return "binary" if len(stats.classes) <= 2 else "multiclass"


class Trainer(CheckpointState, ModelUse):
    """Trains a ``TwoLayerNet`` on a dataset; evaluates and predicts with it.

    >>> from streamtrain import Trainer, TrainConfig
    >>> t = Trainer(TrainConfig(hidden=8, epochs=2, batch_size=16))
    >>> history = t.fit("data/breast_cancer.parquet", log=None)
    >>> len(history), t.task
    (2, 'binary')
    """

    def __init__(self, config: TrainConfig | None = None, **settings):
        self.config = config or TrainConfig()
        if settings:
            self.config = TrainConfig.from_dict({**self.config.to_dict(), **settings})
        self.net: TwoLayerNet | None = None
        self.scaler: Scaler | None = None
        self.optimizer = None
        self.task: str | None = None
        self.classes: list = []
        self.feature_names: list[str] = []
        self.selection: str | list[str] | None = None
        self.label_name: str | None = None
        self.history: list[dict[str, Any]] = []
        self.global_step = 0
        self.fingerprint: dict[str, Any] = {}
        self._sampler_state: dict[str, Any] | None = None
        self._epoch_acc = {"loss_sum": 0.0, "n": 0, "seconds": 0.0}
        self._early = {"best_loss": None, "best_epoch": None, "wait": 0}
        self._best_params: dict[str, np.ndarray] | None = None
        self.stop_requested: str | None = None
        self.sampler: Sampler | None = None
        self._last_save = time.monotonic()
        self._writer = BackgroundWriter()  # checkpoints are written beside training
        self._lock, self._lock_checked = None, 0.0

    # -- setting up ---------------------------------------------------------
    def _split(self, source, val, features, label) -> tuple[Dataset, Dataset | None]:
        cfg = self.config
        data = open_dataset(source, features, label, **self._read_options(cfg.dtype))
        if val is not None:
            return data, open_dataset(val, data.selection, data.label_name, **self._read_options(cfg.dtype))
        if cfg.val_fraction:
            return (HoldoutSplit(data, cfg.val_fraction, cfg.seed, "train"),
                    HoldoutSplit(data, cfg.val_fraction, cfg.seed, "val"))
        return data, None

    def _read_options(self, dtype) -> dict:
        """How this run opens data: ``open_dataset``'s keyword arguments."""
        cfg = self.config
        return {"dtype": dtype, "nonfinite": "skip" if cfg.skip_nonfinite else "error",
                "allow_missing_chunks": cfg.allow_missing_chunks}

    def _initialise(self, data: Dataset, log) -> None:
        if data.label_name is None:
            raise DataError(f"{data.path}: no label found; name it with --label")
        self._setup(scan(data), data.n_features, list(data.feature_names), data.label_name, data.selection,
                    data.path, log)

    def _setup(self, stats: DataStats, n_features: int, feature_names, label_name, selection, where, log) -> None:
        """Task, classes, scaler, network and optimiser from the label summary and feature statistics."""
        cfg = self.config
        self.task = infer_task(stats) if cfg.task == "auto" else cfg.task
        if cfg.task == "auto" and log:
            log(f"task: {self.task} (chosen from label {label_name!r}; set --task to override)")
        if self.task == "regression":
            self.classes, n_out = [], stats.label_width
        elif stats.label_ndim == 2:  # one-hot: the columns are the classes
            if not stats.onehot:
                raise DataError(f"{where}: 2-D label {label_name!r} is not one-hot; use --task regression")
            self.classes, n_out = list(range(stats.label_width)), stats.label_width
        else:
            if not stats.label_integral:
                raise DataError(f"{where}: label {label_name!r} has non-integral values; use --task regression")
            self.classes = sorted(stats.classes)
            if self.task == "binary" and len(self.classes) > 2:
                raise DataError(f"{where}: binary task but label has {len(self.classes)} classes")
            n_out = 1 if self.task == "binary" else len(self.classes)
        self.scaler = Scaler.from_stats(cfg.scale, stats, cfg.dtype)
        self.net = TwoLayerNet(n_features, cfg.hidden, n_out, cfg.activation, self.task, cfg.init, cfg.seed, cfg.dtype)
        self.optimizer = make_optimizer(cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum)
        self.feature_names, self.label_name, self.selection = feature_names, label_name, selection

    def partial_fit(self, X, y, classes=None) -> "Trainer":
        """Update the model on the rows given, in order, in minibatches of ``config.batch_size``.

        For pipelines that own the data flow (pure online use). The first call sets the
        model up lazily: scaling statistics come from this first block, and ``classes``
        (all the labels that will ever occur) must be given there unless the block holds
        them all. Checkpoints remain available through ``save``.

        >>> import numpy as np
        >>> t = Trainer(hidden=4, batch_size=8)
        >>> X = np.random.default_rng(0).standard_normal((64, 3))
        >>> t.partial_fit(X, (X[:, 0] > 0).astype(int), classes=[0, 1]).task
        'binary'
        """
        X = np.asarray(X, dtype=self.config.dtype)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise DataError(f"partial_fit: X must be (rows, features) with one label per row; got {X.shape}, {y.shape}")
        if self.net is None:
            stats = DataStats()
            stats.update(X, y, "partial_fit")
            if classes is not None:
                stats.classes |= set(np.asarray(classes).tolist())
            self._setup(stats, X.shape[1], [f"f{j}" for j in range(X.shape[1])], "y", None, "partial_fit", None)
        elif X.shape[1] != self.net.n_in:
            raise DataError(f"partial_fit: {X.shape[1]} features, the model expects {self.net.n_in}")
        cfg = self.config
        T = self.targets(y, "partial_fit")
        self._choose_step()
        for a in range(0, len(X), cfg.batch_size):
            loss = self._train_step(self.scaler.transform(X[a:a + cfg.batch_size]), T[a:a + cfg.batch_size])
            if not math.isfinite(loss):
                raise TrainingError(f"training diverged at batch step {self.global_step + 1} (loss is {loss});"
                                    " lower the learning rate")
            self.global_step += 1
        return self

    def _train_step(self, X: np.ndarray, T: np.ndarray) -> float:
        """Update the parameters on one batch; returns its mean loss plus the penalty, and leaves
        the parameters alone when that is not finite (the caller reports the divergence)."""
        cfg, net = self.config, self.net
        if self._compiled_step and cfg.optimizer == "sgd":
            return minibatch.sgd_step(net.params, X, T, cfg.lr, cfg.l1, cfg.l2, net.activation, self.task)
        if self._compiled_step:
            total, grads = minibatch.loss_and_grads(net.params, X, T, cfg.l1, cfg.l2, net.activation, self.task)
        else:
            loss, penalty, grads = net.loss_and_grads(X, T, cfg.l1, cfg.l2)
            total = loss + penalty
        if math.isfinite(total):
            self.optimizer.step(net.params, grads)
        return total

    def _compiled_step_applies(self) -> bool:
        """Minibatches run in the compiled step (numba and scipy importable; fused with the update
        for plain SGD, gradients for the other optimisers)."""
        return self.config.compiled and minibatch.available()

    def _choose_step(self) -> None:
        self._compiled_step = self._compiled_step_applies()
        if self._compiled_step:
            # before any thread limit is set: it loads scipy's BLAS
            minibatch.load(self.config.dtype, self.config.optimizer == "sgd")

    @property
    def _identity_classes(self) -> bool:
        # Checked per batch: remember the answer for the current class list.
        key = id(self.classes), len(self.classes)
        if getattr(self, "_identity_key", None) != key:
            self._identity_key = key
            self._identity_value = self.classes == list(range(len(self.classes)))
        return self._identity_value

    def targets(self, y: np.ndarray, where: str = "") -> np.ndarray:
        """Labels as the network wants them: class indices, or float values for regression."""
        if self.task == "regression":
            return y.astype(self.net.dtype, copy=False)
        if y.ndim == 2:  # one-hot rows -> class indices
            return y.argmax(axis=1)
        if self._identity_classes and y.dtype.kind in "iu" and y.ndim == 1:
            # Classes 0..K-1 are their own indices: a range check replaces the lookup.
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                bad = y[(y < 0) | (y >= len(self.classes))][0].item()
                raise DataError(f"{where}: label value {bad!r} is not one of the classes seen in training {self.classes}")
            return y
        idx = np.searchsorted(self.classes, y)
        idx = np.minimum(idx, len(self.classes) - 1)
        if not np.array_equal(np.asarray(self.classes)[idx], y):
            bad = y[np.asarray(self.classes)[idx] != y][0].item()
            raise DataError(f"{where}: label value {bad!r} is not one of the classes seen in training {self.classes}")
        return idx

    # -- training -------------------------------------------------------------
    def fit(self, source, val=None, *, features=None, label=None, checkpoint_dir=None,
            resume: bool = False, force: bool = False, callbacks: Iterable = (),
            log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done; returns the history (one dict per epoch).

        With ``checkpoint_dir`` a checkpoint is written at the end of every
        epoch (and every ``checkpoint_every`` batches); with ``resume`` the run
        continues from the newest valid checkpoint there, if any.
        """
        self.stop_requested = None
        cfg = self.config
        check_budget(cfg.window_mb)
        if cfg.batch_size > 1 and self._compiled_step_applies():  # (batch_size=1 has its own compiled loop)
            # overlaps opening the data, the statistics pass, a checkpoint's loading
            minibatch.load_in_background(cfg.dtype, cfg.optimizer == "sgd")
        train, val_ds = self._split(source, val, features, label)
        # Started first, so that its start-up overlaps the statistics pass and checkpoint loading.
        process = start_decoder(train, self._sampler(train), decoder=cfg.decoder, workers=cfg.decoder_workers or None)
        # The directory lock is taken before reading any checkpoint, and held until training ends.
        lock = DirectoryLock(checkpoint_dir) if checkpoint_dir else contextlib.nullcontext()
        self._lock = lock if checkpoint_dir else None
        try:
            with lock:
                self._prepare(train, checkpoint_dir, resume, force, log)
                try:
                    with self._signals_stop_training():
                        self._run(train, val_ds, self.sampler, checkpoint_dir, list(callbacks), log, process)
                finally:
                    self._writer.wait()  # the last checkpoint is on disk before the lock is released
            if self.stop_requested in ("SIGINT", "SIGTERM"):
                where = (f"; checkpoint written to {checkpoint_dir}" if checkpoint_dir
                         else " (no --checkpoint-dir: nothing saved)")
                raise Interrupted(f"interrupted by {self.stop_requested} after batch step {self.global_step}{where}",
                                  self.stop_requested)
        finally:
            if process is not None:
                process.close()
            train.close()
            if val_ds is not None:
                val_ds.close()
        return self.history

    def _prepare(self, train: Dataset, checkpoint_dir, resume: bool, force: bool, log) -> None:
        """Resume from the newest valid checkpoint, or initialise; then build the sampler."""
        cfg = self.config
        if not (resume and checkpoint_dir and self._resume(checkpoint_dir, train, force, log)):
            if resume and log:
                log(f"no checkpoint in {checkpoint_dir}; starting fresh")
            self._initialise(train, log)
            self.fingerprint = train.fingerprint()
        self.sampler = self._sampler(train)
        if self._sampler_state:
            self.sampler.load_state_dict(self._sampler_state)

    def _sampler(self, train: Dataset) -> Sampler:
        cfg = self.config
        return Sampler(train.bounds, cfg.batch_size, cfg.shuffle, cfg.seed, cfg.drop_last,
                       window_rows=window_rows_for(cfg.window_mb * 2**20, train), replacement=cfg.replacement)

    @contextlib.contextmanager
    def _signals_stop_training(self):
        """While training, SIGINT and SIGTERM ask the loop to stop after its current batch."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum, frame):
            self.stop_requested = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, train, val_ds, sampler, checkpoint_dir, callbacks, log, process=None) -> None:
        cfg = self.config
        online = self._compiled_online(callbacks)
        if not online:
            self._choose_step()
        prepare, scale = self._batch_prep(train.path)
        loader = Loader(train, sampler, whole_groups=online, transform=prepare, decoder=cfg.decoder, process=process,
                        scale=scale, workers=cfg.decoder_workers or None)
        # Scaling and label encoding run per group in the loader thread unless they are per batch.
        self._prepared = prepare is not None
        params = self.net.params
        with loader, loader.sharing_cores():
            self._run_epochs(train, val_ds, loader, sampler, online, checkpoint_dir, callbacks, log)
        if self._early_stopped() and self._best_params is not None:
            for k in PARAM_NAMES:
                params[k][...] = self._best_params[k]
            if log:
                log(f"early stopping: restored the parameters of epoch {self._early['best_epoch']}")

    def _batch_prep(self, where):
        """What the loader applies to whole groups: ``(transform, scale)``, where ``transform(X, y)
        -> (scaled X, targets)`` and ``scale`` is the standard scaling's ``(mean, factor)``, which
        the loader applies in place to the rows it gathers (the transform then leaves X alone). ``(None, None)``
        when scaling depends on the batch (batch-center) and stays in the training loop."""
        if self.config.scale == "batch-center":
            return None, None
        scaler = self.scaler
        if scaler.kind == "standard" and scaler.mean is not None:
            return (lambda X, y: (X, self.targets(y, where))), (scaler.mean, scaler.scale)

        def prepare(X, y):
            return scaler.transform(X), self.targets(y, where)
        return prepare, None

    def _inputs(self, X, y, where):
        """A batch's scaled features and targets (the loader may have made them already)."""
        if self._prepared:
            return X, y
        return self.scaler.transform(X), self.targets(y, where)

    def _run_epochs(self, train, val_ds, loader, sampler, online, checkpoint_dir, callbacks, log) -> None:
        cfg = self.config
        while sampler.epoch < cfg.epochs and not self._early_stopped():
            started = time.perf_counter()
            acc = self._epoch_acc
            # A diverging run overflows on its way to inf/NaN; the finite check below reports it.
            with np.errstate(over="ignore", invalid="ignore"):
                run = self._run_epoch_online if online else self._run_epoch
                done = run(train, loader, sampler, acc, started, checkpoint_dir, callbacks)
            if done is None:
                return
            acc["seconds"] += time.perf_counter() - done
            record = self._end_epoch(sampler, val_ds)
            if log:
                log(format_epoch(record, cfg.epochs))
            for cb in callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self, record)
            if checkpoint_dir:
                # The checkpoint first: a full disk that refuses the metrics line must not cost it.
                path = self._save(checkpoint_dir, sampler)
                self._append_metrics(checkpoint_dir, record)
                if cfg.keep_best and record.get("val_loss") is not None and self._early["best_epoch"] == record["epoch"]:
                    # The best epoch by validation loss, kept apart from the rotation.
                    self._writer.wait()
                    shutil.copyfile(path, Path(checkpoint_dir) / ".best.npz.tmp")
                    os.replace(Path(checkpoint_dir) / ".best.npz.tmp", Path(checkpoint_dir) / "best.npz")

    def _run_epoch(self, train, loader, sampler, acc, started, checkpoint_dir, callbacks) -> float | None:
        """Train on the rest of the epoch; returns the time the last interval started, or None if stopped."""
        cfg, step = self.config, self._train_step
        for rows, X, y in loader.iter_epoch():
            sampler.advance(len(rows))
            n = len(X)  # fewer than len(rows) when rows with NaN/Inf are skipped
            if n == 0:
                continue
            loss = step(*self._inputs(X, y, train.path))
            if not math.isfinite(loss):
                raise TrainingError(
                    f"training diverged at epoch {sampler.epoch + 1}, batch step {self.global_step + 1} "
                    f"(loss is {loss}); lower --lr or check the data for extreme values")
            acc["loss_sum"] += loss * n
            acc["n"] += n
            self.global_step += 1
            for cb in callbacks:
                if hasattr(cb, "on_batch_end"):
                    cb.on_batch_end(self, rows, loss)
            due = cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
            started = self._checkpoint_if_due(checkpoint_dir, sampler, acc, started, due)
            if self.stop_requested:
                return None
        return started

    def _append_metrics(self, checkpoint_dir, record) -> None:
        """One JSON line per epoch in DIR/metrics.jsonl, for any tool to plot."""
        path = Path(checkpoint_dir) / "metrics.jsonl"
        try:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as e:
            raise CheckpointError(f"{path}: cannot write ({e.strerror or e}); the checkpoint of epoch "
                                  f"{record['epoch']} is saved, so --resume continues from it") from None

    def _checkpoint_if_due(self, checkpoint_dir, sampler, acc, started: float, due) -> float:
        """Write a checkpoint when the batch interval, the time interval or a stop request says so;
        the write is kept out of the epoch's training time. Returns the new interval start."""
        if checkpoint_dir and time.monotonic() - self._lock_checked > 1.0:  # cheap: two stats a second
            self._lock.check()
            self._lock_checked = time.monotonic()
        if checkpoint_dir and (due or self._time_due() or self.stop_requested):
            acc["seconds"] += time.perf_counter() - started
            self._save(checkpoint_dir, sampler)
            return time.perf_counter()
        return started

    def _time_due(self) -> bool:
        """True when --checkpoint-seconds have passed since the last checkpoint."""
        secs = self.config.checkpoint_seconds
        return bool(secs) and time.monotonic() - self._last_save >= secs

    def _compiled_online(self, callbacks) -> bool:
        """Whether batch_size=1 runs in the compiled per-sample loop (plain SGD, no per-batch callbacks)."""
        cfg = self.config
        return (cfg.batch_size == 1 and cfg.compiled and cfg.optimizer == "sgd" and cfg.scale != "batch-center"
                and online.available() and not any(hasattr(cb, "on_batch_end") for cb in callbacks))

    def _run_epoch_online(self, train, loader, sampler, acc, started, checkpoint_dir, callbacks) -> float | None:
        """As ``_run_epoch`` for batch_size=1, a block of single-sample updates per compiled call."""
        cfg, params = self.config, self.net.params
        every = cfg.checkpoint_every
        for rows, X, y in loader.iter_epoch():
            sampler.advance(len(rows))
            n = len(X)
            if n == 0:
                continue
            before = {k: v.copy() for k, v in params.items()}
            loss_sum = online.sgd_online(params, *self._inputs(X, y, train.path),
                                         cfg.lr, cfg.l1, cfg.l2, self.net.activation, self.task)
            if not (np.isfinite(loss_sum) and all(np.isfinite(v).all() for v in params.values())):
                for k, v in before.items():  # leave the last good state
                    params[k][...] = v
                raise TrainingError(
                    f"training diverged at epoch {sampler.epoch + 1}, within steps {self.global_step + 1}-"
                    f"{self.global_step + n}; lower --lr or check the data for extreme values")
            acc["loss_sum"] += loss_sum
            acc["n"] += n
            crossed = every and (self.global_step + n) // every > self.global_step // every
            self.global_step += n
            started = self._checkpoint_if_due(checkpoint_dir, sampler, acc, started, crossed)
            if self.stop_requested:
                return None
        return started

    def _end_epoch(self, sampler: Sampler, val_ds) -> dict[str, Any]:
        acc = self._epoch_acc
        record = {"epoch": sampler.epoch + 1, "train_loss": acc["loss_sum"] / max(acc["n"], 1),
                  "samples": acc["n"], "seconds": acc["seconds"],
                  "samples_per_s": acc["n"] / acc["seconds"] if acc["seconds"] > 0 else None}
        if val_ds is not None:
            result = self.evaluate(val_ds)
            record["val_loss"] = result["loss"]
            key = "r2" if self.task == "regression" else "accuracy"
            record[f"val_{key}"] = result[key]
            self._update_early_stopping(record)
        self.history.append(record)
        sampler.next_epoch()
        self._epoch_acc = {"loss_sum": 0.0, "n": 0, "seconds": 0.0}
        return record

    def _update_early_stopping(self, record) -> None:
        early = self._early
        if early["best_loss"] is None or record["val_loss"] < early["best_loss"]:
            early.update(best_loss=record["val_loss"], best_epoch=record["epoch"], wait=0)
            if self.config.early_stopping:
                self._best_params = {k: v.copy() for k, v in self.net.params.items()}
        else:
            early["wait"] += 1

    def _early_stopped(self) -> bool:
        patience = self.config.early_stopping
        return bool(patience) and self._early["wait"] >= patience

def format_epoch(r: dict[str, Any], epochs: int) -> str:
    """The one-line per-epoch summary."""
    parts = [f"epoch {r['epoch']}/{epochs}", f"train_loss {r['train_loss']:.4f}"]
    if "val_loss" in r:
        parts.append(f"val_loss {r['val_loss']:.4f}")
    for key in ("val_accuracy", "val_r2"):
        if key in r:
            parts.append(f"{key} {r[key]:.4f}")
    if r.get("samples_per_s"):
        parts.append(f"{r['samples_per_s']:,.0f} samples/s")
    return "  ".join(parts)
