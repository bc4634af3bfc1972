"""How a span of rows updates the parameters, chosen once per run: the one place for fast paths.

- batch size 1 with plain SGD on one process: the compiled per-sample loop, a whole block
  of single-sample updates per call;
- minibatches with plain SGD on one process: the fused compiled step (forward, backward and
  update in one call; it leaves the weights alone when the loss is not finite);
- otherwise (another optimiser, or several processes): the batch's gradients (compiled, or
  numpy) -> the sum over processes -> the optimiser's step.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..nn import minibatch, online
from ..nn.network import PARAM_NAMES
from ..nn.schedules import rates
from .distributed import LOCAL, Communicator

__all__ = ["Stepper", "stop_votes", "agreed_stop"]


def stop_votes(reason: str | None) -> tuple[float, float, float]:
    """A process's wish to stop, as three counts to sum: (SIGTERM, SIGINT, anything else)."""
    return (float(reason == "SIGTERM"), float(reason == "SIGINT"), float(reason not in (None, "SIGTERM", "SIGINT")))


def agreed_stop(votes) -> str | None:
    """Why every process stops, from the summed votes (a signal names it), or None."""
    term, sigint, other = votes
    return "SIGTERM" if term else "SIGINT" if sigint else "stopped by another process" if other else None


class Stepper:
    """``batch(X, T, step, w)``: one update on a batch (the run's ``step``-th), returning its mean
    loss plus the penalty and the rows it classified right before the update; ``samples(X, T,
    step, w)``: one update per row, returning the sum of their losses and the rows classified
    right. ``w``: per-row loss weights (a weight column; class weights are applied here). A step
    whose loss is not finite changes nothing (the caller reports the divergence)."""

    def __init__(self, config, model, optimizer, comm: Communicator = LOCAL, total_steps: int = 0):
        cfg = self.config = config
        self.net, self.task, self.optimizer, self.comm = model.net, model.task, optimizer, comm
        self.lr, self.l1, self.l2 = config.learning_rate, config.l1, config.l2
        self.scheduled = cfg.lr_schedule != "constant" or cfg.warmup > 0
        self.total_steps = total_steps
        self.class_weights = getattr(model, "class_weight_vector", None)
        alone = comm.size == 1
        self.compiled = cfg.compiled and minibatch.available()
        sgd = cfg.optimizer == "sgd"
        self.per_sample = (cfg.batch_size == 1 and cfg.compiled and sgd and cfg.scale != "batch-center" and alone
                           and online.available())
        self.fused = self.compiled and sgd and alone
        self.reduces = not alone
        # Several processes stop together: each step's sum carries each one's wish to stop
        # (``local_stop``, the reason), and ``stop_everywhere`` is what they agreed.
        self.local_stop: str | None = None
        self.stop_everywhere: str | None = None
        self.last_rows = 0
        self.comm_seconds = 0.0  # time in the allreduce (waiting for the slowest process included)

    def load(self) -> None:
        """Compile (or load) the compiled code this run uses; before any BLAS thread limit is set
        (the first product loads scipy's BLAS, which the limit must see)."""
        if self.compiled and not self.per_sample:
            minibatch.load(self.config.dtype, self.fused)

    def rate(self, step: int) -> float:
        """The learning rate of the run's ``step``-th update."""
        return float(rates(self.config, np.array([step]), self.total_steps)[0]) if self.scheduled else self.lr

    def weights(self, T: np.ndarray, w: np.ndarray | None) -> np.ndarray | None:
        """Each row's loss weight: its class's (if any) times its own (if any)."""
        if self.class_weights is None:
            return w
        by_class = self.class_weights[T]
        return by_class if w is None else by_class * w

    def batch(self, X: np.ndarray, T: np.ndarray, step: int = 0, w: np.ndarray | None = None) -> tuple[float, int]:
        net = self.net
        w = self.weights(T, w)
        lr = self.rate(step)
        if self.fused:
            return minibatch.sgd_step(net.params, X, T, lr, self.l1, self.l2, net.activation, self.task, w)
        if self.reduces:
            total, correct, grads = self._reduced(X, T, w)
        elif self.compiled:
            total, correct, grads = minibatch.loss_and_grads(net.params, X, T, self.l1, self.l2, net.activation,
                                                             self.task, w)
        else:
            loss, penalty, grads = net.loss_and_grads(X, T, self.l1, self.l2, w)
            total, correct = loss + penalty, net.last_correct
        if math.isfinite(total):
            self.optimizer.lr = lr
            self.optimizer.step(net.params, grads)
        return total, correct

    def samples(self, X: np.ndarray, T: np.ndarray, step: int = 0, w: np.ndarray | None = None) -> tuple[float, int]:
        params = self.net.params
        before = {k: v.copy() for k, v in params.items()}
        lr = rates(self.config, step + np.arange(len(X)), self.total_steps) if self.scheduled else self.lr
        loss_sum, correct = online.sgd_online(params, X, T, lr, self.l1, self.l2, self.net.activation, self.task,
                                              self.weights(T, w))
        if not (np.isfinite(loss_sum) and all(np.isfinite(v).all() for v in params.values())):
            for k, v in before.items():  # leave the last good state
                params[k][...] = v
            return math.nan, correct
        return loss_sum, correct

    def _reduced(self, X: np.ndarray, T: np.ndarray, w=None) -> tuple[float, int, dict[str, np.ndarray]]:
        """The mean loss and gradients over every process's rows of this step's global batch.

        Each process's data gradients, weighted by its rows, its loss and its row count go in
        one contiguous buffer and one sum; the penalty (of the weights every process shares)
        is added once, after."""
        net = self.net
        n = len(X)
        if n == 0:
            loss, correct, grads = 0.0, 0, {k: np.zeros_like(net.params[k]) for k in PARAM_NAMES}
        elif self.compiled:
            loss, correct, grads = minibatch.loss_and_grads(net.params, X, T, 0.0, 0.0, net.activation, self.task, w)
        else:
            loss, _, grads = net.loss_and_grads(X, T, weights=w)
            correct = net.last_correct
        sizes = [grads[k].size for k in PARAM_NAMES]
        buf = np.empty(sum(sizes) + 6, dtype=np.float64)
        at = 0
        for k, size in zip(PARAM_NAMES, sizes):
            np.multiply(grads[k].reshape(-1), n, out=buf[at:at + size])
            at += size
        buf[at:at + 6] = (loss * n, correct, *stop_votes(self.local_stop), n)
        started = time.perf_counter()
        self.comm.allreduce(buf)
        self.comm_seconds += time.perf_counter() - started
        self.stop_everywhere = agreed_stop(buf[at + 2:at + 5])
        total_n = buf[-1]
        self.last_rows = int(total_n)  # the global batch's rows
        if total_n == 0:
            return 0.0, 0, {k: np.zeros_like(net.params[k]) for k in PARAM_NAMES}
        correct = int(round(buf[at + 1]))
        buf /= total_n
        at, out = 0, {}
        for k, size in zip(PARAM_NAMES, sizes):
            out[k] = buf[at:at + size].reshape(net.params[k].shape).astype(net.dtype)
            at += size
        for k in ("W1", "W2"):
            w = net.params[k]
            if self.l2:
                out[k] += self.l2 * w
            if self.l1:
                out[k] += self.l1 * np.sign(w)
        return float(buf[at]) + net.penalty(self.l1, self.l2), correct, out
