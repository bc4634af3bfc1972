"""The training loop: batches from the loader -> one update each -> hooks, epoch after epoch.

One loop for every batch size. At batch size 1 with the compiled per-sample loop an
update covers a block of rows (one compiled call); the block ends where a hook asks to run
(``Every(steps=N)``) so that hook sees the same steps whatever the blocks. The loop reads and
writes nothing itself: checkpoints, logs, validation and signals are hooks. It closes each epoch:
the epoch's record (training loss, accuracy, rows, seconds) goes to the trainer's history.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .hooks import schedule
from .update import Outcome, add_up, agreed_stop, stop_votes

__all__ = ["Loop"]


class Loop:
    """Runs ``trainer``'s epochs: ``loader`` yields ``(rows, X, T)`` (single batches, or whole groups
    of rows where the update strategy ``stepper.blocks``), ``prepare(X, y) -> (X, T)`` if the
    loader did not."""

    def __init__(self, trainer, stepper, loader, hooks: list, prepare: Callable | None = None):
        self.trainer, self.stepper, self.loader, self.hooks, self.prepare = trainer, stepper, loader, hooks, prepare
        self.always, self.by_steps, self.by_time = [], [], []
        for h in hooks:
            every = schedule(h)
            if every is None:
                continue
            if every.always:
                self.always.append(h)
            if every.steps:
                self.by_steps.append((h, every.steps))
            if every.seconds:
                self.by_time.append((h, every.seconds))
        self.last_run: dict[int, float] = {}

    def _each(self, name: str, *args) -> None:
        for h in self.hooks:
            method = getattr(h, name, None)
            if method is not None:
                method(self.trainer, *args)

    def run(self) -> None:
        t, sampler = self.trainer, self.trainer.sampler
        self._each("on_train_begin")
        now = time.monotonic()
        self.last_run = {id(h): now for h, _ in self.by_time}
        while sampler.epoch < t.config.epochs and not self._stopping():
            self._each("on_epoch_begin")
            if not self._epoch():
                break
            self._each("on_epoch_end", self._end_epoch())
        self._each("on_train_end")

    def _end_epoch(self) -> dict[str, Any]:
        """Close the epoch the sampler is in: its record (hooks add to it) in the trainer's history
        and state, the next epoch begun."""
        t = self.trainer
        self.stepper.settle()  # (the epoch's hooks read the parameters whole)
        acc = t.state.epoch_acc
        record = {"epoch": t.sampler.epoch + 1, "train_loss": acc["loss_sum"] / max(acc["n"], 1)}
        if t.model.task != "regression":  # each batch scored before its update: progressive validation
            record["train_accuracy"] = acc.get("correct", 0) / max(acc["n"], 1)
        record.update({"samples": acc["n"], "seconds": acc["seconds"],
                       "samples_per_s": acc["n"] / acc["seconds"] if acc["seconds"] > 0 else None})
        t.history.append(record)
        t.state.record = record
        t.sampler.next_epoch()
        t.state.new_epoch()
        return record

    def _stopping(self) -> bool:
        """Whether to stop here: this process's wish, or with several, what they all agree."""
        t, stepper = self.trainer, self.stepper
        if not stepper.reduces:
            return bool(t.stop_requested)
        votes = self.stepper.comm.allreduce(np.array(stop_votes(t.stop_requested), dtype=np.float64))
        agreed = agreed_stop(votes)
        if agreed and not t.stop_requested:
            t.stop(agreed)
        return bool(agreed)

    def _epoch(self) -> bool:
        """Train on the rest of the epoch; False if a hook (or a signal) stopped it."""
        t, stepper, sampler = self.trainer, self.stepper, self.trainer.sampler
        state = t.state
        acc = state.epoch_acc
        started, in_hooks = time.perf_counter(), 0.0
        skip_empty = not stepper.reduces  # with several processes every one takes part in every step
        # A diverging run overflows on its way to inf/NaN; the divergence guard reports it.
        # Minibatches whose strategy fuses them: a group's whole batches in one compiled call each.
        fuse = stepper.fuses and not stepper.blocks and self.prepare is None
        with np.errstate(over="ignore", invalid="ignore"):
            for item in self.loader.iter_epoch(grouped=fuse):
                for span_rows, Xs, Ts, batches in (self._runs(item) if fuse else self._spans(*item)):
                    n = len(Xs)
                    if n == 0 and skip_empty:  # every row skipped for NaN/Inf
                        sampler.advance(len(span_rows))
                        continue
                    # targets packed with a weight column's values, where the run has one
                    Ts, w = (Ts["t"], Ts["w"]) if Ts.dtype.names else (Ts, None)
                    stepper.local_stop = t.stop_requested
                    if batches > 1:
                        done, span_rows, losses = self._batches(span_rows, Xs, Ts, w)
                    else:
                        done = stepper.update(Xs, Ts, state.global_step, w)
                        losses = (done.loss_sum,)
                    stepper.advance(sampler, len(span_rows))
                    state.global_step += done.steps
                    acc["loss_sum"] = add_up(acc["loss_sum"], losses)
                    acc["correct"] = acc.get("correct", 0) + done.correct
                    acc["n"] += done.rows  # with several processes, the global batch's rows
                    in_hooks += self._after(span_rows, done.loss, done.steps)
                    if stepper.reduces:  # several processes stop at the same step, or not at all
                        if stepper.stop_everywhere and not t.stop_requested:
                            t.stop(stepper.stop_everywhere)
                        stop = stepper.stop_everywhere is not None
                    else:
                        stop = bool(t.stop_requested)
                    if stop:
                        acc["seconds"] += time.perf_counter() - started - in_hooks
                        return False
        acc["seconds"] += time.perf_counter() - started - in_hooks
        return True

    def _spans(self, rows, X, T):
        """The updates an item of the loader makes, as ``(rows, X, T, 1)``: itself, or (per-sample
        blocks) the pieces that end where a step-scheduled hook is due."""
        if self.prepare is not None:
            X, T = self.prepare(X, T)
        if not self.stepper.blocks or not self.by_steps or len(X) != len(rows):
            yield rows, X, T, 1
            return
        a, n = 0, len(X)
        while a < n:
            b = min(n, a + self._until_due(n - a))
            yield rows[a:b], X[a:b], T[a:b], 1
            a = b

    def _until_due(self, most: int) -> int:
        """The steps from here to the next step-scheduled hook's, at most ``most``."""
        step = self.trainer.state.global_step
        return min([most, *(k - step % k for _, k in self.by_steps)])

    def _runs(self, group):
        """A group's batches as ``(rows, X, T, batches)``: its leading whole batches in runs made
        in one call each (a run ends where a step-scheduled hook is due, so the hook sees the
        same step as ever), the others one at a time. (Generated lazily: each run's length is
        decided after the runs before it were made.)"""
        bs, whole = self.trainer.config.batch_size, group.whole
        full = 0
        if whole is not None:
            while full < len(group) and len(group[full][0]) == bs:
                full += 1
        k = 0
        while k < full:
            m = self._until_due(full - k)
            rows = group[k][0] if m == 1 else np.concatenate([r for r, _, _ in group[k:k + m]])
            yield rows, whole[0][k * bs:(k + m) * bs], whole[1][k * bs:(k + m) * bs], m
            k += m
        for rows, X, T in group[k:]:
            yield rows, X, T, 1

    def _batches(self, rows, X, T, w):
        """A run of whole batches in one call: ``(its Outcome, the rows it took, each update's
        loss)``. A batch that diverges ends it, counted as the update ``update`` would have made
        of it (a step whose loss is not finite, which the divergence guard reports); the batches
        after it are not taken."""
        bs = self.trainer.config.batch_size
        made, diverged, losses = self.stepper.update_batches(X, T, self.trainer.state.global_step, bs, w)
        if diverged is None:
            return made, rows, losses
        took = made.rows + bs
        return Outcome(made.loss_sum + diverged, made.correct, made.steps + 1, took), rows[:took], [*losses, diverged]

    def _after(self, rows, loss: float, steps: int) -> float:
        """Run the hooks due after an update of ``steps`` steps; the seconds the scheduled ones took."""
        t = self.trainer
        for h in self.always:
            h.on_batch_end(t, rows, loss)
        due = []
        if self.by_steps:
            step = t.state.global_step
            due = [h for h, k in self.by_steps if (step - steps) // k != step // k]
        if self.by_time:
            now = time.monotonic()
            for h, seconds in self.by_time:
                if now - self.last_run[id(h)] >= seconds and h not in due:
                    due.append(h)
                    self.last_run[id(h)] = now
        if not due:
            return 0.0
        started = time.perf_counter()
        for h in due:
            h.on_batch_end(t, rows, loss)
        return time.perf_counter() - started
