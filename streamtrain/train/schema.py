"""What a trainer's checkpoint must hold, checked before any of it reaches the network or compiled code.

Format-1 checkpoints (streamtrain before the history moved to ``metrics.jsonl``) are
upgraded to today's layout first. A checkpoint is untrusted input: its checksum detects accidents, not someone who can
rewrite the file and the checksum with it. ``TRAINER`` validates every metadata field
(type, range, names from their tables), derives from the model's size the exact dtype and
shape of every array the file may hold, and after reading checks the values (finite
parameters, positive scales). Arrays of the wrong shape would otherwise let the compiled
step index out of bounds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import LIMITS, MAX_FEATURES, TrainConfig
from ..features.encoding import Encoding
from ..io.checkpoint import FORMAT_VERSION, Schema
from ..nn.optim import OPTIMIZERS

__all__ = ["TRAINER", "TrainerSchema", "Section", "SECTIONS", "register_section", "MAX_FEATURES", "MAX_OUTPUTS",
           "field", "integer", "number", "string", "string_list", "short", "INT64"]

# A model's size is bounded so that a checkpoint cannot make the loader allocate without limit.
MAX_OUTPUTS = 1 << 16
MAX_PARAMS = 1 << 31
INT64 = (1 << 63) - 1


# The checks of metadata fields, each raising ``ValueError`` that names the field (``name``, or
# ``where.key``): for the schema's parts and for the sections registered with it.
def field(meta: dict, key: str, where: str = ""):
    if not isinstance(meta, dict):
        raise ValueError(f"metadata field {where or 'top level'} must be a mapping")
    if key not in meta:
        raise ValueError(f"metadata field {where + '.' if where else ''}{key} is missing")
    return meta[key]


def integer(value, name: str, lo: int = 0, hi: int = INT64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"metadata field {name} must be an integer in [{lo}, {hi}], got {short(value)}")
    return value


def number(value, name: str, lo: float = -math.inf, hi: float = math.inf, none: bool = False):
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"metadata field {name} must be a finite number in [{lo}, {hi}], got {short(value)}")
    return value


def string(value, name: str, choices=None, none: bool = False):
    if value is None and none:
        return None
    if not isinstance(value, str) or (choices is not None and value not in choices):
        want = f"one of {', '.join(choices)}" if choices is not None else "a string"
        raise ValueError(f"metadata field {name} must be {want}, got {short(value)}")
    return value


def string_list(value, name: str, length: int | None = None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or \
            (length is not None and len(value) != length):
        raise ValueError(f"metadata field {name} must be a list of {length if length is not None else ''} "
                         f"strings, got {short(value)}")
    return value


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Section:
    """A top-level part of a checkpoint's metadata that a layer above ``train/`` writes (the
    service's ``stream``: ``serve/section.py``), declared by its owner with ``register_section``
    so that ``TRAINER`` checks it as strictly as its own parts. Each method raises ``ValueError``
    naming the first thing wrong (``field``, ``integer``... above say it the schema's way); the
    trainer's own parts of ``meta`` are validated before any of them is called."""

    def validate(self, value: Any, meta: dict) -> None:
        """Check the section's metadata ``value`` (untrusted: any JSON value)."""
        raise NotImplementedError

    def arrays(self, value: Any, meta: dict) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """The arrays a checkpoint with this section must hold, ``{name: (dtype, shape)}``, each
        named ``<section>.*``."""
        return {}

    def check(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Check the values of the arrays once read (all are finite already)."""


# The sections a checkpoint may hold besides the trainer's own parts, by name.
SECTIONS: dict[str, Section] = {}


def register_section(name: str, section: Section) -> Section:
    """Let a checkpoint hold ``meta[name]``, checked by ``section`` (its owner calls this when it is
    imported); a checkpoint holding a section nobody registered is refused."""
    if name in TrainerSchema.TOP:
        raise ValueError(f"{name!r} is a part of the trainer's checkpoint, not a section of its own")
    SECTIONS[name] = section
    return section


class TrainerSchema(Schema):
    """The checkpoint a ``Trainer`` writes (see ``train.state.checkpoint_contents``), with the
    sections registered (``SECTIONS``)."""

    TOP = {"format_version", "streamtrain_version", "config", "model", "state", "fingerprint"}
    MODEL = {"n_in", "hidden", "n_out", "activation", "task", "init", "dtype", "classes", "feature_names",
             "selection", "label", "scale", "source_format", "weight", "class_weights", "encoding"}
    STATE = {"global_step", "sampler", "epoch_acc", "early_stopping", "record", "restored_best"}

    def upgrade(self, meta: dict) -> dict:
        """A format-1 checkpoint's metadata in today's layout (its history dropped but the last epoch)."""
        if meta.get("format_version") != 1 or not isinstance(meta.get("model"), dict):
            return meta
        history = meta.get("history")
        fingerprint = meta.get("fingerprint")
        model = {**meta["model"], **{k: meta.get(k) for k in ("classes", "feature_names", "selection", "label",
                                                              "scale")},
                 "source_format": fingerprint.get("format") if isinstance(fingerprint, dict) else None}
        state = {k: meta.get(k) for k in ("global_step", "sampler", "epoch_acc", "early_stopping")}
        early = state["early_stopping"]
        if isinstance(early, dict) and "best_loss" in early:  # the best validation loss, by its old name
            state["early_stopping"] = {"best": early["best_loss"], **{k: v for k, v in early.items()
                                                                      if k != "best_loss"}}
        state.update(record=history[-1] if isinstance(history, list) and history else None, restored_best=None)
        return {"format_version": 2, "streamtrain_version": meta.get("streamtrain_version", ""),
                "config": meta.get("config"), "model": model, "state": state, "fingerprint": fingerprint}

    def arrays(self, meta: dict) -> tuple[dict, list[dict]]:
        self.validate_meta(meta)
        m = meta["model"]
        dt = np.dtype(m["dtype"])
        n_in, hidden, n_out = m["n_in"], m["hidden"], m["n_out"]
        rows = Encoding.from_state(m["encoding"]).n_rows if m.get("encoding") is not None else n_in
        shapes = {"W1": (rows, hidden), "b1": (hidden,), "W2": (hidden, n_out), "b2": (n_out,)}
        required = {f"param.{k}": (dt, s) for k, s in shapes.items()}
        groups = [{f"best.{k}": (dt, s) for k, s in shapes.items()},
                  {"scaler.mean": (dt, (n_in,)), "scaler.scale": (dt, (n_in,))},
                  {"target.mean": (np.dtype(np.float64), (n_out,)), "target.std": (np.dtype(np.float64), (n_out,))}]
        state = OPTIMIZERS[meta["config"]["optimizer"]].state(shapes, dt)  # what the optimiser declares
        if state:
            groups.append({f"optim.{k}": v for k, v in state.items()})
        for name, section in _present(meta):
            own = section.arrays(meta[name], meta)
            if any(not k.startswith(f"{name}.") for k in own):  # never the trainer's arrays, nor another's
                raise TypeError(f"checkpoint section {name!r} declares arrays not named {name}.*")
            required.update(own)
        return required, groups

    def check(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ValueError(f"array {name} holds NaN or Inf")
        for _, section in _present(meta):
            section.check(arrays, meta)
        if "scaler.scale" in arrays and not (arrays["scaler.scale"] >= 0).all():  # (0: a feature ignored)
            raise ValueError("array scaler.scale holds negative values")
        if "target.std" in arrays and (meta["model"]["task"] != "regression" or not (arrays["target.std"] > 0).all()):
            raise ValueError("array target.std is a regression's positive standard deviations")
        state = {k[len("optim."):]: a for k, a in arrays.items() if k.startswith("optim.")}
        why = OPTIMIZERS[meta["config"]["optimizer"]].check(state) if state else None
        if why:
            raise ValueError(why.replace("array ", "array optim.", 1))

    def validate_meta(self, meta: dict) -> None:
        """Raise ``ValueError`` naming the first metadata field of the wrong type or out of range."""
        for where, table, keys in (("", meta, self.TOP | set(SECTIONS)), ("model", field(meta, "model"), self.MODEL),
                                   ("state", field(meta, "state"), self.STATE)):
            if not isinstance(table, dict):
                raise ValueError(f"metadata field {where} must be a mapping")
            unknown = sorted(set(table) - keys, key=str)
            if unknown:
                raise ValueError(f"unexpected metadata field {where + '.' if where else ''}{short(unknown[0])}")
        integer(field(meta, "format_version"), "format_version", 1, FORMAT_VERSION)
        string(meta.get("streamtrain_version", ""), "streamtrain_version")
        try:
            config = TrainConfig.from_dict(field(meta, "config"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata field config: {e}") from None
        model = meta["model"]
        from ..data.scaling import SCALINGS
        from ..nn.functions import ACTIVATIONS, INITS, TASKS

        n_in = integer(field(model, "n_in", "model"), "model.n_in", 1, MAX_FEATURES)
        integer(field(model, "hidden", "model"), "model.hidden", *LIMITS["hidden"])
        n_out = integer(field(model, "n_out", "model"), "model.n_out", 1, MAX_OUTPUTS)
        if (n_in + n_out + 1) * model["hidden"] + n_out > MAX_PARAMS:
            raise ValueError(f"metadata field model describes {(n_in + n_out + 1) * model['hidden']} parameters, "
                             f"more than {MAX_PARAMS}")
        string(field(model, "activation", "model"), "model.activation", tuple(ACTIVATIONS))
        task = string(field(model, "task", "model"), "model.task", tuple(TASKS))
        string(field(model, "init", "model"), "model.init", tuple(INITS))
        string(field(model, "dtype", "model"), "model.dtype", ("float32", "float64"))
        if (model["dtype"], model["activation"], model["hidden"]) != (config.dtype, config.activation, config.hidden):
            raise ValueError("metadata fields model and config disagree on dtype, activation or hidden")
        self._check_classes(field(model, "classes", "model"), task, n_out)
        string_list(field(model, "feature_names", "model"), "model.feature_names", n_in)
        selection = field(model, "selection", "model")
        if selection is not None and not isinstance(selection, str):
            string_list(selection, "model.selection")
        string(field(model, "label", "model"), "model.label", none=True)
        string(field(model, "scale", "model"), "model.scale", tuple(SCALINGS))
        string(model.get("source_format"), "model.source_format", none=True)
        rows = self._check_encoding(model.get("encoding"), model) or n_in  # the first layer's rows
        if (rows + n_out + 1) * model["hidden"] + n_out > MAX_PARAMS:
            raise ValueError(f"metadata field model describes {(rows + n_out + 1) * model['hidden']} parameters, "
                             f"more than {MAX_PARAMS}")
        string(model.get("weight"), "model.weight", none=True)
        cw = model.get("class_weights")
        if cw is not None:
            if not isinstance(cw, list) or len(cw) != max(len(model["classes"]), 2 if task == "binary" else 0):
                raise ValueError("metadata field model.class_weights must be a weight for each class")
            for i, v in enumerate(cw):
                number(v, f"model.class_weights[{i}]", 0.0)
        state = meta["state"]
        integer(field(state, "global_step", "state"), "state.global_step")
        self._check_sampler(field(state, "sampler", "state"))
        acc = field(state, "epoch_acc", "state")
        number(field(acc, "loss_sum", "state.epoch_acc"), "state.epoch_acc.loss_sum")
        integer(field(acc, "n", "state.epoch_acc"), "state.epoch_acc.n")
        integer(acc.get("correct", 0), "state.epoch_acc.correct")
        number(field(acc, "seconds", "state.epoch_acc"), "state.epoch_acc.seconds", 0)
        early = field(state, "early_stopping", "state")
        number(field(early, "best", "state.early_stopping"), "state.early_stopping.best", none=True)
        if field(early, "best_epoch", "state.early_stopping") is not None:
            integer(early["best_epoch"], "state.early_stopping.best_epoch", 1)
        integer(field(early, "wait", "state.early_stopping"), "state.early_stopping.wait")
        record = state.get("record")
        if record is not None and (not isinstance(record, dict) or not isinstance(record.get("epoch"), int)):
            raise ValueError("metadata field state.record must be a mapping with an epoch")
        if state.get("restored_best") is not None:
            integer(state["restored_best"], "state.restored_best", 1)
        if not isinstance(field(meta, "fingerprint"), dict):
            raise ValueError("metadata field fingerprint must be a mapping")
        for name, section in _present(meta):
            section.validate(meta[name], meta)

    @staticmethod
    def _check_encoding(state: Any, model: dict) -> int | None:
        """The first layer's rows the encoding gives (None: no encoding), after checking it."""
        if state is None:
            return None
        try:
            enc = Encoding.from_state(state)
        except ValueError as e:
            raise ValueError(f"metadata field model.encoding: {e}") from None
        if enc.feature_names != model["feature_names"]:
            raise ValueError("metadata field model.encoding does not give the model's feature names")
        if enc.classes is not None and enc.classes != model["classes"]:
            raise ValueError("metadata field model.encoding's label classes differ from model.classes")
        return enc.n_rows

    @staticmethod
    def _check_classes(classes: Any, task: str, n_out: int) -> None:
        if not isinstance(classes, list) or not (
                all(isinstance(c, (int, float, str)) and not isinstance(c, bool) for c in classes)
                or all(isinstance(c, bool) for c in classes)):  # (a boolean label's: [false, true])
            raise ValueError("metadata field classes must be a list of numbers, strings or booleans")
        want = {"regression": 0, "binary": 2, "multiclass": n_out}[task]
        if len(classes) != want and not (task == "binary" and len(classes) == 1):
            raise ValueError(f"metadata field classes has {len(classes)} entries; a {task} model "
                             f"with {n_out} outputs needs {want}")
        if task == "binary" and n_out != 1:
            raise ValueError("a binary model has one output")
        if len(set(map(repr, classes))) != len(classes):
            raise ValueError("metadata field classes has repeated entries")

    @staticmethod
    def _check_sampler(s: Any) -> None:
        if s is None:
            return
        if not isinstance(s, dict):
            raise ValueError("metadata field sampler must be a mapping")
        for key in ("epoch", "position", "batch_size", "window_rows", "n_rows", "seed", "rank", "world_size"):
            if key in s:
                integer(s[key], f"sampler.{key}", 1 if key in ("batch_size", "window_rows", "world_size") else 0)
        for key in ("epoch", "position"):
            field(s, key, "sampler")
        if "shuffle" in s:
            from ..data.sampling import SHUFFLES

            string(s["shuffle"], "sampler.shuffle", tuple(SHUFFLES))
        if "shard" in s:
            string(s["shard"], "sampler.shard", ("positions", "batches"))
        for key in ("drop_last", "replacement"):
            if key in s and not isinstance(s[key], bool):
                raise ValueError(f"metadata field sampler.{key} must be true or false")


def _present(meta: dict):
    """``(name, section)`` of each registered section ``meta`` holds."""
    return [(name, section) for name, section in list(SECTIONS.items()) if name in meta]


TRAINER = TrainerSchema()
