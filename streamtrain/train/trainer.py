"""Trainer: sets a run up (data, model, state, run directory), runs the loop with its hooks, and
uses the model. A facade: the work is in ``model``, ``train.state``, ``train.update``,
``train.loop``, ``train.hooks`` and ``io.rundir``.

``fit`` starts a new run each time it is called, as scikit-learn's estimators do (a history
of 1, 2, 3, then 1, 2, 3 never arises: each ``fit`` returns its own run's history); to
continue a run, ``fit(..., checkpoint_dir=..., resume=True)``, or ``partial_fit`` on new rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import TrainConfig, auto_epochs
from ..data.loader import Loader, check_budget, start_decoder
from ..data.sampling import Sampler
from ..errors import CheckpointError, Interrupted, TrainingError, os_reason
from ..io.checkpoint import save_checkpoint
from ..io.resolve import resolve_checkpoint
from ..io.outputs import check_apart
from ..io.remote_run import open_run_directory
from ..io.rundir import RunDirectory
from ..model import Model
from ..nn import minibatch
from ..progress import DEFAULT_EVERY
from ..readers.base import Dataset
from .distributed import LOCAL, Communicator, communicator
from .loop import Loop
from .partial import partial_fit
from .resume import adopt_settings, adopt_weight, claim, resume_run
from .schema import TRAINER
from .setup import check_settings, make_sampler, new_model, open_data, standard_hooks
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
        """Train until ``config.epochs`` epochs are done.

        Parameters
        ----------
        source : path, Dataset, (X, y) arrays, DataFrame or Arrow table
            The training data, streamed (see ``open_dataset``); ``X`` (rows, n_features),
            ``y`` (rows,) or one-hot / regression targets (rows, n_outputs).
        val : same kinds as ``source``, optional
            Validation data (else ``config.val_fraction`` holds rows out, or there is none).
        features, label : optional
            What ``open_dataset`` selects.
        weight : str or array of shape (rows,), optional
            A column whose values weigh each row's loss (with arrays: the values).
        checkpoint_dir : path, optional
            The run's directory (one run per directory): a checkpoint at every epoch's end (and
            every ``checkpoint_every`` batches or ``checkpoint_seconds``), ``metrics.jsonl``.
        resume, overwrite, force : bool
            Continue the run in ``checkpoint_dir``, replace it, resume even if data or settings changed.
        callbacks : iterable of hooks
            See ``streamtrain.train.hooks``.
        log : callable, optional
            Hears what happens (a line per epoch; on long passes a line every ``log_every`` s).
        distributed : {"auto", "none", "mpi"} or Communicator
            "auto" trains data-parallel on MPI where a launcher started several processes (each
            reads its slice of every global batch; one allreduce per step; rank 0 logs and writes
            the checkpoints).

        Returns
        -------
        list of dict
            The run's history, one record per epoch (``train_loss``, ``val_loss``, ...).

        Examples
        --------
        >>> import numpy as np
        >>> X = np.random.default_rng(0).standard_normal((200, 3)).astype(np.float32)
        >>> history = Trainer(hidden=4, epochs=2).fit((X, (X[:, 0] > 0).astype(int)), log=None)
        >>> [r["epoch"] for r in history]
        [1, 2]
        """
        self.log_every = log_every
        comm = self.comm = distributed if isinstance(distributed, Communicator) else communicator(distributed)
        if comm.rank != 0:
            log = None  # one voice: rank 0's
        check_settings(self.config, comm, val is not None, resume, overwrite, checkpoint_dir)
        if checkpoint_dir is not None:  # before its lock file is made: the data's place is not the run's
            check_apart(checkpoint_dir, [source, val], "checkpoint directory",
                        "give --checkpoint-dir a directory apart from the data")
        check_budget(self.config.window_mb)
        self.model, self.optimizer, self.state, self.history = None, None, TrainState(), []
        self.stop_requested, self.fingerprint = None, {}
        # Rank 0 alone owns the run directory; the others never touch it.
        rundir = open_run_directory(checkpoint_dir) if checkpoint_dir and comm.rank == 0 else None
        train = val_ds = process = None
        try:
            # The directory lock is taken before reading any checkpoint, and held until training ends.
            with rundir or contextlib.nullcontext():
                found = claim(comm, rundir, resume, overwrite, log)
                if found is not None:
                    self.config = adopt_settings(self.config, self.given, found, force)
                    weight = adopt_weight(found, weight)
                cfg = self.config
                if cfg.batch_size > 1 and cfg.compiled and minibatch.available():
                    # overlaps opening the data, the statistics pass, a checkpoint's restoring
                    minibatch.load_in_background(cfg.dtype, cfg.optimizer == "sgd" and self.comm.size == 1)
                saved = found[2]["model"].get("encoding") if found is not None else None
                train, val_ds, self.weight = open_data(cfg, comm, source, val, features, label, weight, log, saved)
                self.sampler = make_sampler(cfg, comm, train)
                if cfg.epochs is None:  # the default: from the run's size (the same on every rank)
                    self.config = cfg = dataclasses.replace(cfg, epochs=auto_epochs(train.n_rows, cfg.batch_size))
                # Started before the statistics pass or the restore, so that its start-up overlaps them.
                process = start_decoder(train, self.sampler, cfg.decoder, cfg.decoder_workers or None,
                                        self.comm.local_size)
                if found is not None:
                    self.model, self.optimizer, self.state, self.fingerprint, self.history = resume_run(
                        found, self.config, train, self.sampler, rundir, force, log, comm.rank)
                else:
                    if resume and comm.rank == 0:  # (asked for and not there: a warning, said under --quiet too)
                        _LOG.warning(f"no checkpoint in {checkpoint_dir}; starting fresh")
                    self._initialise(train, log)
                self.rundir = rundir
                hooks = standard_hooks(self.config, self.model.task, comm, val_ds, rundir, list(callbacks), log,
                                       self.log_every)
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

    def _initialise(self, data: Dataset, log) -> None:
        self.model = new_model(self.config, self.comm, data, self.weight, log, self.log_every)
        self.optimizer, self.state, self.fingerprint = make_run_optimizer(self.config), TrainState(), data.fingerprint()

    def _train(self, train: Dataset, process, hooks: list) -> None:
        cfg, model = self.config, self.model
        self.stepper = choose_update(cfg, model, self.optimizer, self.comm, total_steps=cfg.epochs * len(self.sampler))
        self.stepper.load()  # before the loader limits BLAS threads: it loads scipy's BLAS
        transform, scale, prepare = model.loader_steps(cfg, train.path)
        loader = Loader(train, self.sampler, whole_groups=self.stepper.blocks, transform=transform,
                        decoder=cfg.decoder, process=process, scale=scale, workers=cfg.decoder_workers or None)
        self.comm.watch(getattr(cfg, "peer_timeout", 0.0))  # (a lost machine ends the job, named)
        try:
            # (a per-batch preparation, batch-center scaling, keeps the loop from fusing batches)
            splits = self.stepper.splits and prepare is None
            with loader, loader.sharing_cores(self.comm.local_size, splits) as lanes:
                self.stepper.lanes = lanes
                Loop(self, self.stepper, loader, hooks, prepare).run()
        finally:
            self.stepper.lanes = 1  # (partial_fit's calls later are the caller's, on its thread)
            self.comm.unwatch()
            self.stepper.settle()  # (after the last checkpoint, so what it holds resumes bitwise; errors too)

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
        partial_fit(self, X, y, classes, sample_weight)
        return self

    # -- checkpoints ------------------------------------------------------------
    def checkpoint_contents(self, copy: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` of a checkpoint of this moment (a snapshot; ``copy=False``: the live arrays)."""
        for k, v in self.net.params.items():
            if not np.all(np.isfinite(v)):
                raise divergence(f"batch step {self.global_step} (parameter {k} is not finite; no checkpoint "
                                 "written)")
        if self.sampler is not None:
            self.state.sampler = self.sampler.state_dict()
        return checkpoint_contents(self.config, self.model, self.optimizer, self.state, self.fingerprint, copy)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the current model and training state to a checkpoint file."""
        self._require_model()
        try:
            return save_checkpoint(path, *self.checkpoint_contents(), schema=TRAINER)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot write the checkpoint ({os_reason(e)})") from None

    @classmethod
    def load(cls, path: str | os.PathLike, optimizer_state: bool = True) -> "Trainer":
        """A Trainer restored from a checkpoint file or directory (its newest valid checkpoint);
        ``optimizer_state=False``: without the optimiser's state (checked, not kept), for a model
        that only predicts (Adam's state is twice the parameters)."""
        keep = None if optimizer_state else (lambda name: not name.startswith("optim."))
        _, arrays, meta = resolve_checkpoint(path, TRAINER, keep=keep)
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

    def _up_to_date(self) -> Model:
        """The model, its table brought up to date where plain SGD's lazy decay has left rows behind
        (mid-epoch: a hook's call), in a copy, so training's own arithmetic is left as it is."""
        model, decay = self._require_model(), getattr(self.optimizer, "decay", None)
        if decay is None or decay.params is not model.net.params or decay.settled:
            return model
        m = copy.copy(model)
        m.net = copy.copy(model.net)
        m.net.params = {**model.net.params, "W1": decay.materialised()}
        return m

    def evaluate(self, source, progress=None, comm=None) -> dict[str, Any]:
        return self._up_to_date().evaluate(source, progress, comm)

    def predict(self, source) -> np.ndarray:
        return self._up_to_date().predict(source)

    def predict_proba(self, source) -> np.ndarray:
        return self._up_to_date().predict_proba(source)

    def write_predictions(self, source, out, overwrite: bool = False, progress=None, inputs=()) -> dict[str, Any]:
        return self._up_to_date().write_predictions(source, out, overwrite, progress, inputs)

    for _name in ("open_like_training", "evaluate", "predict", "predict_proba", "write_predictions"):
        locals()[_name].__doc__ = getattr(Model, _name).__doc__
    del _name
