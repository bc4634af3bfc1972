"""``partial_fit``: a pipeline pushes rows, in order; the model is set up lazily from the first block."""

from __future__ import annotations

import numpy as np

from ..data.scaling import DataStats
from ..errors import ConfigError, DataError
from ..model import Model
from .state import TrainState, make_run_optimizer
from .update import choose_update, divergence

__all__ = ["partial_fit"]


def partial_fit(trainer, X, y, classes=None, sample_weight=None) -> None:
    """``Trainer.partial_fit``'s work (see its documentation): ``trainer``'s model updated in place."""
    cfg = trainer.config
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
    if trainer.model is None:
        stats = DataStats()
        stats.update(X, y, "partial_fit")
        if classes is not None:
            stats.classes |= set(np.asarray(classes).tolist())
        trainer.model = Model.build(cfg, stats, X.shape[1], [f"f{j}" for j in range(X.shape[1])], "y", None, None,
                                    "partial_fit")
        trainer.optimizer, trainer.state = make_run_optimizer(cfg), TrainState()
        trainer.stepper = None
    elif X.shape[1] != trainer.net.n_in:
        raise DataError(f"partial_fit: {X.shape[1]} features, the model expects {trainer.net.n_in}")
    if trainer.stepper is None:  # a model loaded or trained by fit: its strategy for this use
        trainer.stepper = choose_update(cfg, trainer.model, trainer.optimizer)
        trainer.stepper.load()
    Xs, T = trainer.model.prepare(X, y, "partial_fit")
    # a block of rows per update where the strategy takes blocks, else batches of batch_size
    bs = max(len(Xs), 1) if trainer.stepper.blocks else cfg.batch_size
    total = 0.0
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            for a in range(0, len(Xs), bs):
                done = trainer.stepper.update(Xs[a:a + bs], T[a:a + bs], trainer.global_step,
                                              None if w is None else w[a:a + bs])
                if not np.isfinite(done.loss_sum):
                    raise divergence(f"batch step {trainer.global_step + 1}", done.loss)
                trainer.state.global_step += done.steps
                total += done.loss_sum
    finally:
        trainer.stepper.settle()  # the model whole, for whatever reads it between calls
    trainer.last_loss = total / max(len(Xs), 1)  # the call's mean loss (per row)
