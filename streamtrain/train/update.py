"""Update strategies: how a span of rows changes the parameters, behind one ``update()``.

``choose_update`` is the one place for fast paths, chosen once per run:

- ``PerSampleSGD``: batch size 1 with plain SGD on one process: the compiled per-sample loop,
  a whole block of single-sample updates per call (``blocks``: the loader hands it whole groups);
  with inputs that are codes too (an L2 penalty's decay lazy), unless an L1 penalty moves every
  row at every step;
- ``PerSampleAdam``: batch size 1 with Adam over inputs that are codes on one process, without
  a penalty: the compiled per-sample loop of lazy Adam, a block per call;
- ``FusedSGD``: minibatches with plain SGD on one process: the fused compiled step (forward,
  backward and update in one call; it leaves the weights alone when the loss is not finite);
- ``GradientStep``: another optimiser, or inputs that are codes (``nn.network.InputLayout``): the
  batch's gradients (compiled, or numpy) -> its step;
- ``ReducedStep``: several processes: the gradients -> their sum over processes -> the step.

The training loop, ``partial_fit`` and the service's learner call ``update`` alike and never
ask which strategy they hold; ``update_batches`` makes consecutive batches (one compiled call
where the strategy ``fuses`` them: plain SGD and Adam on one process); a diverged update is
reported by ``divergence``, written once.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from ..errors import TrainingError
from ..nn import kernels, minibatch, online, sparse_compiled
from ..nn.network import PARAM_NAMES, RowGrad, penalty_of, sum_rows
from ..nn.optim import SGD, Adam, _fits, zero_state
from ..nn.schedules import rates, varies
from .distributed import LOCAL, Communicator

__all__ = ["Update", "Outcome", "Batches", "add_up", "PerSampleSGD", "PerSampleAdam", "FusedSGD", "GradientStep",
           "ReducedStep", "choose_update", "divergence", "stop_votes", "agreed_stop"]


class Outcome(NamedTuple):
    """What an update did: the summed loss of its rows (NaN or inf where it diverged: then the
    parameters are as they were), the rows classified right before it, its steps and its rows
    (with several processes, the global batch's)."""

    loss_sum: float
    correct: int
    steps: int
    rows: int

    @property
    def loss(self) -> float:
        """The mean loss per row (plus the penalty, for a minibatch)."""
        return self.loss_sum / max(self.rows, 1)


class Batches(NamedTuple):
    """What ``update_batches`` did: the ``Outcome`` of the updates it made, the loss of the
    batch it stopped at (not finite: the parameters are as they were before it) or None, and
    each update's summed loss (callers add them up one at a time, in order, as they would the
    updates one by one: a total then does not depend on how the batches were grouped)."""

    done: Outcome
    diverged: float | None
    losses: list


def add_up(total: float, losses) -> float:
    """``total`` plus each of ``losses`` in turn (the float sums the updates one by one make)."""
    for loss in losses:
        total += loss
    return total


def divergence(where: str, loss: float | None = None) -> TrainingError:
    """The error of a run whose loss (or parameters) stopped being finite (``where``: "epoch 3,
    batch step 7")."""
    said = "" if loss is None else f" (loss is {loss})"
    return TrainingError(f"training diverged at {where}{said}; lower the learning rate (--lr) "
                         "or check the data for extreme values")


def stop_votes(reason: str | None) -> tuple[float, float, float]:
    """A process's wish to stop, as three counts to sum: (SIGTERM, SIGINT, anything else)."""
    return (float(reason == "SIGTERM"), float(reason == "SIGINT"), float(reason not in (None, "SIGTERM", "SIGINT")))


def agreed_stop(votes) -> str | None:
    """Why every process stops, from the summed votes (a signal names it), or None."""
    term, sigint, other = votes
    return "SIGTERM" if term else "SIGINT" if sigint else "stopped by another process" if other else None


class Update:
    """``update(X, T, step, w)``: the update(s) a span of rows makes, the run's ``step``-th first;
    ``T`` holds class indices (or regression targets), ``w`` per-row loss weights (a weight
    column; class weights are applied here). Returns an ``Outcome``."""

    blocks = False  # a call takes a block of rows, one step per row
    fuses = False  # update_batches makes a span's batches in one compiled call
    reduces = False  # several processes take part in every step
    compiled = False
    decay = None  # plain SGD's lazy L2 decay of a table of codes (``nn.decay.LazyDecay``), where there is one
    lanes = 1  # threads a fused call of batches may take (``minibatch.step_batches``): the trainer's grant

    @property
    def splits(self) -> bool:
        """Whether a second core speeds this strategy's steps up: its fused calls split the
        hidden layer's columns between two lanes (``minibatch.split``)."""
        return self.fuses and not self.blocks and minibatch.split(self.net.hidden)

    def __init__(self, config, model, optimizer, comm: Communicator = LOCAL, total_steps: int = 0):
        self.config, self.net, self.task, self.optimizer, self.comm = config, model.net, model.task, optimizer, comm
        self.lr, self.l1, self.l2 = config.learning_rate, config.l1, config.l2
        self.scheduled = varies(config, total_steps)
        self.total_steps = total_steps
        self._rate_block, self._rates = -1, None
        self.class_weights = getattr(model, "class_weight_vector", None)
        # Several processes stop together (``ReducedStep``): what this one wishes, what all agreed.
        self.local_stop: str | None = None
        self.stop_everywhere: str | None = None

    def load(self) -> None:
        """Compile (or load) the compiled code this strategy runs; before any BLAS thread limit is
        set (the first product loads scipy's BLAS, which the limit must see)."""

    def rate(self, step: int) -> float:
        """The learning rate of the run's ``step``-th update."""
        if not self.scheduled:
            return self.lr
        # Computed for 1,024 steps at a time (about 10 us per call otherwise, a fifth of a small
        # batch's step); blocks start at multiples of 1,024, so a resumed run takes the same values.
        block = step >> 10
        if block != self._rate_block:
            self._rate_block = block
            self._rates = rates(self.config, np.arange(block << 10, (block + 1) << 10), self.total_steps)
        return float(self._rates[step & 1023])

    def weights(self, T: np.ndarray, w: np.ndarray | None) -> np.ndarray | None:
        """Each row's loss weight: its class's (if any) times its own (if any)."""
        if self.class_weights is None:
            return w
        by_class = self.class_weights[T]
        return by_class if w is None else by_class * w

    def update(self, X: np.ndarray, T: np.ndarray, step: int = 0, w: np.ndarray | None = None) -> Outcome:
        raise NotImplementedError

    def update_batches(self, X: np.ndarray, T: np.ndarray, step: int, batch_size: int, w: np.ndarray | None = None,
                       scaler=None) -> Batches:
        """The updates of consecutive batches of ``batch_size`` rows of ``X`` (a whole number of
        them; for a strategy that ``blocks``, one call), each as ``update`` makes it, the features
        scaled by ``scaler`` (a ``Scaler``) first where one is given; they stop at the first that
        diverges. Fast paths make them in one compiled call (``FusedSGD``, ``GradientStep``)."""
        span = len(X) if self.blocks else batch_size
        losses, correct, steps, rows = [], 0, 0, 0
        for a in range(0, len(X), max(span, 1)):
            b = a + span
            Xb = X[a:b] if scaler is None else scaler.transform(X[a:b])
            done = self.update(Xb, T[a:b], step + steps, None if w is None else w[a:b])
            if not math.isfinite(done.loss_sum):
                return Batches(Outcome(add_up(0.0, losses), correct, steps, rows), done.loss_sum, losses)
            losses.append(done.loss_sum)
            correct, steps, rows = correct + done.correct, steps + done.steps, rows + done.rows
        return Batches(Outcome(add_up(0.0, losses), correct, steps, rows), None, losses)

    def _compiled_batches(self, X, T, step, batch_size, w, scaler, adam=None) -> Batches | None:
        """``update_batches`` in one call of ``minibatch.step_batches`` (plain SGD, or Adam's
        ``(m, v)``), or None where it cannot take them (a scaling other than standard's, or none)."""
        scale = _scale_of(scaler, X.dtype)
        if scale is False or len(X) % batch_size:
            return None
        n = len(X) // batch_size
        scalars = np.zeros((n, 7))
        if adam is None:
            scalars[:, 0] = [self.rate(step + k) for k in range(n)]
        else:
            opt = self.optimizer
            for k in range(n):  # as Adam.step computes them (Python's floats: the same bits)
                t = opt.t + k + 1
                scalars[k] = (opt.beta1, 1.0 - opt.beta1, opt.beta2, 1.0 - opt.beta2,
                              self.rate(step + k) / (1.0 - opt.beta1**t), 1.0 - opt.beta2**t, opt.eps)
        net = self.net
        done, out = minibatch.step_batches(net.params, X, T, batch_size, scalars, self.l1, self.l2, net.activation,
                                           self.task, self.weights(T, w), scale, adam, self.lanes)
        if adam is not None:
            self.optimizer.t += done
            if done:
                self.optimizer.lr = self.rate(step + done - 1)
        losses = [loss * batch_size for loss in out[:done, 0].tolist()]  # (as update's: the mean times the rows)
        made = Outcome(add_up(0.0, losses), int(out[:done, 1].sum()), done, done * batch_size)
        return Batches(made, None if done == n else float(out[done, 0]) * batch_size, losses)

    def advance(self, sampler, rows: int) -> None:
        """Move the sampler past the ``rows`` this update took."""
        sampler.advance_batch(rows)

    def settle(self) -> None:
        """Bring every parameter up to date where updates left some behind (plain SGD's lazy decay:
        at points a step count decides, the end of an epoch or of a call, so a resumed run does the
        same); a no-op for the others."""
        if self.decay is not None:
            self.decay.settle()

    def _lazy_decay(self) -> None:
        """Take up the optimiser's lazy decay of the table (its checkpoint's, or a fresh one)."""
        self.decay = self.optimizer.lazy_decay(self.net.params)
        self.decay.compiled = self.config.compiled


class _PerSample(Update):
    """A block of rows per compiled call, one step per row: the sampler moves on row by row."""

    blocks = compiled = True

    def advance(self, sampler, rows: int) -> None:
        sampler.advance(rows)


class PerSampleSGD(_PerSample):
    """One SGD step per row, a block of rows per compiled call (inputs that are codes: the rows
    of ``W1`` each row selects alone; an L2 penalty's decay of the others lazy)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if self.net.layout is not None and self.l2:
            self._lazy_decay()
        # The table's squares over the scale's square (the reported penalty), summed whole again
        # at every multiple of ``_every`` steps (as many as the table's rows: a pass per row's worth
        # of samples; at the same steps in a resumed run) and after each settle of the decay (which
        # changes their units): the sums, their block of steps, the settles then.
        self._squares = (None, -1, -1)
        self._every = max(len(self.net.params["W1"]), 1 << 16)

    def update(self, X, T, step=0, w=None) -> Outcome:
        params, layout = self.net.params, self.net.layout
        lr = rates(self.config, step + np.arange(len(X)), self.total_steps) if self.scheduled else self.lr
        if self.decay is not None:
            return self._update_decay(X, T, step, w, lr)
        # What a diverged block must give back: every array, or of W1 the rows the block selects
        # (a table of millions of rows is not copied per block).
        picked = None if layout is None else layout.rows(X)  # (once: the loop takes them too)
        rows = None if layout is None else _selected_rows(layout, picked, len(params["W1"]))
        before = _kept(params, rows)
        if layout is None:
            loss_sum, correct = online.sgd_online(params, X, T, lr, self.l1, self.l2, self.net.activation, self.task,
                                                  self.weights(T, w))
        else:
            loss_sum, correct = online.sgd_online_codes(params, layout, X, T, lr, self.net.activation, self.task,
                                                        self.weights(T, w), picked)
        if _gave_back(params, rows, before, loss_sum):
            loss_sum = math.nan
        return Outcome(loss_sum, correct, len(X), len(X))

    def _update_decay(self, X, T, step, w, lr) -> Outcome:
        """``update`` over codes with plain SGD's L2 penalty, its decay lazy: the compiled loop, in
        pieces where the scale falls below ``LazyDecay.FLOOR`` (the table brought up to date between)."""
        params, layout, decay = self.net.params, self.net.layout, self.decay
        weights, picked = self.weights(T, w), layout.rows(X)
        squares, block, settles = self._squares
        if squares is None or block != (step + len(X)) // self._every or settles != decay.settles:
            squares = decay.sums()[0]
        loss_sum, correct, a, n = 0.0, 0, 0, len(X)
        while a < n:
            rows = _selected_rows(layout, picked[a:], len(params["W1"]))
            before = _kept(params, rows)
            stamps = decay.stamp[rows]
            state = np.array([decay.scale, squares])
            loss, right, done = online.sgd_online_codes_decay(
                params, layout, X[a:], T[a:], lr if np.ndim(lr) == 0 else lr[a:], self.net.activation, self.task,
                None if weights is None else weights[a:], picked[a:], self.l2, decay.stamp, state, decay.FLOOR)
            if _gave_back(params, rows, before, loss):
                decay.stamp[rows] = stamps
                return Outcome(math.nan, correct + right, n, n)
            decay.scale, squares = float(state[0]), float(state[1])
            loss_sum, correct, a = loss_sum + loss, correct + right, a + done
            if decay.scale < decay.FLOOR:
                decay.settle()
                squares = decay.sums()[0]
        self._squares = (squares, (step + n) // self._every, decay.settles)
        return Outcome(loss_sum, correct, n, n)


class PerSampleAdam(_PerSample):
    """One lazy Adam step per row over inputs that are codes, a block of rows per compiled call:
    what ``GradientStep`` makes of batches of one row (the rows of ``W1`` a row selects and their
    moments alone move), without its tens of microseconds of calls per row. A block that diverges
    is given back whole, as ``PerSampleSGD``'s: weights, moments and Adam's step count."""

    def update(self, X, T, step=0, w=None) -> Outcome:
        opt, params, n = self.optimizer, self.net.params, len(X)
        for k in PARAM_NAMES:
            if k not in opt.m:
                opt.m[k], opt.v[k] = zero_state(params[k]), zero_state(params[k])
        # each step's rate over the first moment's bias correction, and the second's (for the block
        # at once: a Python loop per row was a twentieth of the row's time)
        t = opt.t + 1 + np.arange(n, dtype=np.float64)
        lr = rates(self.config, step + np.arange(n), self.total_steps) if self.scheduled else self.lr
        scalars = np.column_stack([lr / (1.0 - opt.beta1**t), 1.0 - opt.beta2**t])
        # What a diverged block gives back, as PerSampleSGD's: of W1 and its moments the rows the
        # block selects, the other arrays whole (a table of millions of rows is not copied per block).
        layout = self.net.layout
        rows = _selected_rows(layout, layout.rows(X), len(params["W1"]))
        before = [_kept(d, rows) for d in (params, opt.m, opt.v)]
        loss_sum, correct, done = online.adam_online_codes(params, layout, X, T, scalars, opt.m, opt.v,
                                                           opt.beta1, opt.beta2, opt.eps, self.net.activation,
                                                           self.task, self.weights(T, w))
        if done < n or _gave_back(params, rows, before[0], loss_sum):
            for d, kept in zip((params, opt.m, opt.v), before):
                _gave_back(d, rows, kept, math.nan)  # (a loss that is not finite: every array put back)
            return Outcome(math.nan, correct, n, n)
        opt.t += n
        opt.lr = self.rate(step + n - 1)
        return Outcome(loss_sum, correct, n, n)


def _kept(params: dict[str, np.ndarray], rows: np.ndarray | None) -> dict[str, np.ndarray]:
    """A copy of every array, or of ``W1`` only its ``rows`` (None: all): what a diverged block gives back."""
    return {k: v.copy() if rows is None or k != "W1" else sparse_compiled.take_rows(v, rows) for k, v in params.items()}


def _gave_back(params: dict[str, np.ndarray], rows: np.ndarray | None, before: dict[str, np.ndarray],
               loss: float) -> bool:
    """Whether a block diverged (its loss or a weight it reached is not finite); if so, every array
    is put back as ``before`` (``_kept``) holds it (of ``W1``, its ``rows``): the last good state."""
    def finite(k, v):
        return sparse_compiled.rows_finite(v, rows) if rows is not None and k == "W1" else np.isfinite(v).all()

    if np.isfinite(loss) and all(finite(k, v) for k, v in params.items()):
        return False
    for k, v in before.items():
        if rows is not None and k == "W1":
            params[k][rows] = v
        else:
            params[k][...] = v
    return True


def _selected_rows(layout, picked: np.ndarray, n_rows: int) -> np.ndarray:
    """The rows of ``W1`` a block selects (``picked``: its codes' rows, ``layout.rows``; and the
    plain inputs' rows), sorted: marks in a table of its rows, several times faster than ``np.unique``."""
    mark = np.zeros(n_rows, dtype=bool)
    mark[layout.dense_rows] = True
    mark[picked] = True
    return np.flatnonzero(mark)


class FusedSGD(Update):
    """Forward, backward and the SGD update of a batch in one compiled call."""

    compiled = fuses = True

    def load(self) -> None:
        minibatch.load(self.config.dtype, True)

    def update_batches(self, X, T, step, batch_size, w=None, scaler=None) -> Batches:
        made = self._compiled_batches(X, T, step, batch_size, w, scaler)
        return super().update_batches(X, T, step, batch_size, w, scaler) if made is None else made

    def update(self, X, T, step=0, w=None) -> Outcome:
        net = self.net
        loss, correct = minibatch.sgd_step(net.params, X, T, self.rate(step), self.l1, self.l2, net.activation,
                                           self.task, self.weights(T, w))
        return Outcome(loss * len(X), correct, 1, len(X))


def _scale_of(scaler, dtype) -> tuple[np.ndarray, np.ndarray] | None | bool:
    """A ``Scaler`` as the compiled batches take it for features of ``dtype``: ``(mean, factor)``,
    None (no scaling), or False (what they do not do: another kind, statistics of another dtype)."""
    if scaler is None or scaler.kind == "none":
        return None
    fits = scaler.kind == "standard" and scaler.mean is not None and scaler.mean.dtype == scaler.scale.dtype == dtype
    return (scaler.mean, scaler.scale) if fits else False


def _sums(W: np.ndarray) -> tuple[float, float]:
    """The sum of ``W``'s squares and of its absolute values, in float64 (a block of rows at a
    time: no float64 copy of a table of millions of rows)."""
    sq = ab = 0.0
    for a in range(0, len(W), 1 << 15):
        b = W[a:a + (1 << 15)].astype(np.float64)
        sq += float(np.vdot(b, b))
        ab += float(np.abs(b).sum())
    return sq, ab


class TablePenalty:
    """The penalty's value (``l1`` |W|, ``l2`` / 2 W^2 of ``W1`` and ``W2``) where ``W1`` is a table
    of codes updated lazily: a step changes only the rows it touched, so the sums over ``W1`` move
    by those rows' change (``before`` and ``after`` the step) instead of a pass over the table at
    every step; they are summed whole again every ``REFRESH`` steps (and at a run's first), which
    bounds the rounding a running sum gathers. Only the reported loss depends on them. With plain
    SGD's lazy ``decay`` (L2 alone), the squares are summed over ``scale**2`` (``LazyDecay.sums``):
    an untouched row's decay changes none of them."""

    REFRESH = 1024

    def __init__(self, l1: float, l2: float, decay=None):
        self.l1, self.l2, self.decay = l1, l2, decay
        self.sums: tuple[float, float] | None = None  # W1's squares, absolute values
        self._rows, self._before = None, (0.0, 0.0)
        self._settles = 0  # the decay's settles the sums have seen (each one changes their units)

    def _sums(self, W1: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
        if self.decay is not None:
            return self.decay.sums(rows)
        return _sums(W1 if rows is None else W1[rows])

    def _stale(self) -> bool:
        settles = 0 if self.decay is None else self.decay.settles
        stale, self._settles = settles != self._settles, settles
        return stale

    def value(self, params: dict[str, np.ndarray], step: int) -> float:
        if self.sums is None or step % self.REFRESH == 0 or self._stale():
            self.sums = self._sums(params["W1"])
        sq, ab = self.sums
        if self.decay is not None:
            sq *= self.decay.scale ** 2
        sq2, ab2 = _sums(params["W2"])
        return penalty_of(self.l1, self.l2, sq + sq2, ab + ab2)

    def before(self, params: dict[str, np.ndarray], rows: np.ndarray) -> None:
        self._rows, self._before = rows, self._sums(params["W1"], rows)

    def after(self, params: dict[str, np.ndarray]) -> None:
        if self._stale():
            self.sums = None
        elif self.sums is not None and self._rows is not None:
            sq, ab = self._sums(params["W1"], self._rows)
            self.sums = (self.sums[0] + sq - self._before[0], self.sums[1] + ab - self._before[1])
        self._rows = None


class GradientStep(Update):
    """The batch's gradients (compiled where it can, else numpy), then the optimiser's step."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # (inputs that are codes: numpy's gather and scatter; the compiled kernels take products only)
        self.compiled = self.config.compiled and minibatch.available() and self.net.layout is None
        # Codes' rows: the step updates the rows the batch touched alone (lazy momentum and Adam,
        # a penalty included: on those rows; plain SGD's L2 decay of the others applied when they
        # are next touched or read whole, ``decay``), unless --dense-updates, or plain SGD with an
        # L1 penalty (which updates every row at every step).
        sgd = type(self.optimizer) is SGD
        self.sparse = self.net.layout is not None and not getattr(self.config, "dense_updates", False) \
            and not (self.l1 and sgd)
        if self.sparse and sgd and self.l2:
            self._lazy_decay()
        self.penalty = TablePenalty(self.l1, self.l2, self.decay) if self.sparse and (self.l1 or self.l2) else None

    def load(self) -> None:
        if self.compiled:
            minibatch.load(self.config.dtype, False)

    def gradients(self, X, T, w, l1: float, l2: float) -> tuple[float, int, dict[str, np.ndarray]]:
        """The mean loss (with the penalty of ``l1``, ``l2``), the rows right, and the gradients."""
        net = self.net
        if self.compiled:
            return minibatch.loss_and_grads(net.params, X, T, l1, l2, net.activation, self.task, w)
        loss, penalty, grads = net.loss_and_grads(X, T, l1, l2, w, sparse=self.sparse, penalty=self.penalty is None)
        return loss + penalty, net.last_correct, grads

    def step(self, total: float, grads: dict[str, np.ndarray], step: int) -> None:
        if math.isfinite(total):
            lr = self.optimizer.lr = self.rate(step)
            tracked = self.penalty is not None and isinstance(grads["W1"], RowGrad)
            if tracked:
                self.penalty.before(self.net.params, grads["W1"].rows)
            self.optimizer.step(self.net.params, grads)
            if self.decay is not None and isinstance(grads["W1"], RowGrad):  # (a global batch of no rows: no step)
                self.decay.advance(1.0 - lr * self.l2, grads["W1"].rows)
            if tracked:
                self.penalty.after(self.net.params)

    def catch_up(self, X: np.ndarray) -> None:
        """Bring the rows of the table that ``X``'s codes select up to date (lazy decay)."""
        if self.decay is not None and len(X):
            layout = self.net.layout  # (a row selected twice is caught up once: then it is up to date)
            self.decay.catch_up(np.concatenate([layout.dense_rows, layout.rows(X).reshape(-1)]))

    @property
    def fuses(self) -> bool:
        """Adam on one process with the compiled step: its batches in one call too."""
        opt = self.optimizer
        return type(self) is GradientStep and self.compiled and type(opt) is Adam and opt.compiled \
            and self.penalty is None and self.decay is None and not self.sparse

    def update_batches(self, X, T, step, batch_size, w=None, scaler=None) -> Batches:
        opt, made = self.optimizer, None
        if self.fuses:
            params = self.net.params
            for k in PARAM_NAMES:
                if k not in opt.m:
                    opt.m[k], opt.v[k] = zero_state(params[k]), zero_state(params[k])
            if _fits(params, params, opt.m, opt.v):
                made = self._compiled_batches(X, T, step, batch_size, w, scaler, (opt.m, opt.v))
        return super().update_batches(X, T, step, batch_size, w, scaler) if made is None else made

    def update(self, X, T, step=0, w=None) -> Outcome:
        self.catch_up(X)
        total, correct, grads = self.gradients(X, T, self.weights(T, w), self.l1, self.l2)
        if self.penalty is not None:
            total += self.penalty.value(self.net.params, step)
        self.step(total, grads, step)
        return Outcome(total * len(X), correct, 1, len(X))


class ReducedStep(GradientStep):
    """Several processes: each one's gradients of its share of the global batch, summed over all
    in one allreduce (with the loss, the rows and each one's wish to stop), then the step."""

    reduces = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.comm_seconds = 0.0  # time in the allreduce (waiting for the slowest process included)
        self.gathered_steps = 0  # steps whose touched rows of codes travelled as (row, gradient) pairs

    def update(self, X, T, step=0, w=None) -> Outcome:
        self.catch_up(X)
        total, correct, grads, rows = self._reduced(X, T, self.weights(T, w), step)
        self.step(total, grads, step)
        return Outcome(total * rows, correct, 1, rows)

    def _reduced(self, X: np.ndarray, T: np.ndarray, w=None, step: int = 0
                 ) -> tuple[float, int, dict[str, np.ndarray], int]:
        """The mean loss, the rows right and the gradients over every process's rows of this step's
        global batch, and its rows. Each process's data gradients, weighted by its rows, its loss
        and its row count go in one contiguous buffer and one sum; the penalty (of the weights
        every process shares) is added once, after. The rows of codes that a step touched (lazy
        updates) travel apart, as (row, gradient) pairs or as a sum of the whole matrix
        (``_reduced_rows``)."""
        net, comm = self.net, self.comm
        n = len(X)
        if n == 0:
            loss, correct, grads = 0.0, 0, {k: np.zeros_like(net.params[k]) for k in PARAM_NAMES}
        else:
            loss, correct, grads = self.gradients(X, T, w, 0.0, 0.0)
        mine = None
        if self.sparse:
            mine = grads["W1"] if isinstance(grads["W1"], RowGrad) else \
                RowGrad(np.empty(0, np.intp), np.empty((0, net.params["W1"].shape[1]), net.dtype), net.params["W1"].shape)
        names = [k for k in PARAM_NAMES if mine is None or k != "W1"]
        sizes = [grads[k].size for k in names]
        counts = comm.size if mine is not None else 0  # each process's touched rows, in its own slot
        buf = np.empty(sum(sizes) + counts + 6, dtype=np.float64)
        at = 0
        for k, size in zip(names, sizes):
            np.multiply(grads[k].reshape(-1), n, out=buf[at:at + size])
            at += size
        if counts:
            buf[at:at + counts] = 0
            buf[at + comm.rank] = len(mine.rows)
        buf[at + counts:] = (loss * n, correct, *stop_votes(self.local_stop), n)
        started = time.perf_counter()
        comm.allreduce(buf)
        self.stop_everywhere = agreed_stop(buf[-4:-1])
        total_n = int(buf[-1])  # the global batch's rows
        if total_n == 0:
            self.comm_seconds += time.perf_counter() - started
            return 0.0, 0, {k: np.zeros_like(net.params[k]) for k in PARAM_NAMES}, 0
        out = {}
        if counts:
            out["W1"] = self._reduced_rows(mine, n, buf[at:at + counts].round().astype(np.int64), total_n)
        self.comm_seconds += time.perf_counter() - started
        correct = int(round(buf[-5]))
        total = buf[-6] / total_n
        buf /= total_n
        at = 0
        for k, size in zip(names, sizes):
            out[k] = buf[at:at + size].reshape(net.params[k].shape).astype(net.dtype)
            at += size
        if self.decay is not None:  # rows other processes' batches touched
            self.decay.catch_up(out["W1"].rows)
        for k in ("W1", "W2"):
            g, wk = out[k], net.params[k]
            if isinstance(g, RowGrad):  # the penalty of the rows touched (lazy)
                g, wk = g.values, wk[g.rows]
            if self.l2:
                g += self.l2 * wk
            if self.l1:
                g += self.l1 * np.sign(wk)
        penalty = self.penalty.value(net.params, step) if self.penalty is not None else net.penalty(self.l1, self.l2)
        return float(total) + penalty, correct, {k: out[k] for k in PARAM_NAMES}, total_n

    def _reduced_rows(self, mine: RowGrad, n: int, counts: np.ndarray, total_n: int) -> RowGrad:
        """The global batch's gradient of the rows of codes, from this process's ``mine`` (of its
        ``n`` rows) and every process's count of touched rows: gathered as (row, gradient) pairs
        when they are fewer than the matrix's rows (a click log's step touches a few thousand of
        millions), else summed as the whole matrix with a mark per touched row. Every process
        sums the same values in the same order (rank order): the same result everywhere."""
        shape = mine.shape
        width = shape[1] + 1  # the row's index, then its gradient
        choice = self.config.sparse_reduce
        if choice == "gather" or (choice == "auto" and int(counts.sum()) <= shape[0]):
            pairs = np.empty((len(mine.rows), width), dtype=np.float64)
            pairs[:, 0] = mine.rows
            np.multiply(mine.values, n, out=pairs[:, 1:])
            every = self.comm.allgatherv(pairs, counts)
            rows, sums = sum_rows(every[:, 0].astype(np.intp), every[:, 1:])
            self.gathered_steps += 1
        else:
            whole = np.zeros((shape[0], width), dtype=np.float64)
            whole[mine.rows, 0] = 1
            whole[mine.rows, 1:] = mine.values * n
            self.comm.allreduce(whole.reshape(-1))
            rows = np.flatnonzero(whole[:, 0] > 0)
            sums = whole[rows, 1:]
        return RowGrad(rows, (sums / total_n).astype(self.net.dtype), shape)


def choose_update(config, model, optimizer, comm: Communicator = LOCAL, total_steps: int = 0) -> Update:
    """The strategy for this run's settings (see the module's documentation)."""
    alone, sgd, codes = comm.size == 1, config.optimizer == "sgd", model.net.layout is not None
    if not alone:
        cls = ReducedStep
    elif sgd and config.compiled and config.batch_size == 1 and config.scale != "batch-center" \
            and kernels.available() and not (codes and (config.l1 or config.l2 and (
                config.dense_updates or config.learning_rate * config.l2 >= 1))):
        cls = PerSampleSGD
    elif type(optimizer) is Adam and optimizer.compiled and codes and config.compiled and config.batch_size == 1 \
            and config.scale != "batch-center" and kernels.available() and not (
                config.l1 or config.l2 or getattr(config, "dense_updates", False)):
        cls = PerSampleAdam
    elif sgd and not codes and config.compiled and minibatch.available():
        cls = FusedSGD
    else:
        cls = GradientStep
    chosen = cls(config, model, optimizer, comm, total_steps)
    if chosen.decay is None and getattr(optimizer, "loaded_decay", None):
        optimizer.loaded_decay = {}  # (a checkpoint's lazy decay these settings do not continue: param.W1 holds it)
    return chosen
