"""A trainer's state as a checkpoint: what is saved, and how a run is restored or resumed.

A mixin of ``Trainer``. Everything that decides the next update goes in, so a resumed run
is bitwise the run that never stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..config import TrainConfig
from ..data.sampling import Sampler
from ..data.scaling import Scaler
from ..errors import CheckpointError, TrainingError
from ..io.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    resolve_checkpoint,
    rotate,
    save_checkpoint,
)
from ..nn.network import PARAM_NAMES, TwoLayerNet
from ..nn.optim import make_optimizer
from ..readers.base import Dataset
from .schema import TRAINER

__all__ = ["CheckpointState"]


class CheckpointState:
    """Checkpoint methods of ``Trainer``."""

    def state(self, sampler: Sampler | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything a checkpoint holds: arrays and JSON metadata."""
        arrays = {f"param.{k}": v for k, v in self.net.params.items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_dict().items()})
        arrays.update({f"scaler.{k}": v for k, v in self.scaler.state().items() if k != "kind"})
        if self._best_params is not None:
            arrays.update({f"best.{k}": v for k, v in self._best_params.items()})
        meta = {
            "streamtrain_version": __version__,
            "config": self.config.to_dict(),
            "model": self.net.config(),
            "task": self.task,
            "classes": self.classes,
            "feature_names": self.feature_names,
            "selection": self.selection,
            "label": self.label_name,
            "scale": self.scaler.kind,
            "global_step": self.global_step,
            "sampler": sampler.state_dict() if sampler else self._sampler_state,
            "epoch_acc": self._epoch_acc,
            "early_stopping": self._early,
            "history": self.history,
            "fingerprint": self.fingerprint,
        }
        return arrays, meta

    def _save(self, directory, sampler: Sampler) -> Path:
        """Checkpoint the current state into ``directory`` (rotating old ones): the state is copied
        now and written by the background writer (``self._writer.wait()`` for it to be on disk)."""
        for k, v in self.net.params.items():
            if not np.all(np.isfinite(v)):
                raise TrainingError(f"training diverged: parameter {k} is not finite after batch step "
                                    f"{self.global_step}; refusing to write a checkpoint (lower --lr)")
        if self._lock is not None:
            self._lock.check()
        arrays, meta = self.state(sampler)
        # A snapshot: training changes the arrays and dicts in place while the write runs.
        arrays = {k: np.array(v) for k, v in arrays.items()}
        meta = json.loads(json.dumps(meta))
        path = Path(directory) / checkpoint_name(self.global_step)
        keep = self.config.keep

        def write():
            try:
                save_checkpoint(path, arrays, meta)
            except OSError as e:  # disk full, permissions...: the previous checkpoint is intact
                raise CheckpointError(f"{path}: cannot write the checkpoint ({e.strerror or e}); "
                                    "the previous checkpoint is kept") from None
            rotate(directory, keep)

        self._writer.submit(write)
        self._last_save = time.monotonic()
        return path

    def save(self, path: str | os.PathLike) -> Path:
        """Write the current model and training state to a checkpoint file."""
        arrays, meta = self.state()
        return save_checkpoint(path, arrays, meta)

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        m = meta["model"]
        self.task, self.classes = meta["task"], list(meta["classes"])
        self.feature_names, self.label_name = list(meta["feature_names"]), meta["label"]
        self.selection = meta["selection"]
        self.net = TwoLayerNet(m["n_in"], m["hidden"], m["n_out"], m["activation"], m["task"], m["init"],
                               dtype=m["dtype"])
        for k in PARAM_NAMES:
            self.net.params[k] = np.array(arrays[f"param.{k}"])
        self.scaler = Scaler(meta["scale"], arrays.get("scaler.mean"), arrays.get("scaler.scale"), m["dtype"])
        self.optimizer = make_optimizer(self.config.optimizer, lr=self.config.lr, momentum=self.config.momentum)
        self.optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
        best = {k[5:]: np.array(v) for k, v in arrays.items() if k.startswith("best.")}
        self._best_params = best or None
        self.global_step = int(meta["global_step"])
        self._sampler_state = meta.get("sampler")
        self._epoch_acc = dict(meta["epoch_acc"])
        self._early = dict(meta["early_stopping"])
        self.history = list(meta.get("history", []))
        self.fingerprint = meta["fingerprint"]

    def _resume(self, directory, train: Dataset, force: bool, log) -> bool:
        found = latest_checkpoint(directory, warn=log and (lambda m: log(f"warning: {m}")), schema=TRAINER)
        if found is None:
            return False
        path, arrays, meta = found
        saved = TrainConfig.from_dict(meta["config"])  # validated by the schema
        changed = [k for k in ("hidden", "activation", "dtype") if getattr(saved, k) != getattr(self.config, k)]
        if changed:  # not even --force: the saved parameters have another shape
            raise CheckpointError(f"{path}: cannot resume with another {changed[0]} "
                                  f"({getattr(saved, changed[0])!r} -> {getattr(self.config, changed[0])!r}); "
                                  "use another --checkpoint-dir for a new model")
        problems = self.config.differences(saved)
        fp = train.fingerprint()
        saved_fp = meta["fingerprint"]
        problems += [("data changed in place (its files' sizes or modification times, or sampled chunks, differ)"
                      if k == "content" else f"data {k}: {saved_fp[k]!r} -> {fp[k]!r}")
                     for k in fp if k in saved_fp and saved_fp[k] != fp[k]]
        if problems and not force:
            raise CheckpointError(f"{path}: cannot resume exactly; changed since the checkpoint: "
                                  f"{'; '.join(problems)} (pass --force to resume anyway)")
        if meta["model"]["n_in"] != train.n_features:
            raise CheckpointError(f"{path}: the model takes {meta['model']['n_in']} features, "
                                  f"{train.path} has {train.n_features}")
        self._restore(arrays, meta)
        self.fingerprint = fp
        if log:
            s = meta["sampler"] or {"epoch": 0, "position": 0}
            log(f"resuming from {path} (epoch {s['epoch'] + 1}, row {s['position']} of the epoch)")
        return True

    @classmethod
    def load(cls, path: str | os.PathLike):
        """A Trainer restored from a checkpoint file or directory (its newest valid checkpoint)."""
        found, arrays, meta = resolve_checkpoint(path, schema=TRAINER)
        t = cls(TrainConfig.from_dict(meta["config"]))
        t._restore(arrays, meta)
        return t
