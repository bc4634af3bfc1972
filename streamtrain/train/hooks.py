"""Hooks: what runs around the training loop, built-in or a user's, all alike.

A hook has any of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer)``,
``on_batch_end(trainer, rows, loss)``, ``on_epoch_end(trainer, record)``,
``on_train_end(trainer)`` and ``close(trainer)`` (always called last, also after an error),
and says how often ``on_batch_end`` must run with ``every``:

- ``Every(steps=N)``: after every N-th batch (``Every(steps=1)``: every batch; this makes the
  loop take one batch, at batch size 1 one row, per compiled call, so ask for it only if it is
  needed);
- ``Every(seconds=T)``: at least T seconds apart, whatever the batch size;
- ``Every(always=True)``: after every update the loop makes, for cheap checks: a batch, or a run
  of a loader group's batches made in one compiled call (plain SGD and Adam: then ``rows`` are
  the run's and ``loss`` its mean), or at batch size 1 a block of rows.

``every = None`` means never: a hook whose ``on_batch_end`` has nothing to do at this run's
settings (a checkpointer without ``--checkpoint-every``/``--checkpoint-seconds``) says so, and
the loop neither calls it nor cuts the per-sample blocks or the runs of batches for it. ``Hook``'s default, and that
of an object without an ``every`` attribute, is ``Every(steps=1)``. ``rows`` are the row
indices the update used and ``loss`` its mean loss. A hook stops training with
``trainer.stop(reason)``: the loop finishes the current update, the hooks' ``on_train_end``
run (a checkpoint is written), and ``fit`` returns (raising ``Interrupted`` for signals).

Mid-epoch, a table of codes trained by plain SGD with ``--l2`` holds rows its decay has not
reached yet (``nn/decay.py``): ``trainer.predict``, ``predict_proba``, ``evaluate`` and
``trainer.checkpoint_contents()`` give the table up to date; ``trainer.net.params["W1"]`` is the
raw one until the epoch ends.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import TrainingError
from ..io.background import fork_snapshots
from .distributed import active
from .update import divergence

__all__ = ["Every", "Hook", "schedule", "DivergenceGuard", "Validation", "EarlyStopping", "EpochLog",
           "Checkpointer", "MetricsLog", "DirectoryWatch", "StopOnSignals", "ProgressBar", "ProgressLines", "RanksAgree",
           "format_epoch"]


@dataclass(frozen=True)
class Every:
    """When a hook's ``on_batch_end`` runs (see the module's documentation)."""

    steps: int = 0
    seconds: float = 0.0
    always: bool = False


class Hook:
    """A hook that does nothing: subclass it and define what you need."""

    every: Every | None = Every(steps=1)


def schedule(hook) -> Every | None:
    """When ``hook.on_batch_end`` runs, or None if never (no such method, or ``every = None``)."""
    if not hasattr(hook, "on_batch_end"):
        return None
    every = getattr(hook, "every", Every(steps=1))
    if every is not None and not (every.steps or every.seconds or every.always):
        return None  # Every() asks for nothing
    return every


class DivergenceGuard(Hook):
    """A loss that is not finite ends training with an error (the step changed nothing, so the
    parameters are the last good ones and no checkpoint of a diverged model is written)."""

    every = Every(always=True)

    def on_batch_end(self, trainer, rows, loss):
        if not math.isfinite(loss):
            s, epoch = trainer.global_step, trainer.sampler.epoch + 1
            where = f"batch step {s}" if len(rows) <= 1 or not trainer.stepper.blocks \
                else f"steps {s - len(rows) + 1}-{s}"
            raise divergence(f"epoch {epoch}, {where}", loss)


class Validation(Hook):
    """Each epoch's validation loss and accuracy (R^2 for regression), added to its record."""

    def __init__(self, dataset, log=None, every: float = 5.0):
        self.dataset, self.log, self.every_s = dataset, log, every

    def on_epoch_end(self, trainer, record):
        from ..progress import Progress

        with Progress(self.dataset.n_rows, f"validation of epoch {record['epoch']}", self.log, self.every_s) as p:
            result = trainer.model.evaluate(self.dataset, progress=p.update, comm=trainer.comm)
        record["val_loss"] = result["loss"]
        key = "r2" if trainer.model.task == "regression" else "accuracy"
        record[f"val_{key}"] = result[key]


class EarlyStopping(Hook):
    """Tracks the best epoch by ``metric`` (a loss lower, an accuracy or R^2 higher, better by more
    than ``min_delta``); with ``patience``, stops after that many epochs without a better one and
    restores the best epoch's parameters at the end."""

    def __init__(self, patience: int, log: Callable | None = None, metric: str = "val_loss", min_delta: float = 0.0):
        self.patience, self.log, self.metric, self.min_delta = patience, log, metric, min_delta
        self.sign = 1.0 if metric.endswith("loss") else -1.0  # compare as a loss: lower is better

    def _waited_enough(self, trainer) -> bool:
        return bool(self.patience) and trainer.state.early["wait"] >= self.patience

    def on_train_begin(self, trainer):
        if self._waited_enough(trainer):  # resumed after it stopped
            trainer.stop("early stopping")

    def on_epoch_end(self, trainer, record):
        early, state = trainer.state.early, trainer.state
        value = record[self.metric]
        if early["best"] is None or self.sign * value < self.sign * early["best"] - self.min_delta:
            early.update(best=value, best_epoch=record["epoch"], wait=0)
            if self.patience:
                state.best_params = {k: v.copy() for k, v in trainer.net.params.items()}
        else:
            early["wait"] += 1
        if self._waited_enough(trainer):
            trainer.stop("early stopping")

    def on_train_end(self, trainer):
        state = trainer.state
        if self._waited_enough(trainer) and state.best_params is not None and state.restored_best is None:
            trainer.stepper.settle()  # (the weights put back are up to date)
            for k, v in trainer.net.params.items():
                v[...] = state.best_params[k]
            state.restored_best = state.early["best_epoch"]
            if self.log:
                self.log(f"early stopping: restored the parameters of epoch {state.restored_best}")


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


class EpochLog(Hook):
    """One line per epoch through ``log``."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def on_epoch_end(self, trainer, record):
        self.log(format_epoch(record, trainer.config.epochs))


#: Checkpoints of parameters and optimiser state at least this large are written by a forked process
#: (``STREAMTRAIN_FORK_SNAPSHOT_MB``; smaller ones are copied, which costs less than a fork).
FORK_SNAPSHOT_BYTES = int(float(os.environ.get("STREAMTRAIN_FORK_SNAPSHOT_MB", "256")) * 2**20)


def _state_bytes(trainer) -> int:
    return sum(v.nbytes for v in trainer.net.params.values()) + \
        sum(np.asarray(v).nbytes for v in trainer.optimizer.state_dict().values())


class Checkpointer(Hook):
    """Checkpoints into the run directory: every ``checkpoint_every`` batches, every
    ``checkpoint_seconds``, at every epoch's end (``best.npz`` too with ``keep_best``), and when
    training ends or stops anywhere else (with early stopping's restored parameters)."""

    def __init__(self, rundir, config):
        self.rundir, self.config = rundir, config
        every = Every(steps=config.checkpoint_every, seconds=config.checkpoint_seconds)
        self.every = every if (every.steps or every.seconds) else None
        self.saved_at: tuple | None = None  # (step, epoch, position) of the last save
        self.last_save = time.monotonic()

    def _save(self, trainer, best: bool = False):
        self.saved_at = trainer.progress()
        self.last_save = time.monotonic()
        from .schema import TRAINER

        # A model of gigabytes (a click log's table and its optimiser's state) is written by a forked
        # process that sees it as it was, not from a copy that would double the run's memory.
        fork = fork_snapshots(active().size) and _state_bytes(trainer) >= FORK_SNAPSHOT_BYTES
        # with the schema: a checkpoint its own loader would refuse is never written
        return self.rundir.save(*trainer.checkpoint_contents(copy=not fork), trainer.global_step, self.config.keep,
                                TRAINER, fork=fork, best=best)

    def on_batch_end(self, trainer, rows, loss):
        cfg = self.config
        if (cfg.checkpoint_every and trainer.global_step % cfg.checkpoint_every == 0) or \
                (cfg.checkpoint_seconds and time.monotonic() - self.last_save >= cfg.checkpoint_seconds):
            self._save(trainer)

    def on_epoch_end(self, trainer, record):
        # (early stopping's hook, before this one, has judged the epoch)
        self._save(trainer, best=self.config.keep_best and trainer.state.early["best_epoch"] == record["epoch"])

    def on_train_end(self, trainer):
        if trainer.progress() != self.saved_at or trainer.state.restored_best is not None:
            self._save(trainer)
        self.rundir.wait()


class MetricsLog(Hook):
    """Each epoch's record as a line of the run directory's ``metrics.jsonl`` (after its checkpoint)."""

    def __init__(self, rundir):
        self.rundir = rundir

    def on_epoch_end(self, trainer, record):
        self.rundir.append_metrics(record)


class DirectoryWatch(Hook):
    """Stops training with an error if the run directory is deleted or replaced (its lock with it)."""

    every = Every(seconds=1.0)

    def __init__(self, rundir):
        self.rundir = rundir

    def on_batch_end(self, trainer, rows, loss):
        self.rundir.check()


class StopOnSignals(Hook):
    """While training, SIGINT and SIGTERM ask the loop to stop after its current update."""

    def __init__(self):
        self.previous: dict = {}

    def on_train_begin(self, trainer):
        if threading.current_thread() is not threading.main_thread():
            return

        def ask_to_stop(signum, frame):
            trainer.stop(signal.Signals(signum).name)

        self.previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def close(self, trainer):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class RanksAgree(Hook):
    """With several processes, the parameters must be the same on all: their digests are compared
    every ``steps`` steps and at the end; a difference stops the job with an error."""

    def __init__(self, comm, steps: int = 1000):
        self.comm, self.every = comm, Every(steps=steps)

    def _check(self, trainer) -> None:
        from ..io.digest import params_digest

        digests = self.comm.allgather(params_digest(trainer.net.params))
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise TrainingError(f"the parameters differ across processes after step {trainer.global_step} "
                                f"(rank {odd[0]} differs from rank 0); the run cannot go on")

    def on_batch_end(self, trainer, rows, loss):
        self._check(trainer)

    def on_train_end(self, trainer):
        self._check(trainer)


class ProgressLines(Hook):
    """Where no terminal shows a bar: a line every ``seconds`` during an epoch (position, loss, speed)."""

    def __init__(self, log: Callable[[str], None], seconds: float = 5.0):
        self.log = log
        self.every = Every(seconds=seconds) if seconds > 0 else Every(always=True)
        self.started = time.monotonic()
        self.rows = 0

    def on_epoch_begin(self, trainer):
        self.started, self.rows = time.monotonic(), trainer.sampler.position

    def on_batch_end(self, trainer, rows, loss):
        s = trainer.sampler
        rate = (s.position - self.rows) / max(time.monotonic() - self.started, 1e-9)
        self.log(f"epoch {s.epoch + 1}/{trainer.config.epochs}: {s.position:,} of {s.rows_per_epoch:,} rows "
                 f"({s.position / max(s.rows_per_epoch, 1):.0%}), {running(trainer)}, {rate:,.0f} samples/s")


def running(trainer) -> str:
    """The epoch's running training loss, and accuracy (each batch scored before its update)."""
    acc = trainer.state.epoch_acc
    n = max(acc["n"], 1)
    text = f"train_loss {acc['loss_sum'] / n:.4f}"
    if trainer.model.task != "regression":
        text += f", train_accuracy {acc.get('correct', 0) / n:.4f}"
    return text


class ProgressBar(Hook):
    """A tqdm bar per epoch on stderr: batches done, samples/s, ETA and a running loss.

    It updates a few times a second, so at batch size 1 the compiled loop keeps its blocks."""

    every = Every(seconds=0.1)

    def __init__(self, file=None):
        self.file = file or sys.stderr
        self.bar = None
        self.done = 0

    def on_epoch_begin(self, trainer):
        from tqdm import tqdm

        s = trainer.sampler
        self.done = -(-s.position // s.batch_size)
        # A terminal reporting no size (0 x 0, e.g. a fresh pty) would hide the bar: assume 100 x 20.
        size = shutil.get_terminal_size((100, 20))
        self.bar = tqdm(total=len(s), initial=self.done, desc=f"epoch {s.epoch + 1}/{trainer.config.epochs}",
                        unit="batch", leave=False, file=self.file, ncols=size.columns or 100,
                        nrows=size.lines or 20, mininterval=0.1)

    def on_batch_end(self, trainer, rows, loss):
        if self.bar is None:
            return
        s = trainer.sampler
        done = -(-s.position // s.batch_size)
        self.bar.update(done - self.done)
        self.done = done
        rate = self.bar.format_dict.get("rate") or 0
        self.bar.set_postfix_str(f"{running(trainer)}, {rate * s.batch_size:,.0f} samples/s", refresh=False)

    def on_epoch_end(self, trainer, record):
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)  # a finished bar shows 100%
            self.bar.close()
        self.bar = None

    def close(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
