"""The training configuration: every setting of a run, with Keras / textbook defaults, validated.

``TrainConfig`` checks every field on construction (types, names from their tables, finite
numbers within ranges that bound resources), so the library refuses what the command line
refuses, and a checkpoint's stored settings are validated the same way when it is loaded.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError, nearest

__all__ = ["TrainConfig", "RESUME_MAY_CHANGE", "ConfigError", "LIMITS", "MAX_FEATURES", "choices", "class_weights"]

# The widest data a model (and make-data) takes.
MAX_FEATURES = 1 << 20

# Bounds that keep a setting from exhausting the machine (a typo of 1e9 hidden units, say).
LIMITS = {
    "hidden": (1, 1 << 20),
    "batch_size": (1, 1 << 31),
    "epochs": (1, 1 << 40),
    "decoder_workers": (0, 64),
    "seed": (0, (1 << 63) - 1),
    "early_stopping": (0, 1 << 31),
    "checkpoint_every": (0, 1 << 62),
    "keep": (1, 1 << 20),
    "cache_max_gb": (0.0, 1 << 20),
    "window_mb": (1e-6, 1 << 20),  # up to a terabyte; the available memory is checked when a run starts
    "lr": (0.0, 1e6),
    "l1": (0.0, 1e6),
    "l2": (0.0, 1e6),
    "val_fraction": (0.0, 1.0),
    "checkpoint_seconds": (0.0, 1e9),
    "peer_timeout": (0.0, 1e9),
    "power_t": (0.0, 10.0),
    "lr_gamma": (0.0, 1e3),
    "lr_step": (1, 1 << 62),
    "lr_min": (0.0, 1e6),
    "warmup": (0, 1 << 62),
    "min_delta": (0.0, 1e9),
    "max_categories": (1, 1 << 24),
    "min_frequency": (1, 1 << 62),
    "hash_buckets": (1, 1 << 20),
    "one_hot_max": (0, (1 << 24) + 64),
    "hash_bits": (1, 28),
}

# What early stopping may watch: each epoch's record has these (accuracy for classification, R^2
# for regression); a loss is better lower, the others higher.
EARLY_STOPPING_METRICS = ("val_loss", "val_accuracy", "val_r2", "train_loss", "train_accuracy")

# Settings that only one schedule reads: given another, they would do nothing.
_SCHEDULE_SETTINGS = {"power_t": ("invscaling",), "lr_gamma": ("step", "exponential"),
                      "lr_step": ("step", "exponential"), "lr_min": ("cosine", "auto")}


def _f(default, help: str, min_open: bool = False, max_open: bool = False, kind: type | None = None,
       listed: bool = False):
    """A field with its help text (the CLI's option is made from it), open range ends, and its
    kind where the default does not tell it (a float that may be None); ``listed``: a
    comma-separated list (its option may be given more than once: the lists are joined)."""
    return field(default=default, metadata={"help": help, "min_open": min_open, "max_open": max_open,
                                            "kind": kind or type(default), "listed": listed})


def class_weights(spec: str) -> str | dict[str, float] | None:
    """``class_weight`` read: None, "balanced", or {label as text: weight}.

    >>> class_weights("0=1, 1=4.5")
    {'0': 1.0, '1': 4.5}
    """
    spec = spec.strip()
    if not spec:
        return None
    if spec == "balanced":
        return spec
    out = {}
    for part in names(spec):
        label, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not label.strip() or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"class_weight: {part.strip()!r} is not label=weight (a weight >= 0); give "
                              "'balanced' or e.g. '0=1,1=5'")
        out[label.strip()] = weight
    return out


def choices() -> dict[str, tuple[str, ...]]:
    """The names each named setting may take, from the tables of the code that implements them."""
    # The tables live with the code they name; imported here lazily (they import numpy).
    from .data.loader import DECODERS
    from .data.sampling import SHUFFLES
    from .data.scaling import SCALINGS
    from .nn.functions import ACTIVATIONS, INITS, TASKS
    from .nn.optim import OPTIMIZERS
    from .nn.schedules import SCHEDULES

    return {"activation": tuple(ACTIVATIONS), "task": ("auto", *TASKS), "init": tuple(INITS),
            "optimizer": ("auto", *OPTIMIZERS), "shuffle": tuple(SHUFFLES), "decoder": tuple(DECODERS),
            "scale": tuple(SCALINGS), "dtype": ("float32", "float64"), "lr_schedule": tuple(SCHEDULES),
            "early_stopping_metric": EARLY_STOPPING_METRICS, "missing": ("impute", "error"),
            "missing_label": ("skip", "error"), "sparse_reduce": ("auto", "gather", "allreduce")}


def names(text: str) -> list[str]:
    """The column names of a comma-separated option; a name holding a comma is written in double
    quotes, as in a CSV row (``--drop '"a,b",c'``)."""
    row = next(csv.reader([text], skipinitialspace=True), [])
    return [c.strip() for c in row if c.strip()]


@dataclass
class TrainConfig:
    """Settings of a training run (all JSON-able, stored in every checkpoint).

    >>> TrainConfig(hidden=0)
    Traceback (most recent call last):
    ...
    streamtrain.errors.ConfigError: hidden: must be between 1 and 1048576, got 0
    """

    hidden: int = _f(64, "Units of the hidden layer.")
    activation: str = _f("relu", "Hidden-layer activation.")
    task: str = _f("auto", "binary, multiclass or regression (auto: from the labels).")
    init: str = _f("normal", "Weight initialisation (normal: N(0, 0.1); glorot; he).")
    batch_size: int = _f(32, "Rows per update (1: online learning; the row count: full-batch descent).")
    epochs: int | None = _f(None, "Passes over the data (default: enough for about 3,000 updates, at least 10 "
                            "and at most 60; on resume: the total to reach).", kind=int)
    lr: float | None = _f(None, "Learning rate (default: the optimiser's, 0.1 for sgd, momentum and nesterov, "
                          "0.003 for adam).", min_open=True, kind=float)
    lr_schedule: str = _f("auto", "How the learning rate changes with the step t: auto (cosine where the run's "
                          "length is known, as in train, stretched to a longer run on resume; constant where it is not, as in "
                          "serve); constant; invscaling "
                          "(lr / t^power_t); step (times lr_gamma every lr_step steps); exponential "
                          "(lr * lr_gamma^(t / lr_step)); cosine (to lr_min over the run).")
    power_t: float = _f(0.5, "The exponent of the invscaling schedule (scikit-learn's power_t, VW's --power_t).")
    lr_gamma: float = _f(0.1, "The factor of the step and exponential schedules.", min_open=True)
    lr_step: int = _f(1000, "The steps over which the step and exponential schedules multiply by lr_gamma.")
    lr_min: float = _f(0.0, "The learning rate the cosine schedule ends at.")
    warmup: int = _f(0, "Steps over which the learning rate ramps up linearly from 0 (0: none).")
    optimizer: str = _f("auto", "The optimiser (each has its default learning rate and its hyperparameters; "
                        "auto: adam, or sgd at batch size 1).")
    # The optimiser's own hyperparameters (see nn.optim.OPTIMIZERS), those not given at their defaults.
    optimizer_params: dict = field(default_factory=dict, metadata={"kind": dict, "help": "Hyperparameters of "
                                                                   "the optimiser."})
    l1: float = _f(0.0, "L1 penalty on the weights.")
    l2: float = _f(0.0, "L2 penalty on the weights.")
    shuffle: str = _f("window", "window: chunk order shuffled, rows within windows; global: all rows; "
                      "none: storage order.")
    window_mb: float = _f(256.0, "Memory budget of the shuffle: three decoded windows of rows (the one served, "
                          "the next, the one being decoded), or for uncompressed HDF5 the file pages mapped in.")
    decoder: str = _f("auto", "Who decodes shuffle windows of compressed data: worker processes (auto: for "
                      "data of 64 MB or more) or a thread.")
    decoder_workers: int = _f(0, "Decoding processes (0: two where there are two cores or more; at most "
                              "the cores and the windows).")
    cache_dir: str = _f("", "Decode compressed or remote DATA (gzip/Blosc HDF5, Zarr, Parquet, s3://) once into an "
                        "uncompressed copy in this directory; later epochs, runs and resumes read it in place "
                        "(empty: decode every epoch).")
    cache_max_gb: float = _f(64.0, "The largest decoded copy --cache-dir may write (beyond it, or beyond the "
                             "free disk: decode every epoch, with a message).")
    drop_last: bool = _f(False, "Drop the last partial batch of each epoch.")
    replacement: bool = _f(False, "Draw each batch i.i.d. (with replacement) instead of shuffling.")
    seed: int = _f(0, "Seed of the shuffle, the initial weights and the hold-out split.")
    scale: str = _f("standard", "Feature scaling (standard: mean and variance from one pass).")
    scale_target: bool = _f(True, "Standardise a regression target inside the model (its mean and variance from "
                                  "the statistics pass, kept in the checkpoint); predictions and metrics stay in "
                                  "the target's units.")
    dtype: str = _f("float32", "Floating-point type of the model and the features.")
    compiled: bool = _f(True, "Run training steps in compiled code (numba); --no-compiled: the numpy path, "
                        "same math.")
    val_fraction: float = _f(0.0, "Hold out this fraction of DATA's rows (hash of the row number) for "
                             "validation.", max_open=True)
    class_weight: str = _f("", "Weigh each class's rows: 'balanced' (inversely to its frequency) or "
                           "'label=weight,...' (others 1); empty: all 1.", listed=True)
    skip_nonfinite: bool = _f(False, "Skip rows with NaN or Inf instead of stopping with an error.")
    missing: str = _f("impute", "Missing feature values (nulls) in tables: impute (a number's column mean, with an "
                      "indicator input where training's data had any; a category's own input), or error.")
    missing_label: str = _f("skip", "Rows of a table whose label is missing: skip them (counted when training "
                                     "starts), or error.")
    max_categories: int = _f(100, "The most values a categorical column keeps (one input each); a string column "
                                  "with more distinct values is hashed, or left out as an identifier where nearly "
                                  "every row differs.")
    min_frequency: int = _f(1, "Category values seen fewer times share the column's 'other' input.")
    hash_buckets: int = _f(64, "Buckets (inputs) of a hashed string column.")
    hash_bits: int | None = _f(None, "Hash every categorical and string column (and cross), each with its own salt, "
                                     "into one table of 2**BITS first-layer rows they all share (Vowpal Wabbit's "
                                     "-b), entering as codes; default: a vocabulary or hash table per column.", kind=int)
    one_hot_max: int = _f(1024, "A categorical or hashed column of more values enters as its code, which selects a "
                                "row of the first layer's weights (no one-hot matrix; the same model); 0: every "
                                "such column.")
    dense_updates: bool = _f(False, "With columns entering as codes: update every row of the first layer's weights at "
                                    "every step (momentum and Adam advance every row's state, and --l1/--l2 penalise "
                                    "every row, as a dense model does), not only the rows the batch touched (the "
                                    "default: for plain SGD the same result, its --l2 decay of untouched rows applied "
                                    "lazily, and with --l1 every row updated; lazy momentum and Adam, a penalty on "
                                    "the touched rows).")
    peer_timeout: float = _f(120.0, "Under MPI: when a training step has waited this many seconds for another "
                                    "process (a lost machine or network link: nothing closes), end the job, naming the "
                                    "processes and hosts that did not answer (0: wait as long as the MPI library does).")
    sparse_reduce: str = _f("auto", "Under MPI, how the gradients of the first layer's rows that a step touched (codes, "
                                    "lazy updates) travel: gather (as row, gradient pairs), allreduce (as the whole "
                                    "matrix) or auto (gather while the pairs are fewer than the matrix's rows).")
    categorical: str = _f("", "Table columns to encode as categories (comma-separated), e.g. integer codes.",
                          listed=True)
    numeric: str = _f("", "Table columns to take as numbers (comma-separated), e.g. a dictionary of numbers.",
                      listed=True)
    hash: str = _f("", "Table columns to hash, COL or COL:BUCKETS (comma-separated).", listed=True)
    drop: str = _f("", "Table columns to leave out (comma-separated).", listed=True)
    cross: str = _f("", "Pairs of categorical columns whose pair of values is one more categorical input, hashed into "
                        "--hash-buckets: A:B (comma-separated), as Vowpal Wabbit's -q.",
                   listed=True)
    date_parts: str = _f("", "Timestamp columns that also enter by their parts, one-hot, in the column's time zone: "
                             "COL (hour, weekday and month) or COL:hour+weekday (comma-separated).",
                        listed=True)
    classes: str = _f("", "The classes, comma-separated, in their order (default: the label's values, sorted); "
                          "a label value outside them is an error.", listed=True)
    strict: bool = _f(False, "Refuse data with a column that cannot be used (lists, structs, binary, identifiers) "
                             "instead of leaving it out with a note; --drop COL leaves one out on purpose.")
    allow_missing_chunks: bool = _f(False, "Train on the fill values of chunks never written (HDF5, Zarr) "
                                    "instead of stopping with an error.")
    early_stopping: int = _f(0, "Stop after this many epochs without a better early_stopping_metric (0: off), "
                             "then keep the best epoch's parameters.")
    early_stopping_metric: str = _f("val_loss", "What early stopping (and --keep-best) watches: a loss is "
                                    "better lower, an accuracy or R^2 higher.")
    min_delta: float = _f(0.0, "How much better the metric must be to count as better.")
    checkpoint_every: int = _f(0, "Also checkpoint every N batches (0: only at epoch ends).")
    checkpoint_seconds: float = _f(0.0, "Also checkpoint when this many seconds have passed since the last "
                                   "one (0: off).")
    keep: int = _f(3, "Checkpoints to keep.")
    keep_best: bool = _f(False, "Also keep the best epoch by validation loss as best.npz.")

    def __post_init__(self):
        if self.optimizer == "auto":  # known now: it decides which hyperparameters may be given
            self.optimizer = "sgd" if self.batch_size == 1 else "adam"
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field of the wrong type or out of range."""
        table = choices()
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            kind = f.metadata["kind"]
            if value is None and f.default is None:
                continue
            if kind is dict:
                continue  # optimizer_params: checked against the optimiser below
            if kind is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"{name}: must be true or false, got {value!r}")
            elif kind is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{name}: must be an integer, got {value!r}")
            elif kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"{name}: must be a finite number, got {value!r}")
                setattr(self, name, float(value))
            elif kind is str and not isinstance(value, str):
                raise ConfigError(f"{name}: must be text, got {value!r}")
            elif name in table and value not in table[name]:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(table[name])}")
            if name in LIMITS:
                lo, hi = LIMITS[name]
                v = getattr(self, name)
                if not lo <= v <= hi:
                    raise ConfigError(f"{name}: must be between {lo:g} and {hi:g}, got {v!r}" if kind is float
                                      else f"{name}: must be between {lo} and {hi}, got {v!r}")
            if f.metadata.get("min_open") and getattr(self, name) <= LIMITS[name][0]:
                raise ConfigError(f"{name}: must be greater than {LIMITS[name][0]:g}, got {value!r}")
            if f.metadata.get("max_open") and getattr(self, name) >= LIMITS[name][1]:
                raise ConfigError(f"{name}: must be below {LIMITS[name][1]:g}, got {value!r}")

        self._check_optimizer_params()
        defaults = {f.name: f.default for f in fields(self)}
        for name, schedules in _SCHEDULE_SETTINGS.items():
            if getattr(self, name) != defaults[name] and self.lr_schedule not in schedules:
                raise ConfigError(f"{name}: does nothing with lr_schedule {self.lr_schedule!r} "
                                  f"(it applies to {', '.join(schedules)})")
        class_weights(self.class_weight)  # raises ConfigError if it cannot be read
        given = self.class_list()
        if len(set(given)) != len(given):
            raise ConfigError(f"classes: {next(c for c in given if given.count(c) > 1)!r} is given twice")

    def _check_optimizer_params(self) -> None:
        from .nn.optim import HYPERPARAMETERS, OPTIMIZERS

        params = self.optimizer_params
        if not isinstance(params, dict):
            raise ConfigError(f"optimizer_params: must be a mapping, got {params!r}")
        spec = OPTIMIZERS[self.optimizer]
        for key, value in params.items():
            if key not in spec.params:
                users = HYPERPARAMETERS.get(key)
                where = f" (it applies to {', '.join(users)})" if users else ""
                raise ConfigError(f"{key}: does nothing with optimizer {self.optimizer!r}{where}")
            problem = spec.params[key].check(value)
            if problem:
                raise ConfigError(f"{key}: {problem}")
            params[key] = float(value)

    def encode_options(self) -> dict | None:  # (from the settings ENCODING_SETTINGS names)
        """How a table's columns are encoded (``EncodingOptions``' fields), or None for the defaults."""
        hashed = {}
        for item in names(self.hash):
            col, _, buckets = item.rpartition(":") if ":" in item else (item, "", "")
            if buckets and not buckets.isdigit():
                raise ConfigError(f"hash: {item!r} is COL or COL:BUCKETS, BUCKETS a positive integer")
            hashed[col] = int(buckets) if buckets else self.hash_buckets
        overrides = {k: v for k, v in (("categorical", names(self.categorical)), ("numeric", names(self.numeric)),
                                       ("hash", hashed), ("drop", names(self.drop))) if v}
        crosses = []
        for item in names(self.cross):
            pair = [x.strip() for x in item.split(":")]
            if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
                raise ConfigError(f"cross: {item!r} is A:B, two distinct columns")
            crosses.append(pair)
        parts = {}
        for item in names(self.date_parts):
            col, _, which = item.rpartition(":") if ":" in item else (item, "", "")
            chosen = [p.strip() for p in which.split("+")] if which else ["hour", "weekday", "month"]
            bad = [p for p in chosen if p not in ("hour", "weekday", "month")]
            if bad or not col:
                near = nearest(bad[0], ("hour", "weekday", "month")) if bad else None
                raise ConfigError(f"--date-parts {item!r}: " + (f"no part {bad[0]!r} (did you mean {near!r}?); "
                                                                if near else "")
                                  + "it is COL or COL:PART+PART, parts of hour, weekday, month")
            parts[col] = chosen
        opts = {"max_categories": self.max_categories, "min_frequency": self.min_frequency,
                "hash_buckets": self.hash_buckets, "one_hot_max": self.one_hot_max, "missing": self.missing,
                "overrides": overrides,
                "classes": self.class_list() or None}
        defaults = {f.name: f.default for f in fields(self)}
        if parts:
            opts["date_parts"] = parts
        if crosses:
            opts["crosses"] = crosses
        if self.hash_bits is not None:
            opts["hash_bits"] = self.hash_bits
        if not overrides and all(getattr(self, k) == defaults[k] for k in opts
                                 if k not in ("overrides", "date_parts", "crosses", "hash_bits")) and not parts \
                and not crosses and self.hash_bits is None:
            return None
        return opts

    def class_list(self) -> list[str]:
        """``classes`` as a list (empty: not given)."""
        return names(self.classes)

    @property
    def learning_rate(self) -> float:
        """The learning rate used: ``lr``, or the optimiser's default."""
        from .nn.optim import OPTIMIZERS

        return OPTIMIZERS[self.optimizer].lr if self.lr is None else self.lr

    def hyperparameters(self) -> dict[str, float]:
        """The optimiser's hyperparameters used: those given, the others at their defaults."""
        from .nn.optim import OPTIMIZERS

        return {k: self.optimizer_params.get(k, h.default) for k, h in OPTIMIZERS[self.optimizer].params.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"settings must be a mapping, got {type(d).__name__}")
        if "momentum" in d and "optimizer_params" not in d:  # stored by streamtrain < 0.2
            d = dict(d)
            momentum = d.pop("momentum")
            d["optimizer_params"] = {"momentum": momentum} if d.get("optimizer") in ("momentum", "nesterov") else {}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**d)

    def differences(self, other: "TrainConfig", names=None) -> list[str]:
        """Settings (of ``names``, or all) that differ from ``other`` and would make a resumed run
        differ from an uninterrupted one; the learning rate and hyperparameters as used."""
        a, b = self._effective(), other._effective()
        keys = [k for k in a if names is None or k in names or (k == "hyperparameters" and "optimizer_params" in names)]
        # A cosine schedule asked for decays over the run's length, which is then fixed; the default
        # (auto) stretches its decay to a new length from the step it resumes at.
        may_change = RESUME_MAY_CHANGE - ({"epochs"} if other.lr_schedule == "cosine" else set())
        return [f"{k}: {b[k]!r} -> {a[k]!r}" for k in keys if k not in may_change and a[k] != b[k]]

    def _effective(self) -> dict[str, Any]:
        d = self.to_dict()
        d["lr"] = self.learning_rate
        d.pop("optimizer_params")
        d["hyperparameters"] = self.hyperparameters()
        return d


def auto_epochs(rows: int, batch_size: int) -> int:
    """The default number of epochs for ``rows`` training rows: enough for about 3,000 updates (a
    small table needs many passes), at least 10 and at most 60.

    >>> auto_epochs(200, 32), auto_epochs(10_000, 32), auto_epochs(1_000_000, 256)
    (60, 10, 10)
    """
    steps = max(1, -(-int(rows) // int(batch_size)))
    return min(60, max(10, -(-3000 // steps)))


# Changing these on resume does not change the batches or updates of the epochs already planned.
#: The settings ``TrainConfig.encode_options`` makes a table's column encoding from.
ENCODING_SETTINGS = ("categorical", "numeric", "hash", "drop", "cross", "date_parts", "hash_bits", "hash_buckets",
                     "one_hot_max", "max_categories", "min_frequency", "missing", "classes")

RESUME_MAY_CHANGE = frozenset({"cache_dir", "cache_max_gb", "epochs", "strict", "checkpoint_every", "checkpoint_seconds", "keep", "keep_best",
                               "early_stopping", "min_delta", "decoder", "decoder_workers",
                               "sparse_reduce", "peer_timeout"})
