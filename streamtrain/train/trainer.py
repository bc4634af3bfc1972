"""Trainer: sets a run up (data, model, state, run directory), runs the loop with its hooks, and
uses the model. A facade: the work is in ``model``, ``train.state``, ``train.update``,
``train.loop``, ``train.hooks`` and ``io.rundir``.

``fit`` starts a new run each time it is called, as scikit-learn's estimators do (a history
of 1, 2, 3, then 1, 2, 3 never arises: each ``fit`` returns its own run's history); to
continue a run, ``fit(..., checkpoint_dir=..., resume=True)``, or ``partial_fit`` on new rows.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import RESUME_MAY_CHANGE, TrainConfig
from ..data.loader import Loader, check_budget, start_decoder, window_rows_for
from ..data.sampling import Sampler
from ..data.scaling import DataStats, scan
from ..errors import CheckpointError, ConfigError, DataError, Interrupted, StreamtrainError, TrainingError, os_reason
from ..io.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from ..io.outputs import check_apart
from ..io.rundir import RunDirectory
from ..model import Model
from ..nn import minibatch
from ..progress import DEFAULT_EVERY, Progress
from ..readers import ArrayDataset, open_dataset
from ..readers.base import Dataset
from ..readers.subset import HoldoutSplit
from .distributed import LOCAL, Communicator, communicator
from .hooks import (
    Checkpointer,
    DirectoryWatch,
    DivergenceGuard,
    EarlyStopping,
    EpochLog,
    MetricsLog,
    ProgressBar,
    ProgressLines,
    RanksAgree,
    StopOnSignals,
    Validation,
)
from .loop import Loop
from .schema import TRAINER
from .state import TrainState, checkpoint_contents, make_run_optimizer, restore
from .update import Update, choose_update, divergence

__all__ = ["Trainer"]

# The library's messages (set up logging to see them: logging.basicConfig(level=logging.INFO)).
_LOG = logging.getLogger("streamtrain")


class Trainer:
    """Trains a ``TwoLayerNet`` on a dataset; evaluates and predicts with it.

    ``Trainer(config)`` takes every setting from ``config``; ``Trainer(hidden=8, ...)`` takes
    the settings named and defaults for the rest, and when resuming a run the rest come from
    its checkpoint.

    >>> from streamtrain import Trainer, TrainConfig
    >>> t = Trainer(TrainConfig(hidden=8, epochs=2, batch_size=16))
    >>> history = t.fit("data/breast_cancer.parquet", log=None)
    >>> len(history), t.task
    (2, 'binary')
    """

    def __init__(self, config: TrainConfig | None = None, **settings):
        if config is None:
            self.config, self.given = TrainConfig(**settings), set(settings)
        else:
            self.config = TrainConfig.from_dict({**config.to_dict(), **settings}) if settings else config
            self.given = None  # every setting was chosen
        self.model: Model | None = None
        self.optimizer = None
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []
        self.sampler: Sampler | None = None
        self.stepper: Update | None = None
        self.fingerprint: dict[str, Any] = {}
        self.stop_requested: str | None = None
        self.log_every = DEFAULT_EVERY
        self.weight: str | None = None
        self.last_loss: float | None = None
        self.rundir: RunDirectory | None = None
        self.comm: Communicator = LOCAL

    # -- the model's parts, for convenience ------------------------------------
    net = property(lambda self: None if self.model is None else self.model.net)
    scaler = property(lambda self: None if self.model is None else self.model.scaler)
    task = property(lambda self: None if self.model is None else self.model.task)
    classes = property(lambda self: [] if self.model is None else self.model.classes)
    feature_names = property(lambda self: [] if self.model is None else self.model.feature_names)

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def summary(self) -> dict[str, Any] | None:
        """The record of the epoch whose parameters the model holds (the best one, where early
        stopping restored it; else the last)."""
        best = self.state.restored_best
        chosen = [h for h in self.history if h.get("epoch") == best] if best else []
        return chosen[-1] if chosen else (self.history[-1] if self.history else self.state.record)

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after its current update (hooks call this; so do SIGINT and SIGTERM)."""
        self.stop_requested = reason

    def progress(self) -> tuple[int, int, int]:
        """``(global step, epoch, position in the epoch)``."""
        s = self.sampler
        return self.state.global_step, (s.epoch if s else 0), (s.position if s else 0)

    # -- training ---------------------------------------------------------------
    def fit(self, source, val=None, *, features=None, label=None, weight=None, checkpoint_dir=None, resume: bool = False,
            force: bool = False, overwrite: bool = False, callbacks: Iterable = (),
            log: Callable[[str], None] | None = _LOG.info, log_every: float = DEFAULT_EVERY,
            distributed: str | Communicator = "auto") -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done; returns the history (one dict per epoch).

        With ``checkpoint_dir`` a checkpoint is written at the end of every epoch (and every
        ``checkpoint_every`` batches or ``checkpoint_seconds``); the directory holds one run:
        ``resume`` continues the run there, ``overwrite`` replaces it. ``callbacks`` are hooks
        (see ``streamtrain.train.hooks``). ``weight`` names a column whose values weigh each row's
        loss (or, with arrays, holds those values). ``log`` hears what happens (a line per epoch; on long
        passes a line every ``log_every`` seconds, or a bar on a terminal).

        ``distributed``: "auto" trains data-parallel on MPI where an MPI launcher started several
        processes (each reads its slice of every global batch; one allreduce per step; rank 0
        logs and writes the checkpoints), "none" alone, "mpi" on MPI; or a ``Communicator``.
        """
        self.log_every = log_every
        comm = self.comm = distributed if isinstance(distributed, Communicator) else communicator(distributed)
        if comm.rank != 0:
            log = None  # one voice: rank 0's
        self._check_settings(val is not None, resume, overwrite, checkpoint_dir)
        if checkpoint_dir is not None:  # before its lock file is made: the data's place is not the run's
            check_apart(checkpoint_dir, [source, val], "checkpoint directory",
                        "give --checkpoint-dir a directory apart from the data")
        check_budget(self.config.window_mb)
        self.model, self.optimizer, self.state, self.history = None, None, TrainState(), []
        self.stop_requested, self.fingerprint = None, {}
        # Rank 0 alone owns the run directory; the others never touch it.
        rundir = RunDirectory(checkpoint_dir) if checkpoint_dir and comm.rank == 0 else None
        train = val_ds = process = None
        try:
            # The directory lock is taken before reading any checkpoint, and held until training ends.
            with rundir or contextlib.nullcontext():
                found = self._claim_everywhere(rundir, resume, overwrite, log)
                if found is not None:
                    self._adopt_settings(found, force)
                    saved_weight = found[2]["model"].get("weight")
                    if weight is None or weight == saved_weight:
                        weight = saved_weight  # the run's weight column, like its settings
                    elif isinstance(weight, str):
                        raise CheckpointError(f"{found[0]}: the run weighs rows by {saved_weight!r}, not {weight!r}")
                cfg = self.config
                if cfg.batch_size > 1 and cfg.compiled and minibatch.available():
                    # overlaps opening the data, the statistics pass, a checkpoint's restoring
                    minibatch.load_in_background(cfg.dtype, cfg.optimizer == "sgd" and self.comm.size == 1)
                train, val_ds = self._open(source, val, features, label, weight, log)
                self.sampler = self._make_sampler(train)
                # Started before the statistics pass or the restore, so that its start-up overlaps them.
                process = start_decoder(train, self.sampler, cfg.decoder, cfg.decoder_workers or None,
                                        self.comm.local_size)
                if found is not None:
                    self._resume(found, train, rundir, force, log)
                else:
                    if resume and log:
                        log(f"no checkpoint in {checkpoint_dir}; starting fresh")
                    self._initialise(train, log)
                self.rundir = rundir
                hooks = self._hooks(val_ds, rundir, list(callbacks), log)
                try:
                    self._train(train, process, hooks)
                finally:
                    for h in hooks:
                        if hasattr(h, "close"):
                            h.close(self)
            if self.stop_requested in ("SIGINT", "SIGTERM"):
                where = (f"; checkpoint written to {checkpoint_dir}" if checkpoint_dir
                         else " (no --checkpoint-dir: nothing saved)")
                raise Interrupted(f"interrupted by {self.stop_requested} after batch step {self.global_step}{where}",
                                  self.stop_requested)
        finally:
            for resource in (process, train, val_ds):
                if resource is not None:
                    resource.close()
        return self.history

    def _check_settings(self, has_val: bool, resume: bool, overwrite: bool, checkpoint_dir) -> None:
        """Refuse, before any data is read, settings that would do nothing or contradict each other."""
        cfg = self.config
        if resume and overwrite:
            raise ConfigError("resume and overwrite contradict each other: give one")
        if self.comm.size > 1 and cfg.batch_size == 1:
            raise ConfigError(f"batch_size 1 on {self.comm.size} processes would make an allreduce per row: train "
                              "online on one process (its compiled per-sample loop does 500k+ rows/s), or give a "
                              f"batch of at least {self.comm.size} rows")
        if (resume or overwrite) and not checkpoint_dir:
            raise ConfigError(f"{'resume' if resume else 'overwrite'} needs a checkpoint directory")
        validation = has_val or cfg.val_fraction > 0
        watched = cfg.early_stopping_metric.startswith("val_")
        for name, on in (("early_stopping", cfg.early_stopping), ("keep_best", cfg.keep_best)):
            if on and watched and not validation:
                raise ConfigError(f"{name} needs validation data (--val or --val-fraction): without it, it does nothing")
        if cfg.early_stopping_metric.endswith("_r2") and cfg.task in ("binary", "multiclass") or \
                cfg.early_stopping_metric.endswith("_accuracy") and cfg.task == "regression":
            raise ConfigError(f"early_stopping_metric: a {cfg.task} run has no {cfg.early_stopping_metric}")

    def _open(self, source, val, features, label, weight=None, log=None) -> tuple[Dataset, Dataset | None]:
        cfg = self.config
        opts = {"dtype": cfg.dtype, "nonfinite": "skip" if cfg.skip_nonfinite else "error",
                "allow_missing_chunks": cfg.allow_missing_chunks}
        self.weight = None
        if weight is not None and not isinstance(weight, str):  # per-row values for (X, y) arrays
            if not (isinstance(source, tuple) and len(source) == 2):
                raise DataError("per-row weights go with (X, y) arrays; for a file, name its weight column")
            X, y = np.asarray(source[0]), source[1]
            w = np.asarray(weight, dtype=np.float64).reshape(-1)
            if X.ndim != 2 or len(w) != len(X):
                raise DataError(f"sample weights: {len(w)} values for {len(X)} rows")
            source = ArrayDataset(np.column_stack([X, w]), y, dtype=cfg.dtype,
                                  feature_names=[f"f{j}" for j in range(X.shape[1])] + ["sample_weight"])
            weight = "sample_weight"
        data = open_dataset(source, features, label, **opts)
        if weight is not None:
            data = self._with_weight(source, data, features, label, weight, opts)
            self.weight = weight
        if cfg.cache_dir:
            data = self._decoded(data, log)
        if val is not None:
            return data, open_dataset(val, data.selection, data.label_name, **opts)
        if cfg.val_fraction:
            return (HoldoutSplit(data, cfg.val_fraction, cfg.seed, "train"),
                    HoldoutSplit(data, cfg.val_fraction, cfg.seed, "val"))
        return data, None

    def _decoded(self, data: Dataset, log) -> Dataset:
        """``data`` read from its decoded copy in ``cache_dir``: rank 0 makes it (if it is not there
        yet) while the others wait, then each opens it (or, on a machine of its own, makes its own)."""
        from ..readers.decoded import decoded_copy

        cfg, comm = self.config, self.comm
        if comm.rank == 0:
            data = decoded_copy(data, cfg.cache_dir, cfg.cache_max_gb, log)
        comm.barrier()
        if comm.rank != 0:
            data = decoded_copy(data, cfg.cache_dir, cfg.cache_max_gb, None)
        return data

    @staticmethod
    def _with_weight(source, data: Dataset, features, label, weight: str, opts: dict) -> Dataset:
        """The dataset read with the weight column after the features (one column per feature)."""
        if list(data.feature_names)[-1:] == [weight] and data.format == "memory":
            return data
        if isinstance(data.selection, str):
            raise DataError(f"{data.path}: a weight column goes with one column per feature (Parquet, Zarr or "
                            f"HDF5 columns), not a 2-D features array ({data.selection!r})")
        names = [n for n in data.feature_names if n != weight]
        data.close()
        return open_dataset(source, names + [weight], label, **opts)

    def _claim_everywhere(self, rundir, resume: bool, overwrite: bool, log):
        """``_claim`` on rank 0; the other processes get its outcome: the checkpoint to resume from
        (its bytes, validated again by each), or the same refusal."""
        comm = self.comm
        if comm.size == 1:
            return self._claim(rundir, resume, overwrite, log)
        outcome, found = None, None
        if comm.rank == 0:
            try:
                found = self._claim(rundir, resume, overwrite, log)
                outcome = {"path": None if found is None else str(found[0])}
            except StreamtrainError as e:
                outcome = {"error": str(e), "kind": type(e).__name__}
                comm.broadcast(outcome)
                raise
        outcome = comm.broadcast(outcome)
        if "error" in outcome:
            raise {"ConfigError": ConfigError, "DataError": DataError}.get(outcome["kind"], CheckpointError)(
                outcome["error"])
        if outcome["path"] is None:
            return None
        data = comm.broadcast_bytes(Path(found[0]).read_bytes() if comm.rank == 0 else None)
        if comm.rank == 0:
            return found
        arrays, meta = load_checkpoint(io.BytesIO(data), TRAINER)
        return Path(outcome["path"]), arrays, meta

    def _claim(self, rundir: RunDirectory | None, resume: bool, overwrite: bool, log):
        """The checkpoint to resume from (or None), the directory made this run's."""
        if rundir is None:
            return None
        if resume:
            return rundir.resume_point(TRAINER, warn=log and (lambda m: log(f"warning: {m}")))
        if rundir.holds_run():
            if not overwrite:
                raise CheckpointError(f"{rundir.path}: holds another run's checkpoints; pass --resume to continue "
                                      "it, or --overwrite to replace it (or use another --checkpoint-dir)")
            rundir.clear()
        rundir.start_metrics()
        return None

    def _adopt_settings(self, found, force: bool) -> None:
        """The run's settings from its checkpoint, with those given here where they may change."""
        path, _, meta = found
        saved = TrainConfig.from_dict(meta["config"])
        mine = self.config
        changed = [k for k in ("hidden", "activation", "dtype") if getattr(saved, k) != getattr(mine, k)
                   and (self.given is None or k in self.given)]
        if changed:  # not even --force: the saved parameters have another shape
            k = changed[0]
            raise CheckpointError(f"{path}: cannot resume with another {k} ({getattr(saved, k)!r} -> "
                                  f"{getattr(mine, k)!r}); use another --checkpoint-dir for a new model")
        problems = mine.differences(saved, self.given)
        if problems and not force:
            raise CheckpointError(f"{path}: cannot resume exactly; changed since the checkpoint: "
                                  f"{'; '.join(problems)} (pass --force to resume anyway)")
        given = set(mine.to_dict()) if self.given is None else self.given
        keep = {k for k in given if k in RESUME_MAY_CHANGE or force}
        keep -= {"hidden", "activation", "dtype"}
        self.config = TrainConfig.from_dict({**saved.to_dict(), **{k: getattr(mine, k) for k in keep}})

    def _resume(self, found, train: Dataset, rundir: RunDirectory, force: bool, log) -> None:
        path, arrays, meta = found
        fp = train.fingerprint()
        saved_fp = meta["fingerprint"]
        problems = [("data changed in place (its files' sizes or modification times, or sampled chunks, differ)"
                     if k == "content" else f"data {k}: {saved_fp[k]!r} -> {fp[k]!r}")
                    for k in fp if k in saved_fp and saved_fp[k] != fp[k]]
        if problems and not force:
            raise CheckpointError(f"{path}: cannot resume exactly; changed since the checkpoint: "
                                  f"{'; '.join(problems)} (pass --force to resume anyway)")
        if meta["model"]["n_in"] != train.n_features:
            raise CheckpointError(f"{path}: the model takes {meta['model']['n_in']} features, "
                                  f"{train.path} has {train.n_features}")
        _, self.model, _, self.state, _ = restore(arrays, meta)
        self.optimizer = make_run_optimizer(self.config, arrays)  # this run's settings, the saved state
        self.fingerprint = fp
        s = self.state.sampler or {"epoch": 0, "position": 0}
        self.history = rundir.metrics_upto(s["epoch"], self.state.record) if rundir is not None else []
        if self.state.sampler:
            try:
                self.sampler.load_state_dict(self.state.sampler)
            except ValueError as e:
                raise CheckpointError(f"{path}: cannot resume: {e}") from None
        if log:
            log(f"resuming from {path} (epoch {s['epoch'] + 1}, row {s['position']} of the epoch)")

    def _initialise(self, data: Dataset, log) -> None:
        if data.label_name is None:
            raise DataError(f"{data.path}: no label found; name it with --label")
        cfg = self.config
        # Only what the run needs: feature statistics for standard scaling, else the labels alone
        # (the classes; for a regression the first chunk's width).
        features = cfg.scale == "standard"
        first_only = not features and cfg.task == "regression"
        what = (f"statistics pass over {data.path} (feature means and variances for --scale standard; the label's "
                "classes)" if features else f"reading the labels of {data.path} ("
                + ("their width" if first_only else "the classes") + f"; --scale {cfg.scale} needs no feature statistics)")
        comm = self.comm
        with Progress(data.n_rows, what, log, self.log_every) as progress:
            # with several processes, each reads its share of the chunks; the statistics are merged
            stats = scan(data, features, progress.update, first_only, (comm.rank, comm.size)).merged_across(comm)
        self.model = Model.build(cfg, stats, data.n_features, list(data.feature_names), data.label_name,
                                 data.selection, data.format, data.path, log, self.weight)
        self.optimizer = make_run_optimizer(self.config)
        self.state = TrainState()
        self.fingerprint = data.fingerprint()

    def _make_sampler(self, train: Dataset) -> Sampler:
        cfg = self.config
        return Sampler(train.bounds, cfg.batch_size, cfg.shuffle, cfg.seed, cfg.drop_last,
                       window_rows=window_rows_for(cfg.window_mb * 2**20, train), replacement=cfg.replacement,
                       rank=self.comm.rank, world_size=self.comm.size, shard="batches")

    def _hooks(self, val_ds, rundir, callbacks: list, log) -> list:
        cfg = self.config
        hooks: list = [DivergenceGuard()]
        if val_ds is not None:
            hooks.append(Validation(val_ds, log, self.log_every))
        metric, regression = cfg.early_stopping_metric, self.model.task == "regression"
        recorded = not (metric.endswith("_r2") and not regression or metric.endswith("_accuracy") and regression)
        if not recorded and (cfg.early_stopping or cfg.keep_best):
            raise ConfigError(f"early_stopping_metric: a {self.model.task} run has no {metric}")
        if recorded and (val_ds is not None or not metric.startswith("val_")):
            hooks.append(EarlyStopping(cfg.early_stopping, log, metric, cfg.min_delta))
        if log:
            hooks.append(EpochLog(log))
            if not any(isinstance(h, ProgressBar) for h in callbacks):
                hooks.append(ProgressLines(log, self.log_every))
        if rundir is not None:
            hooks += [Checkpointer(rundir, self.config), MetricsLog(rundir), DirectoryWatch(rundir)]
        if self.comm.size > 1:
            hooks.append(RanksAgree(self.comm))
        hooks += callbacks  # after the checkpointer: at the end of training, the final checkpoint is there
        hooks.append(StopOnSignals())
        return hooks

    def _train(self, train: Dataset, process, hooks: list) -> None:
        cfg, model = self.config, self.model
        self.stepper = choose_update(cfg, model, self.optimizer, self.comm, total_steps=cfg.epochs * len(self.sampler))
        self.stepper.load()  # before the loader limits BLAS threads: it loads scipy's BLAS
        transform, scale, prepare = model.loader_steps(cfg, train.path)
        loader = Loader(train, self.sampler, whole_groups=self.stepper.blocks, transform=transform,
                        decoder=cfg.decoder, process=process, scale=scale, workers=cfg.decoder_workers or None)
        with loader, loader.sharing_cores(self.comm.local_size):
            Loop(self, self.stepper, loader, hooks, prepare).run()

    def end_epoch(self) -> dict[str, Any]:
        """Close the epoch the sampler is in: its record (hooks add to it), the next epoch begun."""
        acc = self.state.epoch_acc
        record = {"epoch": self.sampler.epoch + 1, "train_loss": acc["loss_sum"] / max(acc["n"], 1)}
        if self.model.task != "regression":  # each batch scored before its update: progressive validation
            record["train_accuracy"] = acc.get("correct", 0) / max(acc["n"], 1)
        record.update({"samples": acc["n"], "seconds": acc["seconds"],
                       "samples_per_s": acc["n"] / acc["seconds"] if acc["seconds"] > 0 else None})
        self.history.append(record)
        self.state.record = record
        self.sampler.next_epoch()
        self.state.new_epoch()
        return record

    def partial_fit(self, X, y, classes=None, sample_weight=None) -> "Trainer":
        """Update the model on the rows given, in order, in minibatches of ``config.batch_size``.

        For pipelines that own the data flow (pure online use). The first call sets the
        model up lazily: scaling statistics come from this first block, and ``classes``
        (all the labels that will ever occur) must be given there unless the block holds
        them all. ``sample_weight`` weighs each row's loss. Batch size 1 with plain SGD runs the
        compiled per-sample loop. A cosine schedule needs a run's length, which partial_fit has not.

        >>> import numpy as np
        >>> t = Trainer(hidden=4, batch_size=8)
        >>> X = np.random.default_rng(0).standard_normal((64, 3))
        >>> t.partial_fit(X, (X[:, 0] > 0).astype(int), classes=[0, 1]).task
        'binary'
        """
        cfg = self.config
        if cfg.lr_schedule == "cosine":
            raise ConfigError("lr_schedule cosine decays over a run's steps, which partial_fit does not know; "
                              "use another schedule")
        X = np.asarray(X, dtype=cfg.dtype)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise DataError(f"partial_fit: X must be (rows, features) with one label per row; got {X.shape}, {y.shape}")
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=cfg.dtype).reshape(-1)
        if w is not None and len(w) != len(X):
            raise DataError(f"partial_fit: {len(w)} sample weights for {len(X)} rows")
        if self.model is None:
            stats = DataStats()
            stats.update(X, y, "partial_fit")
            if classes is not None:
                stats.classes |= set(np.asarray(classes).tolist())
            self.model = Model.build(cfg, stats, X.shape[1], [f"f{j}" for j in range(X.shape[1])], "y", None, None,
                                     "partial_fit")
            self.optimizer, self.state = make_run_optimizer(cfg), TrainState()
            self.stepper = choose_update(cfg, self.model, self.optimizer)
            self.stepper.load()
        elif X.shape[1] != self.net.n_in:
            raise DataError(f"partial_fit: {X.shape[1]} features, the model expects {self.net.n_in}")
        Xs, T = self.model.prepare(X, y, "partial_fit")
        # a block of rows per update where the strategy takes blocks, else batches of batch_size
        bs = max(len(Xs), 1) if self.stepper.blocks else cfg.batch_size
        total = 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            for a in range(0, len(Xs), bs):
                done = self.stepper.update(Xs[a:a + bs], T[a:a + bs], self.global_step,
                                           None if w is None else w[a:a + bs])
                if not np.isfinite(done.loss_sum):
                    raise divergence(f"batch step {self.global_step + 1}", done.loss)
                self.state.global_step += done.steps
                total += done.loss_sum
        self.last_loss = total / max(len(Xs), 1)  # the call's mean loss (per row)
        return self

    # -- checkpoints ------------------------------------------------------------
    def checkpoint_contents(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` of a checkpoint of this moment (a snapshot)."""
        for k, v in self.net.params.items():
            if not np.all(np.isfinite(v)):
                raise divergence(f"batch step {self.global_step} (parameter {k} is not finite; no checkpoint "
                                 "written)", math.nan)
        if self.sampler is not None:
            self.state.sampler = self.sampler.state_dict()
        return checkpoint_contents(self.config, self.model, self.optimizer, self.state, self.fingerprint)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the current model and training state to a checkpoint file."""
        self._require_model()
        try:
            return save_checkpoint(path, *self.checkpoint_contents())
        except OSError as e:
            raise CheckpointError(f"{path}: cannot write the checkpoint ({os_reason(e)})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trainer":
        """A Trainer restored from a checkpoint file or directory (its newest valid checkpoint)."""
        _, arrays, meta = resolve_checkpoint(path, TRAINER)
        config, model, optimizer, state, fingerprint = restore(arrays, meta)
        t = cls(config)
        t.model, t.optimizer, t.state, t.fingerprint = model, optimizer, state, fingerprint
        return t

    # -- using the model ----------------------------------------------------------
    def _require_model(self) -> Model:
        if self.model is None:
            raise TrainingError("the model is not trained yet: call fit() or load a checkpoint")
        return self.model

    def open_like_training(self, source, need_label: bool = True) -> Dataset:
        return self._require_model().open_like_training(source, need_label)

    def evaluate(self, source, progress=None, comm=None) -> dict[str, Any]:
        return self._require_model().evaluate(source, progress, comm)

    def predict(self, source) -> np.ndarray:
        return self._require_model().predict(source)

    def predict_proba(self, source) -> np.ndarray:
        return self._require_model().predict_proba(source)

    def write_predictions(self, source, out, overwrite: bool = False, progress=None, inputs=()) -> dict[str, Any]:
        return self._require_model().write_predictions(source, out, overwrite, progress, inputs)

    for _name in ("open_like_training", "evaluate", "predict", "predict_proba", "write_predictions"):
        locals()[_name].__doc__ = getattr(Model, _name).__doc__
    del _name
