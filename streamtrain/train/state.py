"""A run's state between updates, and the checkpoint that holds it with the model and settings.

Everything that decides the next update is here (parameters and optimiser state live with the
model and the optimiser): the sampler's epoch and position, the step count, the running epoch
loss, early stopping's best epoch and parameters. A resumed run is therefore bitwise the run
that never stopped. The history of epochs is not: it is in ``metrics.jsonl`` beside the
checkpoints, so a checkpoint's size stays constant however long the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..config import TrainConfig
from ..nn.optim import make_optimizer

__all__ = ["TrainState", "checkpoint_contents", "restore", "make_run_optimizer"]


def _acc() -> dict[str, Any]:
    return {"loss_sum": 0.0, "n": 0, "correct": 0, "seconds": 0.0}


@dataclass
class TrainState:
    """``global_step``: updates so far; ``sampler``: the sampler's state (epoch, position...);
    ``epoch_acc``: the running epoch's loss sum, rows and seconds; ``early``: early stopping's
    best validation loss and epoch and the epochs waited since; ``best_params``: that epoch's
    parameters (kept when early stopping may restore them); ``record``: the last finished
    epoch's metrics; ``restored_best``: the epoch whose parameters were restored at the end."""

    global_step: int = 0
    sampler: dict[str, Any] | None = None
    epoch_acc: dict[str, Any] = field(default_factory=_acc)
    early: dict[str, Any] = field(default_factory=lambda: {"best": None, "best_epoch": None, "wait": 0})
    best_params: dict[str, np.ndarray] | None = None
    record: dict[str, Any] | None = None
    restored_best: int | None = None

    def new_epoch(self) -> None:
        self.epoch_acc = _acc()

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"best.{k}": v for k, v in (self.best_params or {}).items()}

    def meta(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "sampler": self.sampler, "epoch_acc": self.epoch_acc,
                "early_stopping": self.early, "record": self.record, "restored_best": self.restored_best}

    @classmethod
    def from_checkpoint(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "TrainState":
        best = {k[5:]: np.array(v) for k, v in arrays.items() if k.startswith("best.")}
        return cls(int(meta["global_step"]), meta["sampler"], dict(meta["epoch_acc"]), dict(meta["early_stopping"]),
                   best or None, meta.get("record"), meta.get("restored_best"))


def make_run_optimizer(config: TrainConfig, arrays: dict[str, np.ndarray] | None = None):
    """The optimiser a run's settings name, with its learning rate and hyperparameters, and the
    state a checkpoint's ``arrays`` hold for it."""
    optimizer = make_optimizer(config.optimizer, config.lr, **config.optimizer_params)
    if hasattr(optimizer, "compiled"):
        optimizer.compiled = config.compiled
    if arrays is not None:
        optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
    return optimizer


def checkpoint_contents(config: TrainConfig, model, optimizer, state: TrainState,
                        fingerprint: dict[str, Any], copy: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` of a checkpoint: a snapshot (copies), so training may go on while it is
    written; ``copy=False``: the live arrays (for a writer that sees them frozen: a forked one)."""
    arrays = {**model.arrays(), **{f"optim.{k}": v for k, v in optimizer.state_dict().items()}, **state.arrays()}
    decay = getattr(optimizer, "decay", None)
    if decay is not None and not decay.settled:  # every reader's table up to date (new: not copied); the raw resumes
        arrays.pop("param.W1")
    meta = {"streamtrain_version": __version__, "config": config.to_dict(), "model": model.meta(),
            "state": state.meta(), "fingerprint": fingerprint}
    arrays = {k: np.array(v) if copy else np.asarray(v) for k, v in arrays.items()}
    if "param.W1" not in arrays:
        arrays["param.W1"] = decay.materialised()
    return arrays, json.loads(json.dumps(meta))


def restore(arrays: dict[str, np.ndarray], meta: dict[str, Any]):
    """``(config, model, optimizer, state, fingerprint)`` of a checkpoint validated by ``TRAINER``."""
    from ..model import Model

    config = TrainConfig.from_dict(meta["config"])
    return (config, Model.from_checkpoint(arrays, meta["model"], config), make_run_optimizer(config, arrays),
            TrainState.from_checkpoint(arrays, meta["state"]), meta["fingerprint"])
