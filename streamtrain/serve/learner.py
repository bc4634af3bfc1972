"""Training on rows as they arrive: the exactly-once core of ``streamtrain serve``.

Rows enter in the stream's order (``feed``); batch ``k`` is made of the stream's rows ``kB`` to
``(k+1)B`` (through the shuffle buffer, if any), so the updates depend only on the stream, never
on when rows arrived or when a checkpoint was written. Everything that is not yet an update (the
rows waiting for a batch, the shuffle buffer, its random state) is part of the checkpoint,
together with the source's position: restoring it and reading the source after that position
continues exactly as if nothing had stopped.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..data.scaling import DataStats, Scaler
from ..errors import DataError
from ..model import Model
from ..train.state import TrainState, checkpoint_contents, make_run_optimizer
from ..train.update import add_up, choose_update, divergence
from . import section  # noqa: F401  (declares the "stream" section that checkpoint_contents writes)

__all__ = ["StreamLearner", "Published"]


class Published:
    """An immutable copy of the model for predictions: training never changes it, so a request
    reads it without a lock; ``version`` is the number of updates it has seen plus one per model
    adopted (``/reload``), so it changes whenever the model does."""

    def __init__(self, model: Model, version: int):
        self.model, self.version = model, int(version)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(predictions, probabilities or None)`` for raw feature rows."""
        m = self.model
        out = m.net.predict_output(m.scaler.transform(np.asarray(X, dtype=m.net.dtype)))
        if m.task == "regression":
            return (out[:, 0] if out.shape[1] == 1 else out), None
        proba = np.hstack([1 - out, out]) if m.task == "binary" else out
        return m.labels.decode(proba.argmax(axis=1)), proba


class StreamLearner:
    """A model trained on a stream in batches of ``config.batch_size`` rows.

    ``feature_names`` and ``label`` name the stream's columns. Without ``init`` (a ``Trainer``
    restored from a ``train`` run, whose model, scaler and classes it continues), the model is
    new: ``classes`` lists the labels of a classification (or ``config.task`` is regression), and
    with standard scaling the first ``scale_rows`` rows set the scaler before any update.
    ``shuffle_rows`` > 0 mixes the stream through a buffer of that many rows."""

    def __init__(self, config: TrainConfig, feature_names: list[str], label: str, classes=None, init=None,
                 scale_rows: int = 1000, shuffle_rows: int = 0, log=None):
        self.config, self.log = config, log
        if init is not None:
            self.model, self.optimizer = init.model, make_run_optimizer(config)
            self.scaled = True
        else:
            if config.scale == "batch-center":
                raise DataError("--scale batch-center is not for streams: use standard or none")
            stats = DataStats()  # what the labels will be; the features' statistics come later, if needed
            if config.task == "regression":
                stats.update_labels(np.zeros((1, 1)))
            elif not classes:
                raise DataError("a new classifier needs its classes (--classes a,b,...) or --init-from a run")
            else:
                stats.update_labels(np.asarray(classes))
            self.model = Model.build(config, stats, len(feature_names), list(feature_names), label, None, "stream",
                                     "the stream")
            self.model.scaler = Scaler("none", dtype=config.dtype)
            self.optimizer = make_run_optimizer(config)
            self.scaled = config.scale != "standard"
        self.feature_names, self.label = list(self.model.feature_names), label
        self.scale_rows = max(1, int(scale_rows))
        self.state = TrainState()
        self._adopt(self.model, self.optimizer)
        n_in = self.model.net.n_in
        self.t_dtype = np.float64 if self.model.task == "regression" else np.int64
        self.t_shape = (self.model.net.n_out,) if self.model.task == "regression" else ()
        self.pending_X = np.empty((0, n_in), self.model.net.dtype)
        self.pending_t = np.empty((0,) + self.t_shape, self.t_dtype)
        self.shuffle_rows = int(shuffle_rows)
        if self.shuffle_rows and self.shuffle_rows < config.batch_size:
            raise DataError(f"the shuffle buffer ({self.shuffle_rows} rows) must hold at least a batch "
                            f"({config.batch_size} rows)")
        self.buffer_X = self.pending_X[:0].copy()
        self.buffer_t = self.pending_t[:0].copy()
        self.rng = np.random.Generator(np.random.PCG64(config.seed))
        self.position: Any = None  # the source's position after the last row fed
        self.rows_received = self.rows_trained = 0
        self.reloads = 0  # models adopted since the start of the stream (part of the published version)
        self.loss_sum, self.correct, self.scored = 0.0, 0, 0  # prequential: each batch scored before its update
        self.step_seconds = 0.0
        self.lock = threading.Lock()  # feed, checkpoint and reload take turns
        self.published = Published(self._frozen_model(), 0)

    def _adopt(self, model: Model, optimizer) -> None:
        """Train ``model`` with ``optimizer`` from here on (the caller holds the lock, or is ``__init__``)."""
        self.model, self.optimizer = model, optimizer
        self.stepper = choose_update(self.config, model, optimizer)
        self.stepper.load()

    def adopt(self, model: Model, optimizer) -> None:
        """Continue the stream with another model (``/reload``): its scaler too, no more scaling pass."""
        with self.lock:
            self._adopt(model, optimizer)
            self.scaled = True
            self.reloads += 1
        self.publish()

    # -- rows in -------------------------------------------------------------------
    def targets(self, y: np.ndarray, where: str) -> np.ndarray:
        """Labels as training wants them (class indices, or values); a label the model cannot take
        raises ``DataError`` naming ``where`` (whatever the labels, nothing else)."""
        try:
            return self._targets(np.asarray(y), where)
        except DataError:
            raise
        except Exception as e:  # labels of an unforeseen kind: still the input's problem
            raise DataError(f"{where}: the labels cannot be used ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]})") from None

    def _targets(self, y: np.ndarray, where: str) -> np.ndarray:
        if self.model.task == "regression" and y.dtype.kind not in "iuf":
            raise DataError(f"{where}: the labels are {'strings' if y.dtype.kind in 'US' else y.dtype}; a "
                            "regression learns numbers")
        t = self.model.targets(y, where)
        if self.model.task == "regression":
            t = t.reshape(len(t), -1)
            if t.shape[1] != self.model.net.n_out:
                raise DataError(f"{where}: {t.shape[1]} target columns, the model has {self.model.net.n_out}")
            if not np.isfinite(t).all():
                raise DataError(f"{where}: a label is NaN or infinite")
        return t.astype(self.t_dtype, copy=False)

    def feed(self, X: np.ndarray, t: np.ndarray, position: Any) -> int:
        """Take rows (``t`` from ``targets``) that bring the source to ``position``; train every
        batch they complete. Returns the updates made."""
        return self.feed_many([(X, t)], position)

    def feed_many(self, pieces: list[tuple[np.ndarray, np.ndarray]], position: Any, train: bool = True) -> int:
        """Take consecutive pieces of rows ``(X, t)`` that bring the source to ``position`` (one
        copy of them all); train every batch they complete, unless ``train`` is False (then
        ``drain`` does, after more pieces). Returns the updates made."""
        with self.lock:
            dtype = self.model.net.dtype
            self.pending_X = np.concatenate([self.pending_X, *(np.asarray(X, dtype) for X, _ in pieces)])
            self.pending_t = np.concatenate([self.pending_t, *(t for _, t in pieces)])
            self.rows_received += sum(len(X) for X, _ in pieces)
            self.position = position
            return self._drain() if train else 0

    def drain(self) -> int:
        """Train every batch the rows waiting complete; the updates made."""
        with self.lock:
            return self._drain()

    def _drain(self) -> int:
        cfg, done = self.config, 0
        if not self.scaled:
            if len(self.pending_X) < self.scale_rows:
                return 0
            stats = DataStats()
            stats.update_features(self.pending_X[:self.scale_rows])
            self.model.scaler = Scaler.from_stats("standard", stats, cfg.dtype)
            self.scaled = True
            if self.log:
                self.log(f"scaling set from the stream's first {self.scale_rows} rows (give --init-from a run to "
                         "keep a trained scaler)")
        bs = cfg.batch_size
        if self.shuffle_rows:
            take = min(len(self.pending_X), self.shuffle_rows - len(self.buffer_X))
            if take:
                self.buffer_X = np.concatenate([self.buffer_X, self.pending_X[:take]])
                self.buffer_t = np.concatenate([self.buffer_t, self.pending_t[:take]])
                self.pending_X, self.pending_t = self.pending_X[take:], self.pending_t[take:]
            # Full buffer: each batch is bs rows drawn from it, their places taken by the next bs rows.
            while len(self.buffer_X) == self.shuffle_rows and len(self.pending_X) >= bs:
                idx = np.sort(self.rng.choice(self.shuffle_rows, size=bs, replace=False))
                X, t = self.buffer_X[idx], self.buffer_t[idx]
                self.buffer_X[idx], self.buffer_t[idx] = self.pending_X[:bs], self.pending_t[:bs]
                self.pending_X, self.pending_t = self.pending_X[bs:], self.pending_t[bs:]
                done += self._update(X, t)
            return done
        n = len(self.pending_X) - len(self.pending_X) % bs
        if n:
            # Every complete batch in one call (one compiled call where the strategy has one: the
            # GIL is free meanwhile for the thread that reads the source).
            before = self.rows_trained
            try:
                done += self._update(self.pending_X[:n], self.pending_t[:n])
            finally:  # (diverged: the rows trained before it are gone from what waits, as always)
                trained = self.rows_trained - before
                self.pending_X, self.pending_t = self.pending_X[trained:], self.pending_t[trained:]
        return done

    def _update(self, X: np.ndarray, t: np.ndarray) -> int:
        """The updates of ``X``'s batches (a whole number of them); divergence raised after the
        updates before it are counted."""
        started = time.perf_counter()
        step = self.state.global_step
        with np.errstate(over="ignore", invalid="ignore"):
            made, diverged, losses = self.stepper.update_batches(X, t, step, self.config.batch_size,
                                                                 scaler=self.model.scaler)
        self.state.global_step += made.steps
        self.rows_trained += made.rows
        self.loss_sum = add_up(self.loss_sum, map(float, losses))
        self.correct += int(made.correct)
        self.scored += made.rows
        self.step_seconds += time.perf_counter() - started
        if diverged is not None:
            raise divergence(f"update {step + made.steps + 1}", diverged)
        return made.steps

    # -- the model for predictions -----------------------------------------------------
    def _frozen_model(self) -> Model:
        m = copy.copy(self.model)
        m.net = copy.copy(self.model.net)
        decay = getattr(self.optimizer, "decay", None)  # plain SGD's lazy decay: the table brought up to date
        m.net.params = {k: decay.materialised() if k == "W1" and decay is not None and not decay.settled else v.copy()
                        for k, v in self.model.net.params.items()}
        m.scaler = copy.deepcopy(self.model.scaler)
        return m

    def publish(self) -> Published:
        """A new immutable copy of the model for predictions (if it changed)."""
        with self.lock:
            if self.published.version != self.version or self.published.model.scaler is not self.model.scaler:
                self.published = Published(self._frozen_model(), self.version)
            return self.published

    @property
    def version(self) -> int:
        """The model's version: its updates, plus one per model adopted."""
        return self.state.global_step + self.reloads

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_contents(self, source_state: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` of this moment: the model, the optimiser, and the stream's state."""
        with self.lock:
            arrays, meta = checkpoint_contents(self.config, self.model, self.optimizer, self.state, {})
            meta["stream"] = {"position": self.position, "source": source_state or {}, "scaled": self.scaled,
                              "scale_rows": self.scale_rows, "shuffle_rows": self.shuffle_rows,
                              "pending_rows": len(self.pending_X), "buffer_rows": len(self.buffer_X),
                              "rng": self.rng.bit_generator.state if self.shuffle_rows else None,
                              "rows_received": self.rows_received, "rows_trained": self.rows_trained,
                              "reloads": self.reloads,
                              "prequential": {"loss_sum": self.loss_sum, "correct": self.correct,
                                              "rows": self.scored}}
            arrays.update({"stream.pending_X": self.pending_X.copy(), "stream.pending_t": self.pending_t.copy(),
                           "stream.buffer_X": self.buffer_X.copy(), "stream.buffer_t": self.buffer_t.copy()})
            return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Continue from a checkpoint this learner's kind wrote (validated by the schema)."""
        from ..train.state import restore

        config, model, optimizer, state, _ = restore(arrays, meta)
        s = meta["stream"]
        with self.lock:
            self.state = state
            self._adopt(model, optimizer)
            self.pending_X, self.pending_t = arrays["stream.pending_X"], arrays["stream.pending_t"]
            self.buffer_X, self.buffer_t = arrays["stream.buffer_X"], arrays["stream.buffer_t"]
            self.scaled, self.position = bool(s["scaled"]), s["position"]
            if s["rng"] is not None:
                self.rng.bit_generator.state = s["rng"]
            self.rows_received, self.rows_trained = int(s["rows_received"]), int(s["rows_trained"])
            self.reloads = int(s.get("reloads", 0))  # absent before /reload changed the version
            p = s["prequential"]
            self.loss_sum, self.correct, self.scored = float(p["loss_sum"]), int(p["correct"]), int(p["rows"])
        self.published = Published(self._frozen_model(), self.version)

    def prequential(self) -> dict[str, float | None]:
        """Mean loss and accuracy of every batch, scored before its update (progressive validation)."""
        n = max(self.scored, 1)
        acc = None if self.model.task == "regression" else self.correct / n
        return {"loss": self.loss_sum / n if self.scored else None, "accuracy": acc if self.scored else None}
